"""Where users and tags live in the latent space of a trained autoencoder.

Each user is encoded to one latent vector (the VAE's posterior mean, or the
MLP's encoder output) and is assigned a *dominant tag*: the tag that occurs
most often among the tags of the user's songs. A tag's latent statistics
are the mean and standard deviation of the latent vectors of the users
whose dominant tag it is. These statistics drive latent steering
(`songrec_jax.recommend`), the distances of users from tags, and plots.

`kmeans` clusters the latent vectors, and `cluster_top_tags` names each
cluster by the dominant tags of its users.

Files
-----
`save_tag_latents(tag_latents, directory)` writes two files, each
atomically (a temporary file renamed into place); the arrays never need
pickling:

* `tag_latents.npz`: `format_version` int64 scalar, `means` float32
  `[n_tags, latent_dim]`, `stds` float32 `[n_tags, latent_dim]`, `counts`
  int64 `[n_tags]`;
* `tag_latents.json`: `format_version`, `tag_names` (list of str),
  `counts` (list of int, which must equal the array), `latent_dim`,
  `skipped_users`, `model_name` and `split`.

`save_clusters(centres, assignment, directory)` writes `clusters.npz`:
`format_version`, `centres` float32 `[n_clusters, latent_dim]` and
`assignment` int32 `[n_users]`. A run keeps these files in
`z_data/<run name>/`; the caller passes the folder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from tqdm import tqdm

from songrec_jax import models
from songrec_jax.config import Config, ModelConfig
from songrec_jax.data import ListeningData
from songrec_jax.errors import DataFormatError, InputError, UnknownTagError
from songrec_jax.rng import jax_key

FORMAT_VERSION = 1
TAG_LATENTS_NPZ = "tag_latents.npz"
TAG_LATENTS_JSON = "tag_latents.json"
CLUSTERS_NPZ = "clusters.npz"

Songs = tuple[ArrayLike, ArrayLike] | np.ndarray | Sequence[Sequence[int]]
"""Songs of each user: a CSR tuple `(indptr, indices)`, a padded int array
`[n_users, L]` (-1 for padding), or a list of per-user song-index lists."""


# ----------------------------------------------------------------------------
# Dominant tags.


def songs_to_csr(songs: Songs, n_songs: int) -> tuple[np.ndarray, np.ndarray]:
    """The songs of each user as CSR arrays.

    Args:
      songs: a tuple `(indptr, indices)`; a 2-D int array `[n_users, L]`
        padded with -1 (such as model inputs); or a list with one sequence
        of song indices per user.
      n_songs: number of songs; every index must lie in `[0, n_songs)`.

    Returns:
      `(indptr int64 [n_users + 1], indices int64 [nnz])`.

    Raises:
      InputError: the songs are not in one of these forms or an index is out
        of range.
    """
    if isinstance(songs, tuple):
        if len(songs) != 2:
            raise InputError(
                f"a tuple of songs must be CSR (indptr, indices), got {len(songs)} "
                "items"
            )
        indptr = np.asarray(songs[0])
        indices = np.asarray(songs[1])
        if indptr.ndim != 1 or indices.ndim != 1 or indptr.size < 1:
            raise InputError(
                f"CSR indptr and indices must be 1-D, got shapes {indptr.shape} "
                f"and {indices.shape}"
            )
        if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
            raise InputError(
                f"indptr must rise from 0 to len(indices)={indices.size}, got "
                f"{indptr[0]} ... {indptr[-1]}"
            )
    elif isinstance(songs, (np.ndarray, jax.Array)):
        padded = np.asarray(songs)
        if padded.ndim != 2:
            raise InputError(
                f"an array of songs must be padded inputs [n_users, L], got shape "
                f"{padded.shape}"
            )
        present = padded >= 0
        indptr = np.concatenate([[0], np.cumsum(present.sum(axis=1))])
        indices = padded[present]
        if padded.size and padded.min() < -1:
            raise InputError(f"padded songs use -1 for padding, got {padded.min()}")
    else:
        rows = [np.asarray(s, np.int64).ravel() for s in songs]
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
        raise InputError(f"song indices must be integers, got dtype {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= n_songs):
        raise InputError(
            f"song indices lie in [{indices.min()}, {indices.max()}]; accepted: "
            f"0..{n_songs - 1}"
        )
    return indptr.astype(np.int64), indices.astype(np.int64)


def _user_tag_pairs(
    data: ListeningData, indptr: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(user, tag) of every tag of every song of every user, `[n_pairs]` each."""
    users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    lengths = np.diff(data.tag_indptr)[indices]
    starts = np.repeat(data.tag_indptr[indices], lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    return np.repeat(users, lengths), data.tag_indices[starts + offsets].astype(
        np.int64
    )


def dominant_tags(data: ListeningData, songs: Songs) -> np.ndarray:
    """Each user's most frequent tag among the tags of their songs.

    Every song contributes each of its tags once (a song listed twice counts
    twice). Ties go to the lowest tag index, that is, to the tag used by
    more songs of the whole catalogue when the data comes from `from_pairs`
    (which numbers tags by decreasing use). Vectorised: the cost is
    O(n_pairs log n_pairs) for n_pairs (user, tag) occurrences, with no
    per-user Python loop and no dense `[n_users, n_tags]` matrix.

    Args:
      data: the listening data, for the song -> tag map.
      songs: the songs of each user (see `songs_to_csr`): pass the input
        songs or the held-out target songs.

    Returns:
      int32 `[n_users]`: the dominant tag index, or -1 for a user none of
      whose songs carries a tag.
    """
    indptr, indices = songs_to_csr(songs, data.n_songs)
    n_users, n_tags = len(indptr) - 1, data.n_tags
    dominant = np.full(n_users, -1, np.int32)
    users, tags = _user_tag_pairs(data, indptr, indices)
    if len(users) == 0:
        return dominant
    keys, counts = np.unique(users * n_tags + tags, return_counts=True)
    key_users, key_tags = keys // n_tags, keys % n_tags
    order = np.lexsort((key_tags, -counts, key_users))
    sorted_users = key_users[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_users[1:] != sorted_users[:-1]
    dominant[sorted_users[first]] = key_tags[order][first]
    return dominant


def dominant_tags_of_split(
    data: ListeningData, split: Any, which: str = "input"
) -> np.ndarray:
    """`dominant_tags` of the input or the target songs of a `UserSplit`.

    Args:
      data: the listening data.
      split: a `songrec_jax.splits.UserSplit` (fields `inputs` int `[n, L]`
        padded with -1, `target_indptr`, `target_indices`).
      which: "input" (the songs the model sees) or "target" (the held-out
        songs).

    Returns:
      int32 `[n]`, -1 for users without tagged songs.
    """
    if which == "input":
        return dominant_tags(data, np.asarray(split.inputs))
    if which == "target":
        return dominant_tags(data, (split.target_indptr, split.target_indices))
    raise InputError(f"which={which!r} is not one of ['input', 'target']")


# ----------------------------------------------------------------------------
# Latent vectors of users.


def user_latents(
    params: models.Params,
    config: Config | ModelConfig,
    inputs: ArrayLike,
    *,
    batch_size: int = 1024,
    progress: bool = False,
) -> np.ndarray:
    """The latent vector of each user: the VAE's mean or the MLP's output.

    Users are encoded in chunks of `batch_size` (the last one padded with
    empty histories), so the encoder compiles once and memory stays bounded.

    Args:
      params: model parameters.
      config: the architecture (a `Config` or its `ModelConfig`).
      inputs: int `[n_users, input_len]` song indices, -1 for padding.
      batch_size: users per chunk, >= 1.
      progress: show a progress bar.

    Returns:
      float32 `[n_users, latent_dim]`.
    """
    c = models.model_config(config)
    models.check_params(params, c)
    x = np.asarray(models.check_inputs(inputs, c))
    _check_batch_size(batch_size)
    n = len(x)
    latents = np.empty((n, c.latent_dim), np.float32)
    for start, chunk, size in tqdm(
        list(_chunks(n, batch_size)), desc="latents", disable=not progress
    ):
        mean, _ = models.encode(params, c, _pad_rows(x[start : start + size], chunk))
        latents[start : start + size] = np.asarray(mean[:size])
    return latents


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be an integer >= 1")


def _chunks(n: int, batch_size: int):
    """(start, chunk, size): fixed `chunk = min(batch_size, n)` rows, `size` real."""
    chunk = min(batch_size, n)
    for start in range(0, n, max(chunk, 1)):
        yield start, chunk, min(chunk, n - start)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """`x` padded with rows of -1 (empty histories) to `rows` rows."""
    if len(x) == rows:
        return x
    pad = np.full((rows - len(x), *x.shape[1:]), -1, x.dtype)
    return np.concatenate([x, pad])


# ----------------------------------------------------------------------------
# Statistics per tag.


@dataclasses.dataclass(frozen=True, eq=False)
class TagLatents:
    """The latent mean and spread of the users of each dominant tag.

    Attributes:
      tag_names: str `[n_tags]`, the data's tag vocabulary.
      means: float32 `[n_tags, latent_dim]`; a row of NaN for a tag that is
        no user's dominant tag (never zeros, which would look real).
      stds: float32 `[n_tags, latent_dim]`, per-dimension standard deviation
        over the tag's users (population, ddof=0: 0 for a single user); NaN
        for a tag without users.
      counts: int64 `[n_tags]`, the number of users of each tag.
      skipped_users: users without any tagged song, left out of every tag.
      model_name: the run the latents come from (usually `Config.name`).
      split: which users and songs they were computed on, e.g. "train/input".
    """

    tag_names: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    counts: np.ndarray
    skipped_users: int = 0
    model_name: str = ""
    split: str = ""

    def __post_init__(self):
        names = np.asarray(self.tag_names).astype(str)
        means = np.asarray(self.means, np.float32)
        stds = np.asarray(self.stds, np.float32)
        counts = np.asarray(self.counts, np.int64)
        n_tags = len(names)
        if means.ndim != 2 or means.shape[0] != n_tags or stds.shape != means.shape:
            raise InputError(
                f"means {means.shape} and stds {stds.shape} must both be "
                f"[n_tags={n_tags}, latent_dim]"
            )
        if counts.shape != (n_tags,) or np.any(counts < 0):
            raise InputError(
                f"counts must be {n_tags} integers >= 0, got shape {counts.shape}"
            )
        for name, value in (("means", means), ("stds", stds)):
            finite = np.isfinite(value).all(axis=1)
            if np.any(finite != (counts > 0)):
                raise InputError(
                    f"{name} must be finite exactly for the tags with users "
                    "(NaN rows for the others)"
                )
        object.__setattr__(self, "tag_names", names)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "skipped_users", int(self.skipped_users))

    @property
    def n_tags(self) -> int:
        return len(self.tag_names)

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    @property
    def has_mean(self) -> np.ndarray:
        """bool `[n_tags]`: whether the tag has users, hence a mean."""
        return self.counts > 0

    def index(self, name: str) -> int:
        """The index of a tag that has a mean.

        Raises:
          UnknownTagError: the tag is unknown or is no user's dominant tag.
        """
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = {str(t): i for i, t in enumerate(self.tag_names)}
            object.__setattr__(self, "_lookup", lookup)
        valid = [str(t) for t in self.tag_names[self.has_mean][:8]]
        if name not in lookup:
            raise UnknownTagError(
                f"unknown tag {name!r}; tags with a latent mean include {valid}"
            )
        index = lookup[name]
        if not self.has_mean[index]:
            raise UnknownTagError(
                f"tag {name!r} is no user's dominant tag, so it has no latent "
                f"mean; tags with a latent mean include {valid}"
            )
        return index

    def tag(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`(mean, std)` of a tag, float32 `[latent_dim]` each.

        Raises:
          UnknownTagError: the tag is unknown or has no users.
        """
        index = self.index(name)
        return self.means[index], self.stds[index]


def _check_dominant(latents: jax.Array, dominant: jax.Array, n_tags: int) -> None:
    if latents.ndim != 2:
        raise InputError(f"latents must be [n_users, latent_dim], got {latents.shape}")
    if dominant.shape != latents.shape[:1]:
        raise InputError(
            f"dominant has shape {dominant.shape}; expected [n_users]="
            f"({latents.shape[0]},)"
        )
    if not jnp.issubdtype(dominant.dtype, jnp.integer):
        raise InputError(f"dominant must hold tag indices, got dtype {dominant.dtype}")
    if dominant.size and (int(dominant.min()) < -1 or int(dominant.max()) >= n_tags):
        raise InputError(
            f"dominant tags lie in [{int(dominant.min())}, {int(dominant.max())}]; "
            f"accepted: 0..{n_tags - 1}, or -1 for users without a tag"
        )


@functools.partial(jax.jit, static_argnames="n_tags")
def _tag_means(latents, dominant, n_tags):
    segments = jnp.where(dominant >= 0, dominant, n_tags)  # -1 -> an extra bin
    sums = jax.ops.segment_sum(latents, segments, num_segments=n_tags + 1)[:n_tags]
    ones = jnp.ones(dominant.shape, jnp.int32)
    counts = jax.ops.segment_sum(ones, segments, num_segments=n_tags + 1)[:n_tags]
    means = sums / jnp.maximum(counts, 1)[:, None].astype(latents.dtype)
    return jnp.where(counts[:, None] > 0, means, jnp.nan), counts


@jax.jit
def _tag_stds(latents, dominant, means):
    n_tags = means.shape[0]
    segments = jnp.where(dominant >= 0, dominant, n_tags)
    centre = jnp.where((dominant >= 0)[:, None], means[jnp.maximum(dominant, 0)], 0.0)
    squares = jnp.square(latents - centre)
    sums = jax.ops.segment_sum(squares, segments, num_segments=n_tags + 1)[:n_tags]
    ones = jnp.ones(dominant.shape, jnp.int32)
    counts = jax.ops.segment_sum(ones, segments, num_segments=n_tags + 1)[:n_tags]
    variance = sums / jnp.maximum(counts, 1)[:, None].astype(latents.dtype)
    return jnp.where(counts[:, None] > 0, jnp.sqrt(variance), jnp.nan)


def tag_latent_means(
    latents: ArrayLike, dominant: ArrayLike, n_tags: int
) -> tuple[np.ndarray, np.ndarray]:
    """The mean latent vector of the users of each tag (jitted segment sums).

    Args:
      latents: float `[n_users, latent_dim]`.
      dominant: int `[n_users]`, each user's dominant tag, -1 to skip a user.
      n_tags: size of the tag vocabulary.

    Returns:
      `(means float32 [n_tags, latent_dim], counts int64 [n_tags])`; rows of
      NaN for tags without users.
    """
    latents = jnp.asarray(latents, jnp.float32)
    dominant = jnp.asarray(dominant)
    _check_dominant(latents, dominant, n_tags)
    means, counts = _tag_means(latents, dominant.astype(jnp.int32), int(n_tags))
    return np.asarray(means), np.asarray(counts, np.int64)


def tag_latent_stds(
    latents: ArrayLike, dominant: ArrayLike, means: ArrayLike
) -> np.ndarray:
    """Per-dimension standard deviation of the users of each tag.

    The population standard deviation (ddof=0) about `means`, in two passes
    (the means first), which stays accurate when the spread is small
    relative to the mean.

    Args:
      latents: float `[n_users, latent_dim]`.
      dominant: int `[n_users]`, -1 to skip a user.
      means: float `[n_tags, latent_dim]` from `tag_latent_means`.

    Returns:
      float32 `[n_tags, latent_dim]`; NaN rows for tags without users.
    """
    latents = jnp.asarray(latents, jnp.float32)
    dominant = jnp.asarray(dominant)
    means = jnp.asarray(means, jnp.float32)
    _check_dominant(latents, dominant, means.shape[0])
    if means.ndim != 2 or means.shape[1] != latents.shape[1]:
        raise InputError(
            f"means has shape {means.shape}; expected [n_tags, {latents.shape[1]}]"
        )
    return np.asarray(_tag_stds(latents, dominant.astype(jnp.int32), means))


def compute_tag_latents(
    params: models.Params,
    config: Config | ModelConfig,
    data: ListeningData,
    inputs: ArrayLike,
    dominant: ArrayLike,
    *,
    model_name: str | None = None,
    split: str = "",
    batch_size: int = 1024,
    progress: bool = False,
) -> TagLatents:
    """Encodes the users and gathers the latent statistics of each tag.

    Args:
      params: model parameters.
      config: the architecture (a `Config` or its `ModelConfig`).
      data: the listening data (for the tag names).
      inputs: int `[n_users, input_len]`, the users' padded input songs.
      dominant: int `[n_users]`, each user's dominant tag (see
        `dominant_tags`), -1 for users without a tag.
      model_name: stored with the result; default `config.name` for a full
        `Config`, else "".
      split: stored with the result, e.g. "train/input".
      batch_size: users encoded per chunk.
      progress: show a progress bar while encoding.

    Returns:
      The `TagLatents`.
    """
    if model_name is None:
        model_name = config.name if isinstance(config, Config) else ""
    latents = user_latents(
        params, config, inputs, batch_size=batch_size, progress=progress
    )
    dominant = np.asarray(dominant)
    means, counts = tag_latent_means(latents, dominant, data.n_tags)
    stds = tag_latent_stds(latents, dominant, means)
    return TagLatents(
        tag_names=np.asarray(data.tag_names),
        means=means,
        stds=stds,
        counts=counts,
        skipped_users=int(np.sum(dominant < 0)),
        model_name=model_name,
        split=split,
    )


# ----------------------------------------------------------------------------
# k-means.


def _squared_distances(x: jax.Array, centres: jax.Array) -> jax.Array:
    """`[n, k]` squared Euclidean distances, clamped at 0."""
    cross = x @ centres.T
    norms = jnp.sum(jnp.square(x), 1)[:, None] + jnp.sum(jnp.square(centres), 1)
    return jnp.maximum(norms - 2.0 * cross, 0.0)


def _kmeans_plus_plus(x: jax.Array, key: jax.Array, n_clusters: int) -> jax.Array:
    """Initial centres by D^2 sampling (Arthur & Vassilvitskii 2007)."""
    first_key, loop_key = jax.random.split(key)
    first = x[jax.random.randint(first_key, (), 0, x.shape[0])]
    centres = jnp.zeros((n_clusters, x.shape[1]), x.dtype).at[0].set(first)
    nearest = jnp.sum(jnp.square(x - first), axis=1)

    def add_centre(j, carry):
        centres, nearest = carry
        logits = jnp.where(nearest > 0, jnp.log(nearest), -jnp.inf)
        centre = x[jax.random.categorical(jax.random.fold_in(loop_key, j), logits)]
        nearest = jnp.minimum(nearest, jnp.sum(jnp.square(x - centre), axis=1))
        return centres.at[j].set(centre), nearest

    centres, _ = jax.lax.fori_loop(1, n_clusters, add_centre, (centres, nearest))
    return centres


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_iter"))
def _kmeans(x, keys, n_clusters, n_iter):
    def one_run(key):
        def lloyd_step(_, centres):
            assignment = jnp.argmin(_squared_distances(x, centres), axis=1)
            sums = jax.ops.segment_sum(x, assignment, num_segments=n_clusters)
            counts = jax.ops.segment_sum(
                jnp.ones(x.shape[0], x.dtype), assignment, num_segments=n_clusters
            )
            # An empty cluster keeps its centre.
            return jnp.where(
                counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres
            )

        centres = _kmeans_plus_plus(x, key, n_clusters)
        centres = jax.lax.fori_loop(0, n_iter, lloyd_step, centres)
        distances = _squared_distances(x, centres)
        assignment = jnp.argmin(distances, axis=1)
        inertia = jnp.sum(jnp.min(distances, axis=1))
        return centres, assignment.astype(jnp.int32), inertia

    return jax.vmap(one_run)(keys)


def kmeans(
    latents: ArrayLike,
    n_clusters: int,
    *,
    key,
    n_iter: int = 50,
    n_init: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means clustering of latent vectors (Lloyd's algorithm, k-means++ init).

    `n_init` independent runs (vectorised with `vmap`) each start from a
    k-means++ draw and take exactly `n_iter` Lloyd steps; the run of lowest
    inertia (sum of squared distances to the assigned centre) is returned.
    An empty cluster keeps its previous centre.

    Args:
      latents: float `[n_users, latent_dim]`, finite.
      n_clusters: number of clusters, `1 <= n_clusters <= n_users`.
      key: JAX PRNG key or integer seed.
      n_iter: Lloyd steps per run, >= 0.
      n_init: independent runs, >= 1.

    Returns:
      `(centres float32 [n_clusters, latent_dim], assignment int32
      [n_users])`.

    References:
      D. Arthur, S. Vassilvitskii. "k-means++: The Advantages of Careful
      Seeding." SODA 2007.
    """
    x = jnp.asarray(latents, jnp.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(
            f"latents must be [n_users, latent_dim] with n_users >= 1, got {x.shape}"
        )
    for name, value, low in (("n_iter", n_iter, 0), ("n_init", n_init, 1)):
        if not isinstance(value, numbers.Integral) or value < low:
            raise InputError(f"{name}={value!r} must be an integer >= {low}")
    if not isinstance(n_clusters, numbers.Integral) or not (
        1 <= n_clusters <= x.shape[0]
    ):
        raise InputError(
            f"n_clusters={n_clusters!r} must be an integer in [1, n_users={x.shape[0]}]"
        )
    if not bool(jnp.all(jnp.isfinite(x))):
        raise InputError("latents must be finite to be clustered")
    keys = jax.random.split(jax_key(key), n_init)
    centres, assignment, inertia = _kmeans(x, keys, int(n_clusters), int(n_iter))
    best = int(jnp.argmin(inertia))
    return np.asarray(centres[best]), np.asarray(assignment[best])


def cluster_top_tags(
    assignment: ArrayLike,
    dominant: ArrayLike,
    tag_names: Sequence[str] | np.ndarray,
    *,
    top: int = 5,
    n_clusters: int | None = None,
) -> list[list[tuple[str, int, float]]]:
    """The most common dominant tags of each cluster.

    Args:
      assignment: int `[n_users]`, each user's cluster.
      dominant: int `[n_users]`, each user's dominant tag, -1 for none.
      tag_names: str `[n_tags]`.
      top: at most this many tags per cluster.
      n_clusters: number of clusters; default `max(assignment) + 1`.

    Returns:
      One list per cluster of `(tag, count, share)`, most common first (ties
      by tag index), where `share = count / cluster size` counts every user
      of the cluster, including those without a tag; tags with count 0 are
      left out.
    """
    assignment = np.asarray(assignment, np.int64)
    dominant = np.asarray(dominant, np.int64)
    names = np.asarray(tag_names).astype(str)
    n_tags = len(names)
    if assignment.shape != dominant.shape or assignment.ndim != 1:
        raise InputError(
            f"assignment {assignment.shape} and dominant {dominant.shape} must be "
            "[n_users] each"
        )
    if n_clusters is None:
        n_clusters = int(assignment.max()) + 1 if assignment.size else 0
    if assignment.size and (assignment.min() < 0 or assignment.max() >= n_clusters):
        raise InputError(f"assignment must lie in [0, n_clusters={n_clusters})")
    if dominant.size and (dominant.min() < -1 or dominant.max() >= n_tags):
        raise InputError(f"dominant must lie in [-1, n_tags={n_tags})")
    sizes = np.bincount(assignment, minlength=n_clusters)
    tagged = dominant >= 0
    counts = np.bincount(
        assignment[tagged] * n_tags + dominant[tagged], minlength=n_clusters * n_tags
    ).reshape(n_clusters, n_tags)
    order = np.argsort(-counts, axis=1, kind="stable")[:, :top]
    return [
        [
            (str(names[t]), int(counts[c, t]), float(counts[c, t] / sizes[c]))
            for t in order[c]
            if counts[c, t] > 0
        ]
        for c in range(n_clusters)
    ]


# ----------------------------------------------------------------------------
# Files.


def _atomic_write(path: Path, write) -> None:
    """Calls `write(file)` on a temporary file, then renames it to `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def save_tag_latents(tag_latents: TagLatents, directory: str | Path) -> None:
    """Writes `tag_latents.npz` and `tag_latents.json` (see the module docstring).

    Args:
      tag_latents: the statistics to store.
      directory: the folder, created if needed, e.g. `z_data/<run name>`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "format_version": np.int64(FORMAT_VERSION),
        "means": tag_latents.means,
        "stds": tag_latents.stds,
        "counts": tag_latents.counts,
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "tag_names": [str(t) for t in tag_latents.tag_names],
        "counts": [int(c) for c in tag_latents.counts],
        "latent_dim": tag_latents.latent_dim,
        "skipped_users": tag_latents.skipped_users,
        "model_name": tag_latents.model_name,
        "split": tag_latents.split,
    }
    _atomic_write(directory / TAG_LATENTS_NPZ, lambda f: np.savez(f, **arrays))
    text = json.dumps(meta, indent=1).encode()
    _atomic_write(directory / TAG_LATENTS_JSON, lambda f: f.write(text))


def _read_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataFormatError("no such file", path=path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [n for n in ("format_version", *names) if n not in f.files]
            if missing:
                raise DataFormatError(f"missing arrays {missing}", path=path)
            arrays = {n: f[n] for n in ("format_version", *names)}
    except DataFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise DataFormatError(f"cannot read as .npz: {e}", path=path) from None
    version = arrays.pop("format_version")
    if version.shape != () or int(version) != FORMAT_VERSION:
        raise DataFormatError(
            f"format version {version} is not supported (this library reads "
            f"{FORMAT_VERSION})",
            path=path,
        )
    return arrays


def load_tag_latents(directory: str | Path) -> TagLatents:
    """Reads the files written by `save_tag_latents`; never unpickles anything.

    Raises:
      DataFormatError: a file is missing, corrupt, of another format
        version, or the two files disagree.
    """
    directory = Path(directory)
    json_path = directory / TAG_LATENTS_JSON
    npz_path = directory / TAG_LATENTS_NPZ
    if not json_path.is_file():
        raise DataFormatError("no such file", path=json_path)
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"not valid JSON: {e}", path=json_path) from None
    keys = ("format_version", "tag_names", "counts", "skipped_users", "model_name")
    if not isinstance(meta, dict) or any(k not in meta for k in keys):
        raise DataFormatError(
            f"expected a JSON object with keys {keys}", path=json_path
        )
    if meta["format_version"] != FORMAT_VERSION:
        raise DataFormatError(
            f"format version {meta['format_version']!r} is not supported (this "
            f"library reads {FORMAT_VERSION})",
            path=json_path,
        )
    arrays = _read_npz(npz_path, ("means", "stds", "counts"))
    if list(np.asarray(arrays["counts"]).tolist()) != meta["counts"]:
        raise DataFormatError(
            f"the counts in {TAG_LATENTS_JSON} and {TAG_LATENTS_NPZ} differ: the "
            "files come from different saves",
            path=directory,
        )
    try:
        return TagLatents(
            tag_names=np.array(meta["tag_names"], dtype=str),
            means=arrays["means"],
            stds=arrays["stds"],
            counts=arrays["counts"],
            skipped_users=meta["skipped_users"],
            model_name=str(meta["model_name"]),
            split=str(meta.get("split", "")),
        )
    except (InputError, TypeError, ValueError) as e:
        raise DataFormatError(
            f"inconsistent tag latents: {e}", path=directory
        ) from None


def save_clusters(
    centres: ArrayLike, assignment: ArrayLike, directory: str | Path
) -> None:
    """Writes `clusters.npz` (centres and assignment) atomically.

    Args:
      centres: float `[n_clusters, latent_dim]` from `kmeans`.
      assignment: int `[n_users]` from `kmeans`.
      directory: the folder, created if needed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "format_version": np.int64(FORMAT_VERSION),
        "centres": np.asarray(centres, np.float32),
        "assignment": np.asarray(assignment, np.int32),
    }
    _atomic_write(directory / CLUSTERS_NPZ, lambda f: np.savez(f, **arrays))


def load_clusters(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads `clusters.npz`: `(centres float32 [K, d], assignment int32 [n])`.

    Raises:
      DataFormatError: the file is missing or corrupt.
    """
    path = Path(directory) / CLUSTERS_NPZ
    arrays = _read_npz(path, ("centres", "assignment"))
    centres, assignment = arrays["centres"], arrays["assignment"]
    n_clusters = len(centres)
    if (
        centres.ndim != 2
        or centres.dtype.kind != "f"
        or assignment.ndim != 1
        or assignment.dtype.kind != "i"
        or (
            assignment.size and (assignment.min() < 0 or assignment.max() >= n_clusters)
        )
    ):
        raise DataFormatError(
            f"expected float centres [K, d] and int assignment in [0, K), got "
            f"{centres.dtype} {centres.shape} and {assignment.dtype} "
            f"{assignment.shape}",
            path=path,
        )
    return centres.astype(np.float32), assignment.astype(np.int32)
