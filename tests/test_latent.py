import collections
import json

import jax
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from songrec_jax import latent, losses, models, splits, synthetic
from songrec_jax.config import Config, LossConfig, ModelConfig
from songrec_jax.data import ListeningData, from_pairs
from songrec_jax.errors import DataFormatError, InputError, UnknownTagError

N_SONGS, INPUT_LEN = 40, 8
CONFIG = ModelConfig(kind="vae", n_songs=N_SONGS, input_len=INPUT_LEN, dims=(16, 4))


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(60, N_SONGS, 5, key=0, median_songs=8)


@pytest.fixture(scope="module")
def inputs(data):
    return np.stack(
        [splits.to_input(data.user_songs(u), INPUT_LEN, key=u) for u in range(60)]
    )


@pytest.fixture(scope="module")
def params():
    return models.init(CONFIG, key=jax.random.key(0))


def reference_dominant(data: ListeningData, song_lists) -> np.ndarray:
    out = []
    for songs in song_lists:
        counts = collections.Counter(
            int(t) for s in songs for t in data.song_tags(int(s))
        )
        best = max(counts.values(), default=0)
        out.append(min((t for t, n in counts.items() if n == best), default=-1))
    return np.array(out)


# Dominant tags ----------------------------------------------------------------


def test_dominant_tags_match_a_per_user_count_in_every_input_form(data, inputs):
    lists = [row[row >= 0] for row in inputs]
    expected = reference_dominant(data, lists)
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in lists])])
    np.testing.assert_array_equal(latent.dominant_tags(data, inputs), expected)
    np.testing.assert_array_equal(
        latent.dominant_tags(data, (indptr, np.concatenate(lists))), expected
    )
    np.testing.assert_array_equal(latent.dominant_tags(data, lists), expected)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dominant_tags_property(draw):
    n_songs = draw.draw(st.integers(1, 8))
    n_tags = draw.draw(st.integers(1, 4))
    song_tags = [
        sorted(draw.draw(st.sets(st.integers(0, n_tags - 1), max_size=n_tags)))
        for _ in range(n_songs)
    ]
    users = draw.draw(
        st.lists(st.lists(st.integers(0, n_songs - 1), max_size=6), min_size=1)
    )
    data = ListeningData(
        indptr=np.array([0, n_songs], np.int64),
        indices=np.arange(n_songs, dtype=np.int32),
        counts=np.ones(n_songs, np.float32),
        tag_indptr=np.concatenate([[0], np.cumsum([len(t) for t in song_tags])]),
        tag_indices=np.array(sum(song_tags, []), np.int32),
        user_ids=np.array(["u"]),
        song_ids=np.array([f"s{i}" for i in range(n_songs)]),
        song_names=np.array([f"s{i}" for i in range(n_songs)]),
        tag_names=np.array([f"t{i}" for i in range(n_tags)]),
    )
    np.testing.assert_array_equal(
        latent.dominant_tags(data, users), reference_dominant(data, users)
    )


def test_dominant_tag_ties_go_to_the_lowest_index_and_untagged_users_get_minus_1():
    data = from_pairs(
        ["u0", "u0", "u1", "u2"],
        ["a", "b", "b", "c"],
        tag_song_ids=["a", "b", "b"],
        tag_names=["jazz", "rock", "jazz"],
    )
    jazz, rock = data.tag_index("jazz"), data.tag_index("rock")
    assert jazz < rock  # "jazz" is used by more songs
    # u0: jazz twice (a, b), rock once; u1: jazz and rock once each (a tie);
    # u2: song c has no tag.
    users = [data.user_songs(u) for u in range(3)]
    np.testing.assert_array_equal(latent.dominant_tags(data, users), [jazz, jazz, -1])
    tie = [[data.song_ids.tolist().index("b")]]
    assert latent.dominant_tags(data, tie)[0] == min(jazz, rock)


