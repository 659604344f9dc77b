import jax
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from songrec_jax import latent, losses, metrics, models, recommend, splits, synthetic
from songrec_jax.config import Config, LossConfig, ModelConfig
from songrec_jax.errors import InputError, UnknownTagError

N_USERS, N_SONGS, INPUT_LEN, K = 60, 40, 8, 10
# 40 songs padded to 48 outputs: the padded songs must never be recommended.
CONFIG = ModelConfig(
    kind="vae", n_songs=N_SONGS, input_len=INPUT_LEN, dims=(16, 4), song_multiple=16
)
TAGS = {"rock": 1.0, "jazz": 0.5}


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(N_USERS, N_SONGS, 5, key=0, median_songs=8)


@pytest.fixture(scope="module")
def inputs(data):
    x = np.stack(
        [splits.to_input(data.user_songs(u), INPUT_LEN, key=u) for u in range(N_USERS)]
    )
    x[-1] = -1  # a user who has heard nothing yet
    return x


@pytest.fixture(scope="module")
def params():
    return models.init(CONFIG, key=jax.random.key(0))


@pytest.fixture(scope="module")
def tag_latents(data, inputs, params):
    dominant = latent.dominant_tags(data, inputs)
    dominant[dominant == data.tag_index("blues")] = -1  # blues: no latent mean
    return latent.compute_tag_latents(params, CONFIG, data, inputs, dominant)


def logits_of(params, x):
    mean, _ = models.encode(params, CONFIG, x)
    return np.asarray(models.decode(params, CONFIG, mean))


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)[:, :N_SONGS]
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def seen_mask(x):
    mask = np.zeros((len(x), N_SONGS), bool)
    rows, cols = np.nonzero(x >= 0)
    mask[rows, x[rows, cols]] = True
    return mask


def reference_top_k(scores, exclude, k):
    scores = np.where(exclude, -np.inf, np.asarray(scores)[:, :N_SONGS])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def reference_multipliers(data, tags, alpha):
    out = np.ones(data.n_songs)
    for s in range(data.n_songs):
        names = [data.tag_names[t] for t in data.song_tags(s)]
        factors = [(1 + tags[n]) ** alpha for n in names if n in tags]
        if factors:
            out[s] = np.mean(factors)
    return out


def reference_user_tag_mean(data, tag_latents, row):
    means = [
        tag_latents.means[t]
        for s in row[row >= 0]
        for t in data.song_tags(s)
        if tag_latents.has_mean[t]
    ]
    return np.mean(means, axis=0) if means else None


# Unsteered ----------------------------------------------------------------------


def test_recommend_equals_a_numpy_ranking_of_the_logits(params, inputs):
    result = recommend.recommend(params, CONFIG, inputs, k=K)
    logits = logits_of(params, inputs)
    exclude = seen_mask(inputs)
    expected = reference_top_k(logits, exclude, K)
    assert result.indices.shape == (N_USERS, K) and result.indices.dtype == np.int32
    assert result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(
        result.scores,
        np.take_along_axis(log_softmax(logits), expected, 1),
        rtol=1e-5,
    )


def test_sigmoid_losses_score_log_sigmoid(params, inputs):
    config = Config(model=CONFIG, loss=LossConfig(name="bce"))
    result = recommend.recommend(params, config, inputs, k=K)
    logits = logits_of(params, inputs)[:, :N_SONGS].astype(np.float64)
    expected = reference_top_k(logits, seen_mask(inputs), K)
    np.testing.assert_array_equal(result.indices, expected)
    log_sigmoid = -np.logaddexp(0.0, -np.take_along_axis(logits, expected, 1))
    np.testing.assert_allclose(result.scores, log_sigmoid, rtol=1e-5)
    assert recommend.probability_kind(config) == "sigmoid"
    assert recommend.probability_kind(CONFIG) == "softmax"
    assert recommend.probability_kind(config, "softmax") == "softmax"


