"""Reference recommenders to compare the autoencoders with.

Every recommender here is a *scorer*: a function from padded histories to
a score for every song,

    scorer(inputs int32 [n_users, input_len], -1 padded)
        -> scores float32 [n_users, n_songs], higher is better,

built from the listening data of the training users. Scorers work through
the users in chunks of `batch_size`, so they accept any number of users.

* `popularity_scorer`: the number of training users who listened to each
  song, the same for everyone.
* `ease_scorer`: EASE (Steck, 2019), a linear item-to-item model fitted in
  closed form; `tune_ease_l2` picks its L2 weight on validation users.
* `model_scorer`: a trained autoencoder's logits (the VAE decodes its
  mean).

References:
  H. Steck. "Embarrassingly Shallow Autoencoders for Sparse Data."
  WWW 2019.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse
from jax.typing import ArrayLike

from songrec_jax import models
from songrec_jax.config import Config, ModelConfig
from songrec_jax.data import ListeningData
from songrec_jax.errors import InputError, ResourceError

log = logging.getLogger(__name__)

Scorer = Callable[[ArrayLike], jax.Array]
"""`scorer(inputs int32 [n, L], -1 padded) -> float32 scores [n, n_songs]`."""

BATCH_SIZE = 1024
EASE_MATRICES = 3
"""Dense `[n_songs, n_songs]` matrices EASE holds at its peak (estimate)."""
EASE_FLOAT64_MAX_SONGS = 4096
"""EASE solves in float64 up to this many songs (when it fits), else float32."""
_GRAM_COLUMNS = 1024  # columns of X^T X computed at a time


# ----------------------------------------------------------------------------
# Helpers shared by the scorers.


def _check_inputs(inputs: ArrayLike, n_songs: int) -> np.ndarray | jax.Array:
    """Validates padded histories; returns them as an int32 array."""
    shape = np.shape(inputs)
    dtype = inputs.dtype if hasattr(inputs, "dtype") else np.asarray(inputs).dtype
    if len(shape) != 2 or not np.issubdtype(dtype, np.integer):
        raise InputError(
            f"inputs must be integer song ids [n_users, input_len], got {dtype} of "
            f"shape {shape}"
        )
    inputs = jnp.asarray(inputs, jnp.int32)
    if inputs.size:
        low, high = int(inputs.min()), int(inputs.max())
        if low < -1 or high >= n_songs:
            raise InputError(
                f"inputs hold song ids in [{low}, {high}]; accepted: 0..{n_songs - 1},"
                " or -1 for padding"
            )
    return inputs


@functools.partial(jax.jit, static_argnames="n_songs")
def multi_hot(inputs: jax.Array, n_songs: int) -> jax.Array:
    """float32 `[n, n_songs]`: 1 at each song of the padded inputs `[n, L]`."""
    rows = jnp.arange(inputs.shape[0])[:, None]
    cols = jnp.where(inputs >= 0, inputs, n_songs)
    x = jnp.zeros((inputs.shape[0], n_songs), jnp.float32)
    return x.at[rows, cols].set(1.0, mode="drop")


def _chunked(
    fn: Callable[[jax.Array], jax.Array],
    inputs: jax.Array,
    batch_size: int,
    n_songs: int,
) -> jax.Array:
    """`fn` over chunks of rows; the last chunk is padded to keep one shape."""
    n = inputs.shape[0]
    if n == 0:
        return jnp.zeros((0, n_songs), jnp.float32)
    size = min(batch_size, n)
    parts = []
    for start in range(0, n, size):
        chunk = inputs[start : start + size]
        rows = chunk.shape[0]
        if rows < size:
            chunk = jnp.pad(chunk, ((0, size - rows), (0, 0)), constant_values=-1)
        parts.append(fn(chunk)[:rows])
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be an integer >= 1")


# ----------------------------------------------------------------------------
# Popularity.


def popularity_scorer(
    train_data: ListeningData, *, batch_size: int = BATCH_SIZE
) -> Scorer:
    """Scores each song by its number of listeners among the training users.

    Args:
      train_data: the training users' listening data.
      batch_size: users scored at a time.

    Returns:
      A scorer giving every user the same scores, float32 `[n, n_songs]`.
    """
    _check_batch_size(batch_size)
    n_songs = train_data.n_songs
    popularity = jnp.asarray(train_data.song_popularity(), jnp.float32)

    def scorer(inputs: ArrayLike) -> jax.Array:
        inputs = _check_inputs(inputs, n_songs)
        return _chunked(
            lambda x: jnp.broadcast_to(popularity, (x.shape[0], n_songs)),
            inputs,
            batch_size,
            n_songs,
        )

    return scorer


# ----------------------------------------------------------------------------
# EASE.


def available_memory_bytes() -> int | None:
    """Memory this machine can still hand out, in bytes; None if unknown.

    Reads `MemAvailable` from `/proc/meminfo` (Linux), else asks `sysconf`
    for the free physical pages.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def ease_dtype(n_songs: int, *, max_memory_gb: float | None = None) -> np.dtype:
    """The float type EASE will solve in, after checking that it fits.

    EASE holds about `EASE_MATRICES` dense `[n_songs, n_songs]` matrices:
    float64 is used up to `EASE_FLOAT64_MAX_SONGS` songs when it fits,
    float32 otherwise.

    Args:
      n_songs: number of songs (items).
      max_memory_gb: memory allowed, in GiB; None uses the machine's
        available memory (`available_memory_bytes`).

    Returns:
      `np.dtype(np.float64)` or `np.dtype(np.float32)`.

    Raises:
      ResourceError: even float32 would not fit.
    """
    if max_memory_gb is not None:
        if not (isinstance(max_memory_gb, (int, float)) and max_memory_gb > 0):
            raise InputError(f"max_memory_gb={max_memory_gb!r} must be a number > 0")
        available, source = max_memory_gb * 2**30, "allowed by max_memory_gb"
    else:
        available, source = available_memory_bytes(), "available on this machine"
    for dtype in (np.float64, np.float32):
        if dtype == np.float64 and n_songs > EASE_FLOAT64_MAX_SONGS:
            continue
        needed = EASE_MATRICES * n_songs**2 * np.dtype(dtype).itemsize
        if available is None or needed <= available:
            if available is None:
                log.warning(
                    "cannot tell how much memory is available; EASE on %d "
                    "songs needs about %s",
                    n_songs,
                    _gib(needed),
                )
            return np.dtype(dtype)
    raise ResourceError(
        f"EASE on {n_songs} songs needs about {_gib(needed)} ({EASE_MATRICES} dense "
        f"{n_songs} x {n_songs} float32 matrices) but only {_gib(available)} is "
        f"{source}; keep fewer songs, for example raise min_song_listens "
        "(data.min_song_listens) or keep only the most popular songs"
    )