def test_dominant_tags_of_split_reads_inputs_or_targets(data):
    split = splits.input_target_split(data, np.arange(60), INPUT_LEN, key=0)
    np.testing.assert_array_equal(
        latent.dominant_tags_of_split(data, split, "input"),
        latent.dominant_tags(data, split.inputs),
    )
    targets = [split.target_songs(i) for i in range(split.n_users)]
    np.testing.assert_array_equal(
        latent.dominant_tags_of_split(data, split, which="target"),
        reference_dominant(data, targets),
    )
    with pytest.raises(InputError, match="'output'"):
        latent.dominant_tags_of_split(data, split, "output")


@pytest.mark.parametrize(
    "songs, fragment",
    [
        ([[0, N_SONGS]], "0..39"),
        (np.full((2, 3), -2), "-1 for padding"),
        ((np.array([0, 3]), np.array([1, 2])), "indptr"),
        (np.zeros(3, np.int32), "padded inputs"),
    ],
)
def test_dominant_tags_reject_bad_songs(data, songs, fragment):
    with pytest.raises(InputError, match=fragment):
        latent.dominant_tags(data, songs)


# Latent statistics ------------------------------------------------------------


def test_user_latents_are_the_encoder_means_in_any_chunking(params, inputs):
    expected = np.asarray(models.encode(params, CONFIG, inputs)[0])
    before = models._encode._cache_size()
    for batch_size in (13, 1000):
        got = latent.user_latents(params, CONFIG, inputs, batch_size=batch_size)
        assert got.shape == (60, 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert models._encode._cache_size() == before + 1  # 5 chunks of 13, one shape


def test_tag_latents_match_numpy_with_nan_rows_for_tags_without_users(
    data, inputs, params
):
    dominant = latent.dominant_tags(data, inputs)
    dominant[dominant == 4] = -1  # tag 4 loses its users
    dominant[:3] = -1
    result = latent.compute_tag_latents(
        params, Config(model=CONFIG), data, inputs, dominant, split="all/input"
    )
    z = np.asarray(models.encode(params, CONFIG, inputs)[0], np.float64)
    for t in range(data.n_tags):
        users = dominant == t
        assert result.counts[t] == users.sum()
        if users.any():
            np.testing.assert_allclose(result.means[t], z[users].mean(0), rtol=1e-5)
            np.testing.assert_allclose(
                result.stds[t], z[users].std(0), rtol=1e-4, atol=1e-6
            )
    assert result.counts[4] == 0 and not result.has_mean[4]
    assert np.isnan(result.means[4]).all() and np.isnan(result.stds[4]).all()
    assert result.skipped_users == np.sum(dominant < 0)
    assert result.model_name == Config(model=CONFIG).name
    assert result.split == "all/input"
    assert result.tag_names.tolist() == data.tag_names.tolist()


def test_segment_statistics_of_100k_users_match_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(100_000, 16)).astype(np.float32)
    dominant = rng.integers(-1, 30, size=100_000)
    means, counts = latent.tag_latent_means(z, dominant, 30)
    stds = latent.tag_latent_stds(z, dominant, means)
    np.testing.assert_array_equal(counts, np.bincount(dominant + 1, minlength=31)[1:])
    for t in (0, 17, 29):
        np.testing.assert_allclose(means[t], z[dominant == t].mean(0), atol=1e-5)
        np.testing.assert_allclose(stds[t], z[dominant == t].std(0), rtol=1e-4)


def test_tag_latent_stats_reject_bad_dominant_tags():
    z = np.zeros((3, 2), np.float32)
    with pytest.raises(InputError, match="0..1"):
        latent.tag_latent_means(z, np.array([0, 2, 1]), 2)
    with pytest.raises(InputError, match="shape"):
        latent.tag_latent_means(z, np.array([0, 1]), 2)


def make_tag_latents(**changes) -> latent.TagLatents:
    fields = dict(
        tag_names=np.array(["rock", "jazz", "opera"]),
        means=np.array([[0.0, 1.0], [2.0, -1.0], [np.nan, np.nan]], np.float32),
        stds=np.array([[0.5, 0.25], [0.0, 0.0], [np.nan, np.nan]], np.float32),
        counts=np.array([4, 1, 0]),
        skipped_users=2,
        model_name="vae_16-4_ce",
        split="train/input",
    )
    return latent.TagLatents(**{**fields, **changes})