@pytest.mark.parametrize("tied", [False, True])
def test_large_catalogues_rank_exactly_ties_included(tied, monkeypatch):
    # Enough songs for the grouped top-k; tied: groups of songs with equal
    # logits, so that equal scores straddle the cut and force whole rows.
    config = ModelConfig(kind="mlp", n_songs=7000, input_len=20, dims=(8,),
                         song_multiple=64)  # fmt: skip
    rng = np.random.default_rng(0)
    popularity = rng.uniform(0.01, 0.5, 7000)  # distinct biases, no ties
    params = models.init(config, key=jax.random.key(1), song_popularity=popularity)
    if tied:
        output = params["params"]["output"]
        columns = np.arange(config.n_outputs) % 7  # every group holds the best
        output["kernel"] = output["kernel"][columns]
        output["bias"] = output["bias"][columns]
    x = np.stack([
        splits.to_input(rng.choice(7000, 15, replace=False), 20) for _ in range(33)
    ])  # fmt: skip
    plain = []
    kernel = recommend._recommend_chunk

    def spy(*args, **kwargs):
        plain.append(kwargs.get("plain", False))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(recommend, "_recommend_chunk", spy)
    result = recommend.recommend(params, config, x, k=10, batch_size=16)
    # Whole rows are ranked again only when equal scores straddle the cut.
    assert plain == ([False, True] * 3 if tied else [False] * 3)
    mean, _ = models.encode(params, config, x)
    logits = np.asarray(models.decode(params, config, mean))[:, :7000]
    seen = np.zeros_like(logits, bool)
    np.put_along_axis(seen, np.maximum(x, 0), x >= 0, axis=1)
    expected = np.argsort(-np.where(seen, -np.inf, logits), 1, kind="stable")[:, :10]
    np.testing.assert_array_equal(result.indices, expected)
    raw = recommend.recommend(params, config, x, k=10, batch_size=16, normalize=False)
    np.testing.assert_array_equal(raw.indices, expected)
    np.testing.assert_allclose(raw.scores, np.take_along_axis(logits, expected, 1),
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(
        result.scores, raw.scores - jax.nn.logsumexp(logits, 1, keepdims=True),
        rtol=1e-5,
    )  # fmt: skip


def test_chunking_changes_nothing_and_compiles_once(params, inputs):
    before = recommend._recommend_chunk._cache_size()
    small = recommend.recommend(params, CONFIG, inputs, k=K + 1, batch_size=7)
    assert recommend._recommend_chunk._cache_size() == before + 1  # 9 chunks
    whole = recommend.recommend(params, CONFIG, inputs, k=K + 1, batch_size=1000)
    np.testing.assert_array_equal(small.indices, whole.indices)
    # XLA may pick other kernels for another chunk shape: scores can differ in
    # the last bit, never the ranking.
    np.testing.assert_allclose(small.scores, whole.scores, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(0, N_SONGS - 1), max_size=INPUT_LEN, unique=True),
        min_size=4,
        max_size=4,
    )
)
def test_seen_songs_never_appear(params, histories):
    x = np.stack([splits.to_input(h, INPUT_LEN) for h in histories])
    result = recommend.recommend(params, CONFIG, x, k=K)
    for history, top in zip(histories, result.indices, strict=True):
        assert not set(history) & set(top.tolist())
        assert len(set(top.tolist())) == K


def test_left_over_slots_are_marked_when_too_few_songs_remain(params, inputs):
    k = N_SONGS - 3
    result = recommend.recommend(params, CONFIG, inputs, k=k, exclude_seen=True)
    n_left = N_SONGS - (inputs >= 0).sum(1)
    for row, left in zip(range(N_USERS), n_left, strict=True):
        top, scores = result.indices[row], result.scores[row]
        assert np.all(top[: min(left, k)] >= 0) and np.all(top[left:] == -1)
        assert np.all(np.isneginf(scores[left:]))
        assert not set(top.tolist()) & set(inputs[row][inputs[row] >= 0].tolist())


def test_padded_outputs_never_appear(params, inputs):
    assert CONFIG.n_outputs > N_SONGS
    result = recommend.recommend(params, CONFIG, inputs, k=N_SONGS, exclude_seen=False)
    for top in result.indices:
        assert sorted(top.tolist()) == list(range(N_SONGS))


# Steering -------------------------------------------------------------------------


@pytest.mark.parametrize("method", recommend.METHODS)
def test_alpha_zero_is_exactly_the_unsteered_result(
    params, inputs, data, tag_latents, method
):
    plain = recommend.recommend(params, CONFIG, inputs, k=K)
    steered = recommend.recommend(
        params,
        CONFIG,
        inputs,
        k=K,
        tags=TAGS,
        alpha=0.0,
        method=method,
        data=data,
        tag_latents=tag_latents,
    )
    np.testing.assert_array_equal(steered.indices, plain.indices)
    np.testing.assert_array_equal(steered.scores, plain.scores)


