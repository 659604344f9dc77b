"""Tests of songrec_jax.synthetic: exact sizes, determinism, learnable structure."""

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from songrec_jax import synthetic
from songrec_jax.data import load_data, save_data
from songrec_jax.errors import InputError

SMALL = {"n_users": 300, "n_songs": 120, "n_tags": 6}


@pytest.fixture(scope="module")
def medium():
    return synthetic.generate_with_truth(600, 300, 8, key=0)


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _assert_same(a, b) -> None:
    for name, value in _fields(a).items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)


def _check_valid(data, truth, n_users, n_songs, n_tags, max_songs):
    assert (data.n_users, data.n_songs, data.n_tags) == (n_users, n_songs, n_tags)
    lengths = np.diff(data.indptr)
    assert lengths.min() >= 1
    assert lengths.max() <= max_songs
    for u in range(n_users):
        songs = data.user_songs(u)
        assert np.all(np.diff(songs) > 0), "songs must be sorted and unique"
    assert data.indices.dtype == np.int32 and data.indptr.dtype == np.int64
    assert np.all(data.counts >= 1) and np.all(data.counts == np.round(data.counts))
    tags_per_song = np.diff(data.tag_indptr)
    assert tags_per_song.min() >= 1 and tags_per_song.max() <= 3
    for s in range(n_songs):
        tags = data.song_tags(s)
        assert np.all(np.diff(tags) > 0)
        assert truth.song_primary_tag[s] in tags
    assert len(set(data.user_ids.tolist())) == n_users
    assert len(set(data.song_ids.tolist())) == n_songs


def test_same_key_gives_identical_data_and_truth():
    a, truth_a = synthetic.generate_with_truth(**SMALL, key=3)
    b, truth_b = synthetic.generate_with_truth(**SMALL, key=3)
    _assert_same(a, b)
    _assert_same(truth_a, truth_b)


def test_jax_key_is_accepted_and_deterministic():
    a = synthetic.generate(**SMALL, key=jax.random.key(5))
    b = synthetic.generate(**SMALL, key=jax.random.key(5))
    _assert_same(a, b)


def test_different_keys_give_different_data():
    a = synthetic.generate(**SMALL, key=1)
    b = synthetic.generate(**SMALL, key=2)
    same_shape = a.indices.shape == b.indices.shape
    assert not (same_shape and np.array_equal(a.indices, b.indices))
    assert not np.array_equal(a.tag_indices, b.tag_indices)


def test_sizes_ids_and_names(medium):
    data, truth = medium
    _check_valid(data, truth, 600, 300, 8, 150)
    assert data.user_ids[1] == "user_000001"
    assert data.song_ids[12] == "song_000012"
    assert data.song_names[12].endswith(" - Song 12")
    assert "Artist" in data.song_names[12]
    assert list(data.tag_names) == list(synthetic.GENRES[:8])
    assert np.diff(data.indptr).min() >= 5


def test_tag_names_are_genres_then_numbered():
    data = synthetic.generate(20, 80, 35, key=0)
    names = data.tag_names.tolist()
    assert names[:30] == list(synthetic.GENRES)
    assert names[30:] == [f"tag_{i}" for i in range(30, 35)]
    assert len(set(names)) == 35


def test_unlistened_songs_are_kept():
    data = synthetic.generate(3, 500, 4, key=0, median_songs=5)
    assert data.n_songs == 500
    assert np.count_nonzero(data.song_popularity()) < 500


def test_truth_is_consistent(medium):
    data, truth = medium
    weights = truth.user_tag_weights
    assert weights.shape == (600, 8)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert set(np.count_nonzero(weights, axis=1).tolist()) <= {1, 2, 3}
    np.testing.assert_array_equal(truth.user_dominant_tag, weights.argmax(axis=1))
    np.testing.assert_allclose(np.linalg.norm(truth.tag_centres, axis=1), 1, rtol=1e-5)
    assert truth.song_factors.shape == (300, 8)
    assert truth.user_factors.shape == (600, 8)
    assert truth.song_factors.dtype == np.float32


def test_tags_are_well_separated_and_secondary_tags_lie_near(medium):
    data, truth = medium
    cosine = truth.tag_centres @ truth.tag_centres.T
    off_diagonal = cosine[~np.eye(len(cosine), dtype=bool)]
    assert off_diagonal.max() < 0.75
    rows = np.repeat(np.arange(data.n_songs), np.diff(data.tag_indptr))
    secondary = data.tag_indices != truth.song_primary_tag[rows]
    near = cosine[truth.song_primary_tag[rows[secondary]], data.tag_indices[secondary]]
    assert near.mean() > off_diagonal.mean() + 0.15


def test_users_listen_mostly_to_their_dominant_tag(medium):
    data, truth = medium
    rows = data.user_rows()
    on_dominant = truth.song_primary_tag[data.indices] == truth.user_dominant_tag[rows]
    share = on_dominant.mean()
    assert share > 4 / data.n_tags


def test_temperature_zero_leaves_only_popularity():
    data, truth = synthetic.generate_with_truth(**SMALL, key=0, temperature=0.0)
    rows = data.user_rows()
    on_dominant = truth.song_primary_tag[data.indices] == truth.user_dominant_tag[rows]
    assert on_dominant.mean() < 2 / data.n_tags