def test_tag_lookup_and_its_errors():
    tags = make_tag_latents()
    mean, std = tags.tag("jazz")
    np.testing.assert_array_equal(mean, [2.0, -1.0])
    np.testing.assert_array_equal(std, [0.0, 0.0])
    np.testing.assert_array_equal(tags.has_mean, [True, True, False])
    with pytest.raises(UnknownTagError, match=r"'polka'.*'rock', 'jazz'"):
        tags.tag("polka")
    with pytest.raises(KeyError, match="'opera' is no user's dominant tag"):
        tags.tag("opera")


def test_tag_latents_refuse_zero_rows_for_tags_without_users():
    with pytest.raises(InputError, match="NaN rows"):
        make_tag_latents(means=np.zeros((3, 2)), stds=np.zeros((3, 2)))


# Files ------------------------------------------------------------------------


def test_save_and_load_round_trip_exactly(tmp_path):
    tags = make_tag_latents()
    latent.save_tag_latents(tags, tmp_path / "run")
    loaded = latent.load_tag_latents(tmp_path / "run")
    for name in ("tag_names", "means", "stds", "counts"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(tags, name))
        assert getattr(loaded, name).dtype == getattr(tags, name).dtype
    assert (loaded.skipped_users, loaded.model_name, loaded.split) == (
        2,
        "vae_16-4_ce",
        "train/input",
    )
    meta = json.loads((tmp_path / "run" / "tag_latents.json").read_text())
    assert meta["tag_names"] == ["rock", "jazz", "opera"]
    assert meta["counts"] == [4, 1, 0] and meta["format_version"] == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "tag_latents.json",
        "tag_latents.npz",
    ]


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda d: (d / "tag_latents.npz").unlink(), "no such file"),
        (lambda d: (d / "tag_latents.json").unlink(), "no such file"),
        (lambda d: (d / "tag_latents.npz").write_bytes(b"PK\x03\x04junk"), "npz"),
        (lambda d: (d / "tag_latents.json").write_text("{"), "JSON"),
        (
            lambda d: (d / "tag_latents.json").write_text(
                (d / "tag_latents.json").read_text().replace('"counts": [', '"c": [')
            ),
            "keys",
        ),
        (
            lambda d: (d / "tag_latents.json").write_text(
                (d / "tag_latents.json")
                .read_text()
                .replace('"format_version": 1', '"format_version": 9')
            ),
            "version",
        ),
    ],
)
def test_damaged_files_raise_data_format_error(tmp_path, damage, fragment):
    latent.save_tag_latents(make_tag_latents(), tmp_path)
    damage(tmp_path)
    with pytest.raises(DataFormatError, match=fragment):
        latent.load_tag_latents(tmp_path)


def test_files_from_different_saves_are_refused(tmp_path):
    latent.save_tag_latents(make_tag_latents(), tmp_path / "a")
    latent.save_tag_latents(make_tag_latents(counts=np.array([3, 1, 0])), tmp_path)
    (tmp_path / "a" / "tag_latents.json").replace(tmp_path / "tag_latents.json")
    with pytest.raises(DataFormatError, match="differ"):
        latent.load_tag_latents(tmp_path)


def test_clusters_round_trip_and_damage(tmp_path):
    centres = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    assignment = np.array([0, 1, 1, 0], np.int32)
    latent.save_clusters(centres, assignment, tmp_path)
    got_centres, got_assignment = latent.load_clusters(tmp_path)
    np.testing.assert_array_equal(got_centres, centres)
    np.testing.assert_array_equal(got_assignment, assignment)
    np.savez(tmp_path / "clusters.npz", format_version=1, centres=centres)
    with pytest.raises(DataFormatError, match="assignment"):
        latent.load_clusters(tmp_path)
    with pytest.raises(DataFormatError, match="no such file"):
        latent.load_clusters(tmp_path / "missing")