def test_song_multipliers_follow_the_documented_formula(data):
    tags = {"rock": 1.0, "jazz": 0.5, "pop": 0.0}
    expected = reference_multipliers(data, tags, 1.5)
    np.testing.assert_allclose(recommend.song_multipliers(data, tags, 1.5), expected)
    assert np.any(expected == 1.0) and np.any(expected > 1.0)


def test_postfilter_multiplies_each_probability_by_its_factor(params, inputs, data):
    alpha = 1.5
    steered = recommend.recommend(
        params,
        CONFIG,
        inputs,
        k=N_SONGS,
        exclude_seen=False,
        tags=TAGS,
        alpha=alpha,
        data=data,
    )
    probabilities = np.exp(log_softmax(logits_of(params, inputs)))
    expected = probabilities * reference_multipliers(data, TAGS, alpha)
    np.testing.assert_allclose(
        np.exp(steered.scores),
        np.take_along_axis(expected, steered.indices, 1),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(
        steered.indices[:, :K], reference_top_k(expected, np.zeros_like(expected), K)
    )


def test_postfilter_of_a_sigmoid_model_ranks_the_reweighted_probabilities(
    params, inputs, data
):
    # log_sigmoid(logit) + log(multiplier) does not order songs as
    # logit + log(multiplier) does: the ranking must use the former.
    config = Config(model=CONFIG, loss=LossConfig(name="bce"))
    alpha = 2.0
    steered = recommend.recommend(
        params, config, inputs, k=K, tags=TAGS, alpha=alpha, data=data
    )
    logits = logits_of(params, inputs)[:, :N_SONGS].astype(np.float64)
    scores = -np.logaddexp(0.0, -logits) + np.log(
        reference_multipliers(data, TAGS, alpha)
    )
    expected = reference_top_k(scores, seen_mask(inputs), K)
    np.testing.assert_array_equal(steered.indices, expected)
    np.testing.assert_allclose(
        steered.scores, np.take_along_axis(scores, expected, 1), rtol=1e-5
    )


def test_latent_steering_moves_z_by_alpha_times_the_tag_offset(
    params, inputs, data, tag_latents
):
    alpha, tags = 0.7, {"rock": 2.0, "jazz": 1.0}
    z = np.asarray(models.encode(params, CONFIG, inputs)[0], np.float64)
    target = (2.0 * tag_latents.tag("rock")[0] + tag_latents.tag("jazz")[0]) / 3.0
    expected = np.empty_like(z)
    for u, row in enumerate(inputs):
        own = reference_user_tag_mean(data, tag_latents, row)
        expected[u] = z[u] + alpha * (target - (z[u] if own is None else own))
    assert reference_user_tag_mean(data, tag_latents, inputs[-1]) is None
    steered = recommend.steered_latents(
        params,
        CONFIG,
        inputs,
        tags=tags,
        alpha=alpha,
        data=data,
        tag_latents=tag_latents,
        batch_size=16,
    )
    np.testing.assert_allclose(steered, expected, rtol=1e-5, atol=1e-6)

    result = recommend.recommend(
        params,
        CONFIG,
        inputs,
        k=K,
        tags=tags,
        alpha=alpha,
        method="latent",
        data=data,
        tag_latents=tag_latents,
    )
    logits = np.asarray(models.decode(params, CONFIG, steered))
    np.testing.assert_array_equal(
        result.indices, reference_top_k(logits, seen_mask(inputs), K)
    )


def test_user_tag_means_average_tags_by_occurrence(data, inputs, tag_latents):
    means, has = recommend.user_tag_means(inputs, data, tag_latents)
    for u in (0, 5, N_USERS - 1):
        own = reference_user_tag_mean(data, tag_latents, inputs[u])
        assert has[u] == (own is not None)
        if own is None:
            assert np.isnan(means[u]).all()
        else:
            np.testing.assert_allclose(means[u], own, rtol=1e-5, atol=1e-6)


def test_both_is_latent_steering_then_a_weaker_postfilter(
    params, inputs, data, tag_latents
):
    alpha, factor = 0.5, 2.0
    steered = recommend.steered_latents(
        params,
        CONFIG,
        inputs,
        tags=TAGS,
        alpha=alpha,
        data=data,
        tag_latents=tag_latents,
    )
    probabilities = np.exp(
        log_softmax(np.asarray(models.decode(params, CONFIG, steered)))
    )
    expected = probabilities * reference_multipliers(data, TAGS, alpha * factor)
    result = recommend.recommend(
        params,
        CONFIG,
        inputs,
        k=K,
        tags=TAGS,
        alpha=alpha,
        method="both",
        factor=factor,
        data=data,
        tag_latents=tag_latents,
    )
    np.testing.assert_array_equal(
        result.indices, reference_top_k(expected, seen_mask(inputs), K)
    )
    np.testing.assert_allclose(
        np.exp(result.scores),
        np.take_along_axis(expected, result.indices, 1),
        rtol=1e-5,
    )


def train_briefly(config: ModelConfig, inputs, targets, *, steps: int, key: int):
    """Full-batch Adam on the multinomial loss, one jitted scan."""
    params = models.init(config, key=jax.random.key(key))
    optimizer = optax.adam(1e-2)

    def loss(p):
        logits, _ = models.apply_train(p, config, inputs, None)
        return losses.loss_fn(LossConfig(name="ce"), logits, targets)[0]

    @jax.jit
    def fit(params):
        def step(carry, _):
            p, state = carry
            updates, state = optimizer.update(jax.grad(loss)(p), state, p)
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(step, (params, optimizer.init(params)), length=steps)[0][0]

    return fit(params)


def test_steering_towards_a_tag_recommends_more_of_its_songs():
    data = synthetic.generate(200, 80, 6, key=2, median_songs=10)
    input_len = 12
    x = np.stack(
        [splits.to_input(data.user_songs(u), input_len, key=u) for u in range(200)]
    )
    targets = np.zeros((200, 80), np.float32)
    targets[data.user_rows(), data.indices] = 1.0
    config = ModelConfig(kind="mlp", n_songs=80, input_len=input_len, dims=(32, 8))
    params = train_briefly(config, x, targets, steps=100, key=0)
    tag_latents = latent.compute_tag_latents(
        params, config, data, x, latent.dominant_tags(data, x)
    )
    mask = recommend.tag_song_mask(data, "pop")

    def count(**steering):
        result = recommend.recommend(
            params,
            config,
            x,
            k=10,
            data=data,
            tag_latents=tag_latents,
            tags={"pop": 1.0},
            **steering,
        )
        return np.asarray(metrics.count_in_top_k(result.indices, mask))

    plain = count(alpha=0.0)  # about 2.4 of 10 on average
    post = count(alpha=2.0, method="postfilter")  # about 4.0
    # Raising some probabilities can only add their songs to the top k.
    assert np.all(post >= plain) and post.mean() > plain.mean() + 0.5
    moved = count(alpha=1.0, method="latent")  # about 7.9
    assert np.mean(moved >= plain) > 0.9 and moved.mean() > plain.mean() + 2


# Errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, error, fragment",
    [
        (dict(tags={"polka": 1.0}), UnknownTagError, "'polka'"),
        (dict(tags={"polka": 1.0}, method="latent"), UnknownTagError, "'polka'"),
        (dict(tags={"blues": 1.0}, method="latent"), UnknownTagError, "'blues'"),
        (dict(tags={"blues": 1.0}, method="both"), UnknownTagError, "no latent"),
        (dict(tags={"rock": -1.0}), InputError, "weight of tag 'rock'=-1.0"),
        (dict(tags={"rock": float("nan")}), InputError, "weight of tag 'rock'=nan"),
        (dict(tags={"rock": 0.0}, method="latent"), InputError, "positive weight"),
        (dict(alpha=float("nan")), InputError, "alpha=nan"),
        (dict(alpha=-0.5), InputError, "alpha=-0.5"),
        (dict(factor=float("inf"), method="both"), InputError, "factor=inf"),
        (dict(method="boost"), InputError, r"'boost'.*'postfilter'"),
        (dict(k=0), InputError, "k=0"),
        (dict(k=N_SONGS + 1), InputError, "k=41"),
        (dict(probabilities="tanh"), InputError, "'tanh'"),
        (dict(data=None), InputError, "data="),
        (dict(tag_latents=None, method="latent"), InputError, "tag_latents="),
        (dict(tags=["rock"]), InputError, "dict"),
        (dict(batch_size=0), InputError, "batch_size=0"),
    ],
)
def test_bad_steering_arguments_raise(
    params, inputs, data, tag_latents, changes, error, fragment
):
    kwargs = dict(
        k=K, tags={"rock": 1.0}, alpha=1.0, data=data, tag_latents=tag_latents
    )
    with pytest.raises(error, match=fragment):
        recommend.recommend(params, CONFIG, inputs[:2], **{**kwargs, **changes})