def test_histories_are_heavy_tailed_and_popularity_is_skewed():
    data = synthetic.generate(1000, 400, 8, key=0)
    lengths = np.diff(data.indptr)
    assert 20 <= np.median(lengths) <= 40
    assert lengths.max() >= 4 * np.median(lengths)
    assert lengths.min() == 5
    popularity = np.sort(data.song_popularity())[::-1]
    assert popularity[:40].sum() > 0.25 * popularity.sum()  # top 10% of songs
    assert data.counts.max() >= 10 * np.median(data.counts)


def _recall_at_10(data, test_users, scores_of, rng) -> float:
    recalls = []
    for u in test_users:
        songs = rng.permutation(data.user_songs(u))
        n_input = int(0.8 * len(songs))
        inputs, held_out = songs[:n_input], songs[n_input:]
        scores = scores_of(inputs).astype(np.float64)
        scores[inputs] = -np.inf
        top = np.argsort(-scores, kind="stable")[:10]
        recalls.append(np.isin(held_out, top).sum() / min(10, len(held_out)))
    return float(np.mean(recalls))


def test_cooccurrence_beats_popularity_on_held_out_songs(medium):
    data, _ = medium
    rng = np.random.default_rng(0)
    test_users = np.arange(500, 600)
    x = np.zeros((500, data.n_songs), np.float32)
    x[data.user_rows()[: data.indptr[500]], data.indices[: data.indptr[500]]] = 1
    popularity = x.sum(axis=0)
    norm = np.sqrt(np.maximum(popularity, 1))
    similarity = (x.T @ x) / norm[:, None] / norm[None, :]
    np.fill_diagonal(similarity, 0)

    by_popularity = _recall_at_10(data, test_users, lambda _: popularity.copy(), rng)
    rng = np.random.default_rng(0)
    by_cooccurrence = _recall_at_10(
        data, test_users, lambda songs: similarity[songs].sum(axis=0), rng
    )
    assert by_cooccurrence > 1.5 * by_popularity


def test_samplers_agree_on_structure():
    shares, medians = [], []
    for sampler in ("exact", "candidates"):
        data, truth = synthetic.generate_with_truth(
            600, 1500, 8, key=0, sampler=sampler
        )
        rows = data.user_rows()
        dominant = truth.song_primary_tag[data.indices] == truth.user_dominant_tag[rows]
        shares.append(dominant.mean())
        medians.append(np.median(np.diff(data.indptr)))
    assert abs(shares[0] - shares[1]) < 0.06
    assert abs(medians[0] - medians[1]) <= 3


@settings(max_examples=30, deadline=None)
@given(
    n_users=st.integers(1, 40),
    n_songs=st.integers(2, 60),
    n_tags=st.integers(1, 15),
    sampler=st.sampled_from(["exact", "candidates"]),
    seed=st.integers(0, 2**31),
)
def test_any_small_size_gives_valid_data(n_users, n_songs, n_tags, sampler, seed):
    data, truth = synthetic.generate_with_truth(
        n_users, n_songs, n_tags, key=seed, sampler=sampler
    )
    max_songs = n_songs // 2
    _check_valid(data, truth, n_users, n_songs, n_tags, max_songs)
    if sampler == "exact":
        assert np.diff(data.indptr).min() >= min(5, max_songs)
    if n_tags <= n_songs:
        assert set(truth.song_primary_tag.tolist()) == set(range(n_tags))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_users": 0}, "n_users=0"),
        ({"n_songs": 1}, "n_songs=1"),
        ({"n_tags": True}, "n_tags=True"),
        ({"latent_dim": 1}, "latent_dim=1"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"popularity_exponent": float("nan")}, "popularity_exponent=nan"),
        ({"secondary_share": 1.5}, "secondary_share=1.5"),
        ({"median_songs": 0}, "median_songs=0"),
        ({"max_songs": 200}, "max_songs=200"),
        ({"min_songs": 0}, "min_songs=0"),
        ({"sampler": "fast"}, "sampler='fast'"),
    ],
)
def test_invalid_arguments_raise_input_error(kwargs, fragment):
    args = {**SMALL, **kwargs}
    with pytest.raises(InputError, match=fragment.replace("(", r"\(")):
        synthetic.generate(**args, key=0)


def test_user_embeddings_cluster_by_dominant_tag(medium):
    data, truth = medium
    x = np.zeros((data.n_users, data.n_songs))
    x[data.user_rows(), data.indices] = 1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    _, vectors = np.linalg.eigh(x.T @ x)
    z = x @ vectors[:, -8:]  # users in a rank-8 latent space learned from data only
    dominant = truth.user_dominant_tag
    fit, held_out = np.arange(300), np.arange(300, 600)
    tags = np.unique(dominant[fit])
    centroids = np.stack([z[fit][dominant[fit] == t].mean(axis=0) for t in tags])
    distance = ((z[held_out, None] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = np.mean(tags[distance.argmin(axis=1)] == dominant[held_out])
    majority = np.bincount(dominant).max() / len(dominant)
    assert accuracy > max(0.7, 2 * majority)


def test_round_trips_through_the_npz_format(tmp_path):
    data = synthetic.generate(**SMALL, key=0)
    save_data(data, tmp_path / "synthetic.npz")
    _assert_same(data, load_data(tmp_path / "synthetic.npz"))
