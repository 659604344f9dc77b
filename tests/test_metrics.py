"""Tests of songrec_jax.metrics against plain NumPy loops, plus invariants."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from songrec_jax import metrics
from songrec_jax.errors import InputError

BATCH, N_SONGS, K = 5, 9, 4
KS = st.sampled_from([1, K, N_SONGS])  # few values of the static k: few compiles
FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def strict_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


# Straightforward references: one user and one rank at a time.


def top_k_ref(scores, k, exclude=None):
    scores = np.array(scores, np.float64)
    if exclude is not None:
        scores[np.broadcast_to(exclude, scores.shape)] = -np.inf
    return np.stack([np.argsort(-row, kind="stable")[:k] for row in scores])


def ndcg_ref(top, relevance):
    out = []
    for ranked, rel in zip(top, relevance, strict=True):
        dcg = sum(rel[s] / np.log2(r + 2) for r, s in enumerate(ranked))
        ideal = sorted(rel, reverse=True)[: len(ranked)]
        idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
        out.append(dcg / idcg if idcg > 0 else np.nan)
    return np.array(out)


def recall_ref(top, relevant):
    out = []
    for ranked, rel in zip(top, relevant, strict=True):
        hits = sum(bool(rel[s]) for s in ranked)
        n = int(rel.sum())
        out.append(hits / min(len(ranked), n) if n else np.nan)
    return np.array(out)


def precision_ref(top, relevant):
    out = []
    for ranked, rel in zip(top, relevant, strict=True):
        hits = sum(bool(rel[s]) for s in ranked)
        out.append(hits / len(ranked) if rel.any() else np.nan)
    return np.array(out)


def average_precision_ref(top, relevant):
    out = []
    for ranked, rel in zip(top, relevant, strict=True):
        n = int(rel.sum())
        if n == 0:
            out.append(np.nan)
            continue
        hits, total = 0, 0.0
        for rank, song in enumerate(ranked, start=1):
            if rel[song]:
                hits += 1
                total += hits / rank
        out.append(total / min(len(ranked), n))
    return np.array(out)


def count_ref(top, mask):
    pairs = zip(top, mask, strict=True)
    return np.array([sum(bool(m[s]) for s in ranked) for ranked, m in pairs])


def random_case(seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(BATCH, N_SONGS)).astype(np.float32)
    relevant = rng.random((BATCH, N_SONGS)) < 0.35
    relevant[0] = False  # a user with nothing held out
    relevant[1] = True  # more relevant songs than k
    exclude = (rng.random((BATCH, N_SONGS)) < 0.2) & ~relevant
    return scores, relevant, exclude


# Ranking.


def test_top_k_matches_numpy():
    scores, _, exclude = random_case()
    indices, values = metrics.top_k(scores, K, exclude=exclude)
    assert indices.dtype == jnp.int32 and indices.shape == (BATCH, K)
    np.testing.assert_array_equal(indices, top_k_ref(scores, K, exclude))
    np.testing.assert_array_equal(values, np.take_along_axis(scores, indices, 1))
    assert not np.any(np.take_along_axis(exclude, np.asarray(indices), 1))


def test_top_k_shared_exclude_mask():
    scores, _, _ = random_case(1)
    exclude = np.zeros(N_SONGS, bool)
    exclude[[0, 3]] = True
    indices, _ = metrics.top_k(scores, K, exclude=exclude)
    np.testing.assert_array_equal(indices, top_k_ref(scores, K, exclude))


def test_top_k_fills_with_excluded_songs_only_when_needed():
    scores = np.array([[3.0, 2.0, 1.0]], np.float32)
    indices, values = metrics.top_k(scores, 3, exclude=np.array([[True, False, True]]))
    np.testing.assert_array_equal(indices, [[1, 0, 2]])
    np.testing.assert_array_equal(values, [[2.0, -np.inf, -np.inf]])


@FAST
@given(
    scores=hnp.arrays(np.float32, (3, N_SONGS), elements=st.sampled_from([0.0, 1.0])),
    k=KS,
)
def test_ties_are_broken_by_lower_song_index(scores, k):
    indices, _ = metrics.top_k(scores, k)
    np.testing.assert_array_equal(indices, top_k_ref(scores, k))


def test_equal_scores_rank_songs_in_index_order():
    indices, _ = metrics.top_k(np.zeros((2, N_SONGS), np.float32), K)
    np.testing.assert_array_equal(indices, np.tile(np.arange(K), (2, 1)))


def test_dcg_weights():
    np.testing.assert_allclose(
        metrics.dcg_weights(4), 1 / np.log2(np.arange(4) + 2), rtol=1e-6
    )
    assert float(metrics.dcg_weights(1)[0]) == 1.0


# Metrics against references.

METRICS = {
    "recall": (metrics.recall_at_k, recall_ref),
    "precision": (metrics.precision_at_k, precision_ref),
    "average_precision": (metrics.average_precision_at_k, average_precision_ref),
    "ndcg": (metrics.ndcg_at_k, ndcg_ref),
}


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_metrics_match_numpy(name, seed):
    scores, relevant, exclude = random_case(seed)
    top = top_k_ref(scores, K, exclude)
    fn, ref = METRICS[name]
    got = fn(top, relevant)
    assert got.shape == (BATCH,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref(top, relevant), rtol=1e-6)
    assert np.isnan(got[0])


def test_count_in_top_k_matches_numpy():
    scores, relevant, exclude = random_case()
    top = top_k_ref(scores, K, exclude)
    got = metrics.count_in_top_k(top, relevant)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, count_ref(top, relevant))
    tag_songs = np.arange(N_SONGS) % 3 == 0  # a set shared by every user
    np.testing.assert_array_equal(
        metrics.count_in_top_k(top, tag_songs),
        count_ref(top, np.broadcast_to(tag_songs, relevant.shape)),
    )


@pytest.mark.parametrize("reli", [0.0, 0.3, 1.0, 2.5])
def test_graded_ndcg_matches_numpy(reli):
    scores, relevant, _ = random_case(2)
    tag_songs = np.arange(N_SONGS) % 2 == 0
    relevance = metrics.graded_relevance(relevant, tag_songs, reli)
    expected = np.maximum(relevant * 1.0, np.where(tag_songs, reli, 0.0))
    np.testing.assert_allclose(relevance, expected, rtol=1e-7)
    top = top_k_ref(scores, K)
    np.testing.assert_allclose(
        metrics.ndcg_at_k(top, relevance), ndcg_ref(top, expected), rtol=1e-6
    )


def test_graded_relevance_per_user_tag_songs():
    heldout = np.array([[True, False, False], [False, False, True]])
    tag_songs = np.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(
        metrics.graded_relevance(heldout, tag_songs, 0.5),
        [[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]],
    )
    with pytest.raises(InputError, match="reli"):
        metrics.graded_relevance(heldout, tag_songs, -0.1)
    with pytest.raises(InputError, match="tag_songs"):
        metrics.graded_relevance(heldout, tag_songs[:, :2], 0.5)


# Properties.

binary_relevance = hnp.arrays(bool, (BATCH, N_SONGS))
graded = hnp.arrays(np.float32, (BATCH, N_SONGS), elements=st.sampled_from([0, 0.5, 1]))
integer_scores = hnp.arrays(
    np.float32, (BATCH, N_SONGS), elements=st.integers(0, 4).map(float)
)


@FAST
@given(scores=integer_scores, relevant=binary_relevance, k=KS)
def test_metrics_lie_in_unit_interval(scores, relevant, k):
    top, _ = metrics.top_k(scores, k)
    has_relevant = relevant.any(axis=1)
    for name, (fn, _) in METRICS.items():
        values = np.asarray(fn(top, relevant))
        np.testing.assert_array_equal(np.isnan(values), ~has_relevant, err_msg=name)
        present = values[has_relevant]
        assert np.all((present >= 0) & (present <= 1 + 1e-6)), name
    counts = np.asarray(metrics.count_in_top_k(top, relevant))
    assert np.all((counts >= 0) & (counts <= k))


@FAST
@given(relevance=graded, k=KS)
def test_perfect_ranking_scores_one(relevance, k):
    top, _ = metrics.top_k(relevance, k)  # sorted by relevance
    has_relevant = relevance.max(axis=1) > 0
    ones = np.ones(int(has_relevant.sum()))
    relevant = relevance > 0
    ndcg = np.asarray(metrics.ndcg_at_k(top, relevance))
    np.testing.assert_allclose(ndcg[has_relevant], ones, rtol=1e-6)
    for fn in (metrics.recall_at_k, metrics.average_precision_at_k):
        np.testing.assert_allclose(np.asarray(fn(top, relevant))[has_relevant], ones)


@FAST
@given(
    scores=integer_scores,
    relevance=graded,
    k=KS,
    padded_score=st.sampled_from([0.0, -1e9]),
)
def test_padding_songs_and_users_changes_nothing(scores, relevance, k, padded_score):
    def evaluate(scores, relevance):
        top, _ = metrics.top_k(scores, k)
        relevant = relevance > 0
        values = [metrics.ndcg_at_k(top, relevance)]
        values += [fn(top, relevant) for fn, _ in METRICS.values()]
        values.append(metrics.count_in_top_k(top, relevant))
        return top, values

    # Padded songs have the lowest score (ties go to the real, lower ids).
    padding = ((0, 2), (0, 3))  # 2 padding users, 3 padded songs
    padded_scores = np.pad(scores, padding, constant_values=padded_score)
    padded_relevance = np.pad(relevance, padding)
    top, values = evaluate(scores, relevance)
    padded_top, padded_values = evaluate(padded_scores, padded_relevance)
    np.testing.assert_array_equal(padded_top[:BATCH], top)
    for value, padded_value in zip(values, padded_values, strict=True):
        np.testing.assert_array_equal(padded_value[:BATCH], value)


def test_jit_matches_eager():
    scores, relevant, exclude = random_case(3)
    relevance = metrics.graded_relevance(relevant, np.arange(N_SONGS) < 3, 0.5)

    def evaluate(scores, relevance, exclude):
        top, _ = metrics.top_k(scores, K, exclude=exclude)
        relevant = relevance > 0
        return (
            metrics.ndcg_at_k(top, relevance),
            metrics.recall_at_k(top, relevant),
            metrics.precision_at_k(top, relevant),
            metrics.average_precision_at_k(top, relevant),
            metrics.count_in_top_k(top, relevant),
        )

    eager = evaluate(scores, relevance, exclude)
    jitted = jax.jit(evaluate)(scores, relevance, exclude)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(a, b)


# Input checks.


def test_invalid_inputs_raise_input_error():
    scores, relevant, exclude = random_case()
    top = top_k_ref(scores, K)
    with pytest.raises(InputError, match="k=10"):
        metrics.top_k(scores, N_SONGS + 1)
    with pytest.raises(InputError, match="k=0"):
        metrics.top_k(scores, 0)
    with pytest.raises(InputError, match="scores"):
        metrics.top_k(scores[0], 2)
    with pytest.raises(InputError, match="bool"):
        metrics.top_k(scores, 2, exclude=exclude.astype(np.int32))
    with pytest.raises(InputError, match="exclude"):
        metrics.top_k(scores, 2, exclude=exclude[:2])
    with pytest.raises(InputError, match="relevant"):
        metrics.recall_at_k(top, relevant[:2])
    with pytest.raises(InputError, match="exceeds"):
        metrics.ndcg_at_k(np.zeros((BATCH, 4), np.int32), relevant[:, :3])
    with pytest.raises(InputError, match="integer"):
        metrics.precision_at_k(top.astype(np.float32), relevant)


# Building relevance.


def test_relevance_from_sparse_round_trip():
    rng = np.random.default_rng(0)
    dense = rng.random((4, 6)) < 0.4
    dense[2] = False
    indptr = np.concatenate([[0], np.cumsum(dense.sum(axis=1))])
    indices = np.nonzero(dense)[1]
    np.testing.assert_array_equal(
        metrics.relevance_from_sparse(indptr, indices, 6), dense
    )
    values = np.arange(1, indices.size + 1, dtype=np.float32)
    weighted = metrics.relevance_from_sparse(indptr, indices, 6, values)
    assert weighted.dtype == np.float32
    np.testing.assert_array_equal(weighted[dense], values)
    np.testing.assert_array_equal(weighted[~dense], 0.0)


def test_relevance_from_sparse_rejects_invalid_rows():
    with pytest.raises(InputError, match="n_cols=3"):
        metrics.relevance_from_sparse([0, 2], [0, 3], 3)
    with pytest.raises(InputError, match="indptr"):
        metrics.relevance_from_sparse([0, 3], [0, 1], 3)
    with pytest.raises(InputError, match="indptr"):
        metrics.relevance_from_sparse([0, 2, 1, 2], [0, 1], 3)
    with pytest.raises(InputError, match="values"):
        metrics.relevance_from_sparse([0, 2], [0, 1], 3, values=[1.0])


# Summaries.


@FAST
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(0, 8),
        elements=st.one_of(st.floats(-1e3, 1e3), st.just(np.nan)),
    )
)
def test_mean_and_stderr_matches_numpy(values):
    mean, stderr, n = metrics.mean_and_stderr(values)
    present = values[~np.isnan(values)]
    assert isinstance(mean, float) and isinstance(stderr, float) and n == present.size
    if present.size == 0:
        assert np.isnan(mean) and np.isnan(stderr)
    elif present.size == 1:
        assert mean == present[0] and stderr == 0.0
    else:
        assert mean == pytest.approx(present.mean(), rel=1e-9, abs=1e-9)
        expected = present.std(ddof=1) / np.sqrt(present.size)
        assert stderr == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_mean_and_stderr_along_an_axis():
    values = np.array([[1.0, np.nan, 3.0], [2.0, 5.0, np.nan], [4.0, np.nan, 5.0]])
    summary = metrics.mean_and_stderr(values, axis=0)
    np.testing.assert_allclose(summary.mean, [7 / 3, 5.0, 4.0])
    np.testing.assert_allclose(
        summary.stderr, [np.std([1, 2, 4], ddof=1) / np.sqrt(3), 0.0, 1.0]
    )
    np.testing.assert_array_equal(summary.n, [3, 1, 2])
    row_means = metrics.mean_and_stderr(values, axis=1).mean
    np.testing.assert_allclose(row_means, [2.0, 3.5, 4.5])


# Latent geometry.


def test_latent_distance_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3)).astype(np.float32)
    centre = rng.normal(size=3).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
    np.testing.assert_allclose(
        metrics.latent_distance(z, centre), np.linalg.norm(z - centre, axis=1), 1e-6
    )
    np.testing.assert_allclose(
        metrics.latent_distance(z, centre, std),
        np.linalg.norm((z - centre) / std, axis=1),
        rtol=1e-6,
    )
    per_user = rng.normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        metrics.latent_distance(z, per_user), np.linalg.norm(z - per_user, axis=1), 1e-6
    )


def test_latent_distance_clamps_zero_std():
    z = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
    distance = metrics.latent_distance(z, np.zeros(2), np.array([0.0, 1.0]))
    assert np.all(np.isfinite(distance))
    np.testing.assert_allclose(distance, [np.hypot(1 / metrics.MIN_STD, 2.0), 0.0])


def test_latent_distance_rejects_bad_shapes():
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match="latent_dim"):
        metrics.latent_distance(z, np.zeros(2))
    with pytest.raises(InputError, match="std"):
        metrics.latent_distance(z, np.zeros(3), np.ones((2, 3)))
    with pytest.raises(InputError, match="z must be"):
        metrics.latent_distance(z[0], np.zeros(3))


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(1, 6),
    n=st.sampled_from([3001, 4096, 5999]),  # few shapes: few compilations
    levels=st.sampled_from([3, 50, 0]),
    seed=st.integers(0, 2**16),
)
def test_grouped_top_k_equals_lax_top_k_unless_it_says_so(k, n, levels, seed):
    assert metrics._group_width(n, k + 4) is not None  # the grouped passes
    rng = np.random.default_rng(seed)
    # Few distinct levels make many ties, also across groups; 0: continuous.
    if levels:
        scores = rng.integers(0, levels, (5, n)).astype(np.float32)
    else:
        scores = rng.normal(size=(5, n)).astype(np.float32)
    scores[0, rng.integers(0, n, n // 2)] = -np.inf
    # Songs to exclude: the best ones of some rows, padding (-1) elsewhere.
    exclude = np.full((5, 4), -1, np.int32)
    exclude[2:] = np.argsort(-scores[2:], axis=1)[:, [0, 2, 5, 9]]
    exclude[3, 1] = n + 7  # out of range: ignored
    masked = scores.copy()
    for row, songs in enumerate(exclude):
        masked[row, songs[(songs >= 0) & (songs < n)]] = -np.inf
    want_values, want_indices = jax.lax.top_k(masked, k)
    values, indices, exact = jax.jit(metrics.grouped_top_k, static_argnums=1)(
        scores, k, exclude
    )
    assert indices.dtype == jnp.int32
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(np.take_along_axis(masked, indices, 1), values)
    assert len(np.unique(indices[0])) == k
    if exact:
        np.testing.assert_array_equal(indices, want_indices)
    else:  # equal scores may have been taken from other songs
        assert levels
    # top_k falls back to whole rows when needed: always lax.top_k's order.
    top, top_values = metrics.top_k(masked, k)
    np.testing.assert_array_equal(top, want_indices)
    np.testing.assert_array_equal(top_values, want_values)


def test_grouped_top_k_is_exact_on_continuous_scores():
    scores = np.random.default_rng(0).normal(size=(4, 40_000)).astype(np.float32)
    text = jax.jit(metrics.grouped_top_k, static_argnums=1).lower(scores, 10).as_text()
    assert "reduce_window" in text  # the grouped pass, not lax.top_k alone
    values, indices, exact = metrics.grouped_top_k(scores, 10)
    assert exact
    np.testing.assert_array_equal(indices, np.argsort(-scores, 1)[:, :10])