@pytest.mark.parametrize(
    "x, fragment",
    [
        (np.zeros((2, INPUT_LEN + 1), np.int32), "shape"),
        (np.zeros(INPUT_LEN, np.int32), "shape"),
        (np.full((2, INPUT_LEN), N_SONGS), "0..39"),
        (np.zeros((2, INPUT_LEN), np.float32), "dtype"),
    ],
)
def test_bad_inputs_raise(params, x, fragment):
    with pytest.raises(InputError, match=fragment):
        recommend.recommend(params, CONFIG, x)


# One user, latent geometry and tag masks -------------------------------------


def test_recommend_one_pads_a_history_and_returns_1d(params, data, tag_latents):
    history = [5, 3, 3, 17]
    one = recommend.recommend_one(
        params, CONFIG, history, k=4, tags=TAGS, alpha=1.0, data=data
    )
    x = splits.to_input(history, INPUT_LEN)[None]
    batch = recommend.recommend(params, CONFIG, x, k=4, tags=TAGS, alpha=1.0, data=data)
    assert one.indices.shape == (4,) and one.scores.shape == (4,)
    np.testing.assert_array_equal(one.indices, batch.indices[0])
    np.testing.assert_array_equal(one.scores, batch.scores[0])
    assert not {3, 5, 17} & set(one.indices.tolist())