def _gram(train_data: ListeningData, dtype: np.dtype) -> np.ndarray:
    """`X^T X` `[n_songs, n_songs]` of the binary user x song matrix `X`."""
    n_songs = train_data.n_songs
    x = scipy.sparse.csr_matrix(
        (np.ones(train_data.n_listens, dtype), train_data.indices, train_data.indptr),
        shape=(train_data.n_users, n_songs),
    )
    x_t = x.T.tocsr()
    x_cols = x.tocsc()
    gram = np.empty((n_songs, n_songs), dtype)
    for start in range(0, n_songs, _GRAM_COLUMNS):
        stop = min(start + _GRAM_COLUMNS, n_songs)
        gram[:, start:stop] = x_t @ x_cols[:, start:stop].toarray()
    return gram


def _ease_from_gram(gram: np.ndarray, l2: float, *, overwrite: bool) -> np.ndarray:
    """EASE weights `B` from `G = X^T X`: `P = (G + l2 I)^-1`, `B = -P / diag(P)`."""
    g = gram if overwrite else gram.copy()
    g[np.diag_indices_from(g)] += l2
    # G is symmetric, so its transpose (a Fortran-ordered view) can be inverted
    # in place; the inverse is symmetric too.
    weights = scipy.linalg.inv(g.T, overwrite_a=True, check_finite=False)
    diag = np.diag(weights).copy()
    weights /= -diag  # column j divided by -P_jj
    np.fill_diagonal(weights, 0.0)
    return weights


def _check_l2(l2: float) -> None:
    if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 > 0):
        raise InputError(f"l2={l2!r} must be a finite number > 0")


def ease_weights(
    train_data: ListeningData, *, l2: float = 500.0, max_memory_gb: float | None = None
) -> np.ndarray:
    """The item-to-item weights of EASE, in closed form.

    With `X` the binary users x songs matrix of the training data,

        G = X^T X + l2 I,   P = G^-1,   B_ij = -P_ij / P_jj,   B_jj = 0,

    the minimiser of `||X - X B||^2 + l2 ||B||^2` subject to a zero
    diagonal (Steck, 2019).

    Args:
      train_data: the training users' listening data (play counts ignored).
      l2: the L2 weight `lambda`, > 0.
      max_memory_gb: memory allowed, in GiB; default: what is available.

    Returns:
      float32 `[n_songs, n_songs]`; a user's scores are `x @ B`.

    Raises:
      ResourceError: the dense matrices would not fit in memory (checked
        before anything is allocated).
    """
    _check_l2(l2)
    dtype = ease_dtype(train_data.n_songs, max_memory_gb=max_memory_gb)
    weights = _ease_from_gram(_gram(train_data, dtype), l2, overwrite=True)
    return weights.astype(np.float32, copy=False)