# k-means ----------------------------------------------------------------------


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_separated_blobs_like_sklearn():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=20.0, size=(4, 3))
    labels = rng.integers(0, 4, size=200)
    x = (centres[labels] + rng.normal(size=(200, 3))).astype(np.float32)
    found_centres, assignment = latent.kmeans(x, 4, key=0)
    reference = KMeans(4, n_init=4, random_state=0).fit(x)
    assert assignment.shape == (200,) and assignment.dtype == np.int32
    assert found_centres.shape == (4, 3)
    assert same_partition(assignment, labels)
    assert same_partition(assignment, reference.labels_)


def test_kmeans_inertia_is_close_to_sklearn_on_overlapping_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)  # the shape above: no compile
    x[:100] += 2.0
    centres, assignment = latent.kmeans(x, 4, key=jax.random.key(3))
    inertia = np.sum((x - centres[assignment]) ** 2)
    reference = KMeans(4, n_init=4, random_state=0).fit(x)
    assert inertia <= 1.03 * reference.inertia_
    # Every point is assigned to its nearest centre.
    distances = ((x[:, None] - centres[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assignment, distances.argmin(1))


def test_kmeans_rejects_bad_arguments():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(InputError, match="n_clusters=4"):
        latent.kmeans(x, 4, key=0)
    with pytest.raises(InputError, match="finite"):
        latent.kmeans(np.full((3, 2), np.nan), 2, key=0)


def test_cluster_top_tags_counts_and_shares():
    assignment = np.array([0, 0, 0, 0, 1, 1])
    dominant = np.array([2, 2, 0, -1, 1, 1])
    names = ["rock", "jazz", "pop"]
    assert latent.cluster_top_tags(assignment, dominant, names, top=5) == [
        [("pop", 2, 0.5), ("rock", 1, 0.25)],
        [("jazz", 2, 1.0)],
    ]
    assert latent.cluster_top_tags(assignment, dominant, names, top=1)[0] == [
        ("pop", 2, 0.5)
    ]


# Latent structure of a trained model ---------------------------------------------


def train_briefly(config: ModelConfig, inputs, targets, *, steps: int, key: int):
    """Full-batch Adam on the multinomial loss, one jitted scan."""
    params = models.init(config, key=jax.random.key(key))
    optimizer = optax.adam(1e-2)
    loss_config = LossConfig(name="ce")

    def loss(p):
        logits, _ = models.apply_train(p, config, inputs, None)
        return losses.loss_fn(loss_config, logits, targets)[0]

    @jax.jit
    def fit(params):
        def step(carry, _):
            p, state = carry
            grads = jax.grad(loss)(p)
            updates, state = optimizer.update(grads, state, p)
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(step, (params, optimizer.init(params)), length=steps)[0][0]

    return fit(params)


def test_users_lie_nearest_their_own_tag_after_training():
    data = synthetic.generate(400, 120, 6, key=1, median_songs=12)
    input_len = 16
    x = np.stack(
        [splits.to_input(data.user_songs(u), input_len, key=u) for u in range(400)]
    )
    targets = np.zeros((400, 120), np.float32)
    targets[data.user_rows(), data.indices] = 1.0
    config = ModelConfig(kind="mlp", n_songs=120, input_len=input_len, dims=(32, 8))
    params = train_briefly(config, x, targets, steps=200, key=0)

    dominant = latent.dominant_tags(data, x)
    tags = latent.compute_tag_latents(params, config, data, x, dominant)
    z = latent.user_latents(params, config, x)
    distances = np.linalg.norm(z[:, None] - tags.means[None], axis=-1)
    tagged = dominant >= 0
    nearest = np.argmin(np.where(np.isnan(distances), np.inf, distances), axis=1)
    share = np.mean(nearest[tagged] == dominant[tagged])
    assert share > 0.7  # about 0.85; an untrained model gives about 0.5