def test_user_latent_of_a_history_and_of_inputs(params, inputs):
    z = np.asarray(models.encode(params, CONFIG, inputs)[0])
    np.testing.assert_allclose(
        recommend.user_latent(params, CONFIG, inputs), z, rtol=1e-6, atol=1e-7
    )
    history = inputs[0][inputs[0] >= 0].tolist()
    one = recommend.user_latent(params, CONFIG, history)
    assert one.shape == (4,)
    np.testing.assert_allclose(one, z[0], rtol=1e-5, atol=1e-6)


def test_tag_distances_match_numpy(params, inputs, tag_latents):
    z = recommend.user_latent(params, CONFIG, inputs)
    result = recommend.tag_distances(z, tag_latents, batch_size=16)
    means = tag_latents.means.astype(np.float64)
    stds = np.maximum(tag_latents.stds.astype(np.float64), 1e-6)
    difference = z[:, None].astype(np.float64) - means[None]
    np.testing.assert_allclose(
        result["euclidean"], np.linalg.norm(difference, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(
        result["mahalanobis"], np.linalg.norm(difference / stds, axis=-1), rtol=1e-5
    )
    blues = list(tag_latents.tag_names).index("blues")
    assert np.isnan(result["euclidean"][:, blues]).all()
    single = recommend.tag_distances(z[3], tag_latents)
    assert single["mahalanobis"].shape == (tag_latents.n_tags,)
    np.testing.assert_allclose(single["euclidean"], result["euclidean"][3], rtol=1e-6)
    with pytest.raises(InputError, match="shape"):
        recommend.tag_distances(z[:, :2], tag_latents)


def test_tag_song_mask_marks_songs_with_any_of_the_tags(data):
    mask = recommend.tag_song_mask(data, {"rock": 1.0, "jazz": 0.0})
    wanted = {data.tag_index("rock"), data.tag_index("jazz")}
    expected = [bool(wanted & set(data.song_tags(s).tolist())) for s in range(N_SONGS)]
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(
        recommend.tag_song_mask(data, "rock"),
        [data.tag_index("rock") in data.song_tags(s) for s in range(N_SONGS)],
    )
    with pytest.raises(UnknownTagError, match="'polka'"):
        recommend.tag_song_mask(data, ["polka"])