def _linear_scorer(weights: np.ndarray, batch_size: int) -> Scorer:
    n_songs = weights.shape[0]
    weights = jnp.asarray(weights, jnp.float32)

    @jax.jit
    def score(inputs):
        return multi_hot(inputs, n_songs) @ weights

    def scorer(inputs: ArrayLike) -> jax.Array:
        inputs = _check_inputs(inputs, n_songs)
        return _chunked(score, inputs, batch_size, n_songs)

    scorer.weights = weights
    return scorer


def ease_scorer(
    train_data: ListeningData,
    *,
    l2: float = 500.0,
    max_memory_gb: float | None = None,
    batch_size: int = BATCH_SIZE,
) -> Scorer:
    """EASE: scores are `x @ B` for the multi-hot `x` of the input songs.

    See `ease_weights` for `B`. The returned scorer carries `B` as its
    `weights` attribute.

    Args:
      train_data: the training users' listening data.
      l2: the L2 weight, > 0 (`tune_ease_l2` picks one).
      max_memory_gb: memory allowed, in GiB; default: what is available.
      batch_size: users scored at a time.

    Returns:
      A scorer, float32 `[n, n_songs]`.

    Raises:
      ResourceError: the dense matrices would not fit in memory.
    """
    _check_batch_size(batch_size)
    return _linear_scorer(
        ease_weights(train_data, l2=l2, max_memory_gb=max_memory_gb), batch_size
    )


def tune_ease_l2(
    train_data: ListeningData,
    val_split: Any,
    grid: Sequence[float] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0),
    *,
    k: int = 100,
    max_memory_gb: float | None = None,
    batch_size: int = BATCH_SIZE,
) -> tuple[float, dict[float, float]]:
    """Picks EASE's L2 weight by NDCG@k on validation users.

    `X^T X` is built once; each weight costs one matrix inverse.

    Args:
      train_data: the training users' listening data.
      val_split: a `splits.UserSplit` of validation users (their inputs are
        scored, seen songs excluded, their targets judged).
      grid: the L2 weights to try, each > 0.
      k: the NDCG cut-off (capped at n_songs).
      max_memory_gb: memory allowed, in GiB; default: what is available.
      batch_size: users scored at a time.

    Returns:
      `(best_l2, ndcg)`: the best weight and the mean validation NDCG@k of
      each weight tried.

    Raises:
      ResourceError: the dense matrices would not fit in memory.
    """
    # evaluation imports this module for its baselines, hence the late import.
    from songrec_jax import evaluation

    grid = [float(l2) for l2 in grid]
    if not grid:
        raise InputError("grid=[] must hold at least one L2 weight")
    for l2 in grid:
        _check_l2(l2)
    dtype = ease_dtype(train_data.n_songs, max_memory_gb=max_memory_gb)
    gram = _gram(train_data, dtype)
    k = min(k, train_data.n_songs)
    ndcg = {}
    for l2 in grid:
        weights = _ease_from_gram(gram, l2, overwrite=False).astype(np.float32)
        table = evaluation.evaluate_split(
            {"ease": _linear_scorer(weights, batch_size)},
            val_split,
            n_songs=train_data.n_songs,
            metric_names=(f"NDCG@{k}",),
            batch_size=batch_size,
        )
        ndcg[l2] = table.rows["ease"][f"NDCG@{k}"].mean
        log.info("EASE l2=%g: validation NDCG@%d %.4f", l2, k, ndcg[l2])
    best = max(grid, key=lambda l2: ndcg[l2])
    return best, ndcg


# ----------------------------------------------------------------------------
# Trained autoencoders.


def model_scorer(
    params: models.Params, config: Config | ModelConfig, *, batch_size: int = BATCH_SIZE
) -> Scorer:
    """A trained autoencoder's logits as scores (the VAE decodes its mean).

    Args:
      params: the model parameters.
      config: the model's config.
      batch_size: users scored at a time.

    Returns:
      A scorer, float32 `[n, n_songs]`: the output columns beyond
      `n_songs` (padding for sharding) are dropped.
    """
    _check_batch_size(batch_size)
    model_config = models.model_config(config)
    n_songs = model_config.n_songs

    def score(inputs):
        logits, _ = models.forward(params, model_config, inputs)
        return logits[:, :n_songs].astype(jnp.float32)

    def scorer(inputs: ArrayLike) -> jax.Array:
        inputs = _check_inputs(inputs, n_songs)
        if inputs.shape[1] != model_config.input_len:
            raise InputError(
                f"inputs have shape {tuple(inputs.shape)}; the model expects "
                f"[n_users, {model_config.input_len}]"
            )
        return _chunked(score, inputs, batch_size, n_songs)

    return scorer
