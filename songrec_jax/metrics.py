"""Ranking metrics of recommendations, batched over users.

A recommender scores every song for every user, `scores [batch, n_songs]`;
`top_k` turns the scores into the ranked song ids `top_indices [batch, k]`,
leaving out songs the user has already heard. The metrics then compare the
ranking with the user's held-out songs, given as a dense mask or relevance
matrix `[batch, n_songs]` (`relevance_from_sparse` builds one from CSR rows).
A mask or relevance that is the same for every user may be given as
`[n_songs]`.

Every per-user metric is NaN for a user with nothing relevant, so that
`mean_and_stderr` drops the same users from every metric. All array
functions run under `jax.jit` (the cut-off `k` is static: it is the width
of `top_indices`); shapes are checked before tracing and a mismatch raises
`InputError`.

NDCG@k and Recall@k follow Mult-VAE (Liang et al. 2018): recall divides the
hits by `min(k, n_relevant)`, so a perfect ranking scores 1 even for users
with more than `k` relevant songs.

References:
  D. Liang, R. G. Krishnan, M. D. Hoffman, T. Jebara. "Variational
  Autoencoders for Collaborative Filtering." WWW 2018.
  K. Jarvelin, J. Kekalainen. "Cumulated Gain-Based Evaluation of IR
  Techniques." ACM TOIS 2002.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from songrec_jax.errors import InputError

MIN_STD = 1e-6
"""`latent_distance` clamps standard deviations to at least this value."""


# ----------------------------------------------------------------------------
# Shape checks, run on the static shapes before (or while) tracing.


def _check_scores(scores: jax.Array) -> None:
    if scores.ndim != 2:
        raise InputError(f"scores must be [batch, n_songs], got shape {scores.shape}")


def _check_shared_or_per_row(
    name: str, array: jax.Array, batch: int, width: int, width_name: str = "n_songs"
) -> None:
    """`array` must be `[width]` (shared by all rows) or `[batch, width]`."""
    if array.shape not in ((width,), (batch, width)):
        raise InputError(
            f"{name} has shape {array.shape}; expected [{width_name}]=({width},) "
            f"or [batch, {width_name}]=({batch}, {width})"
        )


def _check_ranking(top_indices: jax.Array, name: str, per_song: jax.Array) -> None:
    if top_indices.ndim != 2 or not jnp.issubdtype(top_indices.dtype, jnp.integer):
        raise InputError(
            "top_indices must be integer song ids [batch, k], got "
            f"{top_indices.dtype} of shape {top_indices.shape}"
        )
    if per_song.ndim not in (1, 2):
        raise InputError(
            f"{name} must be [batch, n_songs] or [n_songs], got shape {per_song.shape}"
        )
    batch, k = top_indices.shape
    n_songs = per_song.shape[-1]
    if k > n_songs:
        raise InputError(f"k={k} (width of top_indices) exceeds n_songs={n_songs}")
    _check_shared_or_per_row(name, per_song, batch, n_songs)


def _gather(per_song: jax.Array, top_indices: jax.Array) -> jax.Array:
    """`per_song [batch, n_songs]` or `[n_songs]` at the ranked songs `[batch, k]`."""
    if per_song.ndim == 1:
        return per_song[top_indices]
    return jnp.take_along_axis(per_song, top_indices, axis=1)


def _nan_unless(condition: jax.Array, value: jax.Array) -> jax.Array:
    return jnp.where(condition, value, jnp.nan)


# ----------------------------------------------------------------------------
# Ranking.


GROUP = 128
"""Songs per window of the reductions of `group_maxima` and `logsumexp`."""


def _group_width(n: int, candidates: int) -> int | None:
    """Songs per group for `grouped_top_k`: the power of two nearest
    `sqrt(n / candidates)` (it balances the two passes' work), or None when
    the rows are too short for groups to save work."""
    width = 2 ** round(math.log2(max(n / candidates, 1.0)) / 2)
    width = max(width, 8)
    return width if n // width >= 4 * (candidates + 1) else None


def grouped_top_k(
    scores: jax.Array, k: int, exclude: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`lax.top_k` of each row, in two passes for long rows.

    `lax.top_k` over whole rows of many songs is slow on a CPU. The first
    pass takes the maximum of each group of `w` consecutive songs and picks
    the `g` groups with the largest maxima; the second is `lax.top_k` over
    those groups' `g * w` songs alone (`w` about `sqrt(n / g)`). With
    `g = k`, the top k lie in the groups picked: the k-th largest score is
    at least the k-th largest group maximum. Songs to exclude (at most `L`
    per row) are dropped among the candidates, and `g = k + L` groups are
    picked, so that excluding them costs no pass over whole rows.

    Equal scores go to the lower song id, as with `lax.top_k`, except in
    one case: when the k-th score kept equals the largest maximum of the
    groups left out, an equal score may sit in one of those. The third
    result flags it; the caller then ranks again with `lax.top_k` (a branch
    inside the compiled function would cost more than it saves).

    Args:
      scores: float `[batch, n]`.
      k: static, `1 <= k <= n`.
      exclude: optional int `[batch, L]`: song ids to leave out of each
        row (-1, or any id outside `[0, n)`, for none).

    Returns:
      `(values [batch, k], indices int32 [batch, k], exact)`, best first;
      excluded songs appear only, with value -inf, when fewer than `k`
      songs are left. `exact` is a bool scalar, False when the result may
      differ from `lax.top_k`'s. Rows too short for groups to help are
      ranked by `lax.top_k` directly (`exact` True).
    """
    batch, n = scores.shape
    rows = jnp.arange(batch)[:, None]
    n_excluded = 0 if exclude is None else exclude.shape[1]
    width = _group_width(n, k + n_excluded)
    if width is None:
        if exclude is not None:
            songs = jnp.where((exclude >= 0) & (exclude < n), exclude, n)
            scores = scores.at[rows, songs].set(-jnp.inf, mode="drop")
        values, indices = lax.top_k(scores, k)
        return values, indices.astype(jnp.int32), jnp.bool_(True)

    groups = -(-n // width)
    maxima = lax.reduce_window(
        scores, -jnp.inf, lax.max, (1, width), (1, width),
        ((0, 0), (0, groups * width - n)),
    )  # fmt: skip
    # No slice of a `lax.top_k` result below: XLA on CPU then compiles the
    # top-k as a full sort of the rows, many times slower.
    _, chosen = lax.top_k(maxima, k + n_excluded)
    left_out = jnp.max(maxima.at[rows, chosen].set(-jnp.inf), axis=1)
    chosen = jnp.sort(chosen, axis=1)  # ascending song ids
    songs = (chosen[:, :, None] * width + jnp.arange(width)).reshape(batch, -1)
    candidates = jnp.take_along_axis(scores, jnp.minimum(songs, n - 1), axis=1)
    candidates = jnp.where(songs < n, candidates, -jnp.inf)
    if exclude is not None:
        # Each excluded song's slot among the candidates, if its group is in.
        group = jnp.where((exclude >= 0) & (exclude < n), exclude // width, -1)
        slot = jax.vmap(functools.partial(jnp.searchsorted, method="scan"))(
            chosen, group
        )
        slot = jnp.minimum(slot, chosen.shape[1] - 1)
        present = jnp.take_along_axis(chosen, slot, axis=1) == group
        position = jnp.where(present, slot * width + exclude % width, songs.shape[1])
        candidates = candidates.at[rows, position].set(-jnp.inf, mode="drop")
    values, position = lax.top_k(candidates, k)
    indices = jnp.take_along_axis(songs, position, axis=1).astype(jnp.int32)
    exact = jnp.all(jnp.min(values, axis=1) > left_out)
    return values, indices, exact


def group_maxima(scores: jax.Array) -> jax.Array:
    """The maximum of each group of `GROUP` consecutive songs, `[batch, G]`.

    A reduction over short windows: XLA on CPU runs it on every core,
    which it does not for a reduction over whole long rows.
    """
    n = scores.shape[1]
    groups = -(-n // GROUP)
    padding = ((0, 0), (0, groups * GROUP - n))
    return lax.reduce_window(scores, -jnp.inf, lax.max, (1, GROUP), (1, GROUP), padding)


def logsumexp(logits: jax.Array) -> jax.Array:
    """`log(sum(exp(logits), axis=1))`, `[batch, 1]`, for long rows.

    The same value as `jax.nn.logsumexp(logits, axis=1, keepdims=True)`
    (to float32 rounding), with its reductions taken over groups of
    `GROUP` songs first (see `group_maxima`): several times faster on a
    CPU for rows of many songs. -inf entries count as zero probability.
    """
    n = logits.shape[1]
    groups = -(-n // GROUP)
    padding = ((0, 0), (0, groups * GROUP - n))
    top = jnp.max(group_maxima(logits), axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    sums = lax.reduce_window(
        jnp.exp(logits - top), 0.0, lax.add, (1, GROUP), (1, GROUP), padding
    )
    return top + jnp.log(jnp.sum(sums, axis=1, keepdims=True))


def _masked(scores: jax.Array, exclude: jax.Array | None) -> jax.Array:
    return scores if exclude is None else jnp.where(exclude, -jnp.inf, scores)


@functools.partial(jax.jit, static_argnames="k")
def _top_k(
    scores: jax.Array, exclude: jax.Array | None, k: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    values, indices, exact = grouped_top_k(_masked(scores, exclude), k)
    return indices, values, exact


@functools.partial(jax.jit, static_argnames="k")
def _plain_top_k(
    scores: jax.Array, exclude: jax.Array | None, k: int
) -> tuple[jax.Array, jax.Array]:
    values, indices = lax.top_k(_masked(scores, exclude), k)
    return indices.astype(jnp.int32), values


def top_k(
    scores: ArrayLike, k: int, *, exclude: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array]:
    """The `k` best-scored songs of each user, best first.

    Equal scores are ranked by song id, lower first. Excluded songs get a
    score of `-inf`; they appear (with value `-inf`) only when fewer than
    `k` songs are left.

    Args:
      scores: float `[batch, n_songs]`, higher is better (logits or
        probabilities).
      k: how many songs to return, `1 <= k <= n_songs`.
      exclude: bool `[batch, n_songs]` or `[n_songs]`, songs that must not
        be recommended (for example the user's input songs); None keeps all.

    Returns:
      `(indices, values)`: int32 song ids `[batch, k]` and their scores
      `[batch, k]`.

    Raises:
      InputError: `scores` is not 2-D, `k` is out of range, or `exclude`
        is not a bool mask of a matching shape.
    """
    scores = jnp.asarray(scores)
    _check_scores(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    batch, n_songs = scores.shape
    if not isinstance(k, numbers.Integral) or not 1 <= k <= n_songs:
        raise InputError(f"k={k!r} must be an integer in [1, n_songs={n_songs}]")
    if exclude is not None:
        exclude = jnp.asarray(exclude)
        if exclude.dtype != jnp.bool_:
            raise InputError(
                f"exclude must be a bool mask, got dtype {exclude.dtype}; "
                "turn song ids into a mask first (see relevance_from_sparse)"
            )
        _check_shared_or_per_row("exclude", exclude, batch, n_songs)
    if isinstance(scores, jax.core.Tracer):  # inside a caller's jit
        return _plain_top_k(scores, exclude, int(k))
    indices, values, exact = _top_k(scores, exclude, int(k))
    if not exact:  # a tie at the k-th score: rank whole rows
        indices, values = _plain_top_k(scores, exclude, int(k))
    return indices, values


def dcg_weights(k: int) -> jax.Array:
    """The discount of each rank, `1 / log2(rank + 2)` for rank `0 .. k-1`.

    Args:
      k: number of ranks.

    Returns:
      float32 `[k]`, starting at 1 and decreasing.
    """
    return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


# ----------------------------------------------------------------------------
# Metrics of a ranking.


@jax.jit
def _ndcg(top_indices: jax.Array, relevance: jax.Array) -> jax.Array:
    k = top_indices.shape[1]
    weights = dcg_weights(k)
    dcg = jnp.sum(_gather(relevance, top_indices) * weights, axis=-1)
    ideal = lax.top_k(relevance, k)[0]
    idcg = jnp.sum(ideal * weights, axis=-1)
    return _nan_unless(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1.0))


def ndcg_at_k(top_indices: ArrayLike, relevance: ArrayLike) -> jax.Array:
    """Normalised discounted cumulative gain of the top `k` songs.

    `DCG = sum_r relevance[top_indices[r]] / log2(r + 2)` over ranks
    `r < k`, divided by the DCG of the best possible ranking (the `k`
    largest relevances in decreasing order). Gains are linear in the
    relevance; with binary relevance this is the NDCG@k of Mult-VAE.

    Args:
      top_indices: int `[batch, k]`, ranked song ids (see `top_k`).
      relevance: float or bool `[batch, n_songs]` (or `[n_songs]`), >= 0.

    Returns:
      float32 `[batch]` in [0, 1]; NaN for a user whose relevance is all
      zero (no ideal ranking to compare with), so callers can drop them.

    Raises:
      InputError: the shapes do not match or `k > n_songs`.
    """
    top_indices, relevance = jnp.asarray(top_indices), jnp.asarray(relevance)
    _check_ranking(top_indices, "relevance", relevance)
    return _ndcg(top_indices, relevance.astype(jnp.float32))


def _hits_and_relevant(
    top_indices: jax.Array, relevant: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Hit indicators `[batch, k]` and the number of relevant songs `[batch]`."""
    relevant = relevant.astype(jnp.float32)
    hits = _gather(relevant, top_indices)
    n_relevant = jnp.broadcast_to(jnp.sum(relevant, axis=-1), hits.shape[:1])
    return hits, n_relevant


@jax.jit
def _recall(top_indices: jax.Array, relevant: jax.Array) -> jax.Array:
    hits, n_relevant = _hits_and_relevant(top_indices, relevant)
    denominator = jnp.maximum(jnp.minimum(n_relevant, top_indices.shape[1]), 1.0)
    return _nan_unless(n_relevant > 0, jnp.sum(hits, axis=-1) / denominator)


@jax.jit
def _precision(top_indices: jax.Array, relevant: jax.Array) -> jax.Array:
    hits, n_relevant = _hits_and_relevant(top_indices, relevant)
    return _nan_unless(n_relevant > 0, jnp.mean(hits, axis=-1))


@jax.jit
def _average_precision(top_indices: jax.Array, relevant: jax.Array) -> jax.Array:
    hits, n_relevant = _hits_and_relevant(top_indices, relevant)
    k = top_indices.shape[1]
    precision_at_rank = jnp.cumsum(hits, axis=-1) / jnp.arange(
        1, k + 1, dtype=jnp.float32
    )
    denominator = jnp.maximum(jnp.minimum(n_relevant, k), 1.0)
    ap = jnp.sum(hits * precision_at_rank, axis=-1) / denominator
    return _nan_unless(n_relevant > 0, ap)


def _relevant_mask(relevant: ArrayLike) -> jax.Array:
    relevant = jnp.asarray(relevant)
    return relevant if relevant.dtype == jnp.bool_ else relevant > 0


def recall_at_k(top_indices: ArrayLike, relevant: ArrayLike) -> jax.Array:
    """Share of the relevant songs found in the top `k`, capped at `k`.

    `hits / min(k, n_relevant)`, the denominator of Mult-VAE, so a perfect
    ranking scores 1 even when a user has more than `k` relevant songs.

    Args:
      top_indices: int `[batch, k]`, ranked song ids.
      relevant: bool `[batch, n_songs]` (or `[n_songs]`); a numeric array
        counts its positive entries as relevant.

    Returns:
      float32 `[batch]` in [0, 1]; NaN for a user with no relevant song.

    Raises:
      InputError: the shapes do not match or `k > n_songs`.
    """
    top_indices, relevant = jnp.asarray(top_indices), _relevant_mask(relevant)
    _check_ranking(top_indices, "relevant", relevant)
    return _recall(top_indices, relevant)


def precision_at_k(top_indices: ArrayLike, relevant: ArrayLike) -> jax.Array:
    """Share of the top `k` songs that are relevant, `hits / k`.

    Args:
      top_indices: int `[batch, k]`, ranked song ids.
      relevant: bool `[batch, n_songs]` (or `[n_songs]`).

    Returns:
      float32 `[batch]` in [0, 1]; NaN for a user with no relevant song,
      like the other metrics, so that all of them average the same users.

    Raises:
      InputError: the shapes do not match or `k > n_songs`.
    """
    top_indices, relevant = jnp.asarray(top_indices), _relevant_mask(relevant)
    _check_ranking(top_indices, "relevant", relevant)
    return _precision(top_indices, relevant)


def average_precision_at_k(top_indices: ArrayLike, relevant: ArrayLike) -> jax.Array:
    """Average precision of the top `k` songs (its mean over users is MAP@k).

    `sum_r hit[r] * precision@(r + 1) / min(k, n_relevant)` over the ranks
    `r < k`: the precision at each rank holding a relevant song, averaged
    over the relevant songs a perfect ranking would place in the top `k`.

    Args:
      top_indices: int `[batch, k]`, ranked song ids.
      relevant: bool `[batch, n_songs]` (or `[n_songs]`).

    Returns:
      float32 `[batch]` in [0, 1]; NaN for a user with no relevant song.

    Raises:
      InputError: the shapes do not match or `k > n_songs`.
    """
    top_indices, relevant = jnp.asarray(top_indices), _relevant_mask(relevant)
    _check_ranking(top_indices, "relevant", relevant)
    return _average_precision(top_indices, relevant)


@jax.jit
def _count(top_indices: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(_gather(mask, top_indices), axis=-1, dtype=jnp.int32)


def count_in_top_k(top_indices: ArrayLike, mask: ArrayLike) -> jax.Array:
    """How many of the top `k` songs are in `mask`.

    Counts, for example, the held-out songs, the songs of a tag, or the
    remaining songs among the recommendations.

    Args:
      top_indices: int `[batch, k]`, ranked song ids.
      mask: bool `[batch, n_songs]`, or `[n_songs]` for a set of songs
        shared by all users (such as a tag's songs).

    Returns:
      int32 `[batch]` in `[0, k]`.

    Raises:
      InputError: the shapes do not match or `k > n_songs`.
    """
    top_indices, mask = jnp.asarray(top_indices), _relevant_mask(mask)
    _check_ranking(top_indices, "mask", mask)
    return _count(top_indices, mask)


# ----------------------------------------------------------------------------
# Building relevance.


def relevance_from_sparse(
    indptr: ArrayLike,
    indices: ArrayLike,
    n_cols: int,
    values: ArrayLike | None = None,
) -> np.ndarray:
    """A dense matrix from compressed sparse rows (CSR).

    Row `i` holds the songs `indices[indptr[i]:indptr[i + 1]]`.

    Args:
      indptr: int `[n_rows + 1]`, non-decreasing, starting at 0 and ending
        at `len(indices)`.
      indices: int `[nnz]`, column (song) ids in `[0, n_cols)`.
      n_cols: number of columns (songs).
      values: optional `[nnz]` entries; None marks the songs True.

    Returns:
      NumPy bool `[n_rows, n_cols]`, or float32 with `values` (duplicates
      keep the last value).

    Raises:
      InputError: the arrays do not describe valid CSR rows.
    """
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    if indptr.ndim != 1 or indptr.size < 1 or indices.ndim != 1:
        raise InputError(
            f"indptr must be 1-D with at least one entry and indices 1-D; got "
            f"shapes {indptr.shape} and {indices.shape}"
        )
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise InputError(
            f"indptr must rise from 0 to len(indices)={indices.size}; got "
            f"first {indptr[0]}, last {indptr[-1]}"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
        raise InputError(
            f"indices must lie in [0, n_cols={n_cols}); got range "
            f"[{indices.min()}, {indices.max()}]"
        )
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    if values is None:
        dense = np.zeros((indptr.size - 1, n_cols), bool)
        dense[rows, indices] = True
        return dense
    values = np.asarray(values, np.float32)
    if values.shape != indices.shape:
        raise InputError(
            f"values has shape {values.shape}; expected that of indices {indices.shape}"
        )
    dense = np.zeros((indptr.size - 1, n_cols), np.float32)
    dense[rows, indices] = values
    return dense


def graded_relevance(
    heldout: ArrayLike, tag_songs: ArrayLike, reli: float
) -> jax.Array:
    """Relevance for steered recommendations: held-out songs 1, tag songs `reli`.

    A song that is both held out and of the tag gets the larger of the two.

    Args:
      heldout: bool `[batch, n_songs]`, each user's held-out songs.
      tag_songs: bool `[batch, n_songs]` or `[n_songs]`, the songs of the
        tag the recommendations were steered towards.
      reli: relevance of a tag song, a finite number >= 0.

    Returns:
      float32 `[batch, n_songs]`, for `ndcg_at_k`.

    Raises:
      InputError: the shapes do not match, or `reli` is negative or not
        finite.
    """
    heldout, tag_songs = jnp.asarray(heldout), jnp.asarray(tag_songs)
    if heldout.ndim != 2:
        raise InputError(f"heldout must be [batch, n_songs], got shape {heldout.shape}")
    _check_shared_or_per_row("tag_songs", tag_songs, *heldout.shape)
    if isinstance(reli, numbers.Real) and not (math.isfinite(reli) and reli >= 0):
        raise InputError(f"reli={reli!r} must be a finite number >= 0")
    tag_relevance = jnp.where(
        tag_songs.astype(bool), jnp.asarray(reli, jnp.float32), 0.0
    )
    return jnp.maximum(heldout.astype(jnp.float32), tag_relevance)


# ----------------------------------------------------------------------------
# Summaries and latent geometry.


class MeanStderr(NamedTuple):
    """A mean with its standard error and the number of values behind it."""

    mean: float | np.ndarray
    stderr: float | np.ndarray
    n: int | np.ndarray


def mean_and_stderr(values: ArrayLike, axis: int = 0) -> MeanStderr:
    """Mean, standard error and count of the non-NaN values.

    The standard error is `std / sqrt(n)` with the sample standard
    deviation (`ddof=1`); it is 0 when `n == 1`. With `n == 0` the mean and
    standard error are NaN. Runs on the host in float64 (not under `jit`).

    Args:
      values: array of per-user metric values; NaN marks a missing value.
      axis: the axis to reduce.

    Returns:
      `MeanStderr(mean, stderr, n)`: Python floats and an int for a 1-D
      input, NumPy arrays otherwise.
    """
    values = np.asarray(values, np.float64)
    present = ~np.isnan(values)
    n = present.sum(axis=axis)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=axis) / n
        deviation = np.where(present, values - np.expand_dims(mean, axis), 0.0)
        variance = np.square(deviation).sum(axis=axis) / (n - 1)
        stderr = np.where(n > 1, np.sqrt(variance / n), np.where(n == 1, 0.0, np.nan))
    if values.ndim == 1:
        return MeanStderr(float(mean), float(stderr), int(n))
    return MeanStderr(mean, stderr, n)


@jax.jit
def _distance(z: jax.Array, centre: jax.Array, std: jax.Array | None) -> jax.Array:
    difference = z - centre
    if std is not None:
        difference = difference / jnp.maximum(std, MIN_STD)
    return jnp.sqrt(jnp.sum(jnp.square(difference), axis=-1))


def latent_distance(
    z: ArrayLike, centre: ArrayLike, std: ArrayLike | None = None
) -> jax.Array:
    """Distance of latent codes from a centre, Euclidean or diagonal Mahalanobis.

    Without `std`, `||z - centre||`. With `std`, each dimension is divided
    by its standard deviation first, `||(z - centre) / std||`, the
    Mahalanobis distance of a Gaussian with diagonal covariance. Standard
    deviations below `MIN_STD` (such as those of constant dimensions) are
    clamped to `MIN_STD`, so the distance stays finite.

    Args:
      z: float `[batch, latent_dim]`.
      centre: float `[latent_dim]` or `[batch, latent_dim]`, for example a
        tag's mean latent code.
      std: optional float `[latent_dim]` or `[batch, latent_dim]`.

    Returns:
      float32 `[batch]`, >= 0.

    Raises:
      InputError: the shapes do not match.
    """
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2:
        raise InputError(f"z must be [batch, latent_dim], got shape {z.shape}")
    centre = jnp.asarray(centre, jnp.float32)
    _check_shared_or_per_row("centre", centre, *z.shape, "latent_dim")
    if std is not None:
        std = jnp.asarray(std, jnp.float32)
        _check_shared_or_per_row("std", std, *z.shape, "latent_dim")
    return _distance(z, centre, std)
