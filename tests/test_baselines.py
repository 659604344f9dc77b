import jax
import numpy as np
import pytest

from songrec_jax import baselines, models, synthetic
from songrec_jax.config import ModelConfig
from songrec_jax.data import ListeningData
from songrec_jax.errors import InputError, ResourceError


def tiny(n_users=30, n_songs=20, seed=0) -> ListeningData:
    return synthetic.generate(n_users, n_songs, 3, key=seed, median_songs=6)


def dense(data: ListeningData) -> np.ndarray:
    x = np.zeros((data.n_users, data.n_songs))
    for u in range(data.n_users):
        x[u, data.user_songs(u)] = 1.0
    return x


def ease_reference(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck (2019), Algorithm 1, in float64."""
    g = x.T @ x + l2 * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


INPUTS = np.array([[0, 3, 5, -1], [7, -1, -1, -1], [-1, -1, -1, -1]], np.int32)


@pytest.mark.parametrize("l2", [1.0, 50.0])
def test_ease_matches_the_closed_form(l2):
    data = tiny()
    expected = ease_reference(dense(data), l2)
    scorer = baselines.ease_scorer(data, l2=l2)
    np.testing.assert_allclose(scorer.weights, expected, rtol=1e-4, atol=1e-6)
    x = np.zeros((3, data.n_songs))
    for i, row in enumerate(INPUTS):
        x[i, row[row >= 0]] = 1.0
    np.testing.assert_allclose(scorer(INPUTS), x @ expected, rtol=1e-4, atol=1e-6)


def test_ease_weights_have_a_zero_diagonal_and_chunking_does_not_matter():
    data = tiny()
    weights = baselines.ease_weights(data, l2=10.0)
    assert weights.dtype == np.float32 and weights.shape == (20, 20)
    assert np.all(np.diag(weights) == 0.0)
    inputs = np.tile(INPUTS, (3, 1))
    whole = baselines.ease_scorer(data, l2=10.0)(inputs)
    chunked = baselines.ease_scorer(data, l2=10.0, batch_size=4)(inputs)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_ease_refuses_what_does_not_fit_before_allocating(monkeypatch):
    monkeypatch.setattr(baselines, "available_memory_bytes", lambda: 8 * 2**30)
    with pytest.raises(ResourceError) as error:
        baselines.ease_dtype(200_000)
    message = str(error.value)
    assert "200000 songs" in message and "8.00 GiB" in message
    assert "min_song_listens" in message
    assert baselines.ease_dtype(1000) == np.float64  # small: float64 fits
    assert baselines.ease_dtype(20_000) == np.float32  # too big for float64
    with pytest.raises(ResourceError, match="max_memory_gb"):
        baselines.ease_scorer(tiny(), max_memory_gb=1e-6)


def test_popularity_counts_listeners():
    data = tiny()
    scores = np.asarray(baselines.popularity_scorer(data)(INPUTS))
    counts = dense(data).sum(0)
    assert scores.shape == (3, data.n_songs) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, np.tile(counts, (3, 1)))


def test_model_scorer_drops_padded_outputs_and_matches_forward():
    config = ModelConfig(
        kind="vae", n_songs=20, input_len=4, dims=(8, 3), song_multiple=8
    )
    assert config.n_outputs == 24
    params = models.init(config, key=jax.random.key(0))
    scores = baselines.model_scorer(params, config, batch_size=2)(INPUTS)
    # The VAE decodes its mean; the last chunk was padded to 2 users.
    padded = np.concatenate([INPUTS, np.full((1, 4), -1, np.int32)])
    logits = np.concatenate(
        [models.forward(params, config, padded[i : i + 2])[0] for i in (0, 2)]
    )
    assert scores.shape == (3, 20) and logits.shape == (4, 24)
    np.testing.assert_allclose(scores, logits[:3, :20], rtol=1e-6)


def test_scorers_reject_bad_inputs():
    scorer = baselines.popularity_scorer(tiny())
    with pytest.raises(InputError, match="accepted: 0..19"):
        scorer(np.array([[20, -1]], np.int32))
    with pytest.raises(InputError, match="integer song ids"):
        scorer(np.zeros((2, 3), np.float32))
    with pytest.raises(InputError, match="l2"):
        baselines.ease_scorer(tiny(), l2=0.0)


def test_tune_ease_l2_scores_each_weight_on_the_validation_users():
    from songrec_jax import evaluation, splits

    data = tiny(n_users=60)
    train = data.subset_users(np.arange(40))
    val = splits.fold_in_split(data, np.arange(40, 60), 8, key=0)
    best, ndcg = baselines.tune_ease_l2(train, val, grid=(1.0, 100.0), k=10)
    assert set(ndcg) == {1.0, 100.0} and best == max(ndcg, key=ndcg.get)
    direct = evaluation.evaluate_split(
        {"ease": baselines.ease_scorer(train, l2=100.0)},
        val,
        n_songs=data.n_songs,
        metric_names=("NDCG@10",),
    )
    assert ndcg[100.0] == pytest.approx(direct.rows["ease"]["NDCG@10"].mean)
    with pytest.raises(InputError, match="grid"):
        baselines.tune_ease_l2(train, val, grid=())
