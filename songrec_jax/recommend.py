"""Top-k recommendations, optionally steered towards tags.

`recommend` encodes each user's input songs, decodes scores for every song
and returns the `k` best songs the user has not heard. Users are processed
in chunks of a fixed size (the last one padded), so the whole computation
compiles once and memory stays bounded whatever the number of users.

Scores
------
The returned scores are always **log-probabilities** under the likelihood
the model was trained with: `log_softmax(logits)` over the songs for the
multinomial loss "ce", `log_sigmoid(logits)` per song for "bce", "bce2",
"focal" and "focal2". Ranking by them is ranking by the logits (a
monotone map); working in log space keeps the order of songs whose
probabilities would round to the same float32 (sigmoids near 1). Post-
filtering multiplies probabilities, that is, adds the logarithm of the
multiplier to these scores (the softmax is not renormalised afterwards,
which changes no ranking). `exp(scores)` gives the (re-weighted)
probabilities.

Steering
--------
`tags` maps tag names to weights >= 0, for example `{"jazz": 1.0,
"blues": 0.5}`, and `alpha >= 0` is the strength:

* "postfilter": the probability of a song carrying some requested tags is
  multiplied by the mean, over those tags, of `(1 + weight) ** alpha`;
  songs without any requested tag keep theirs (`song_multipliers`).
* "latent": the user's latent vector `z` (VAE mean, MLP output) moves by
  `alpha * (target - user_tag_mean)` before decoding. `target` is the
  weight-averaged latent mean of the requested tags; `user_tag_mean` is
  the average of the latent means of the tags of the user's input songs,
  each tag counted as often as it occurs among those songs (tags without
  a mean are ignored); when none of the user's songs has such a tag,
  `user_tag_mean = z`, so `z` moves towards `target` by the fraction
  `alpha` (`steered_latents`).
* "both": latent steering with `alpha`, then post-filtering with
  `alpha * factor`.

`alpha = 0` (or no tags) computes exactly the unsteered recommendations:
the steering steps are skipped, not multiplied by zero, so the result is
bit-identical.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike
from tqdm import tqdm

from songrec_jax import latent, metrics, models, splits
from songrec_jax.config import Config, ModelConfig
from songrec_jax.data import ListeningData
from songrec_jax.errors import InputError

METHODS = ("postfilter", "latent", "both")
PROBABILITIES = ("softmax", "sigmoid")
SIGMOID_LOSSES = ("bce", "bce2", "focal", "focal2")
MIN_STD = metrics.MIN_STD
_DISTANCE_CHUNK_ELEMENTS = 1 << 24


class Recommendations(NamedTuple):
    """Ranked songs and their scores, best first.

    Attributes:
      indices: int32 `[n_users, k]` song indices (`[k]` from
        `recommend_one`); -1 in the slots left over when fewer than `k`
        songs remain after excluding the seen ones.
      scores: float32, same shape: log-probabilities (see the module
        docstring); -inf in the left-over slots.
    """

    indices: np.ndarray
    scores: np.ndarray


# ----------------------------------------------------------------------------
# Validation.


def probability_kind(
    config: Config | ModelConfig, probabilities: str | None = None
) -> str:
    """ "sigmoid" or "softmax": how the model's logits become probabilities.

    An explicit `probabilities` wins; otherwise a full `Config` decides by
    its loss (sigmoid for bce, bce2, focal, focal2; softmax for ce) and a
    bare `ModelConfig` means softmax.
    """
    if probabilities is not None:
        if probabilities not in PROBABILITIES:
            raise InputError(
                f"probabilities={probabilities!r} is not one of {list(PROBABILITIES)}"
            )
        return probabilities
    if isinstance(config, Config) and config.loss.name in SIGMOID_LOSSES:
        return "sigmoid"
    return "softmax"


def _check_number(name: str, value, accepted: str = "a finite number >= 0") -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise InputError(f"{name}={value!r} is not accepted; expected {accepted}")
    return float(value)


def _check_tags(tags: Mapping[str, float] | None) -> dict[str, float]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InputError(
            f"tags={tags!r} must be a dict of tag name -> weight, e.g. "
            "{'jazz': 1.0, 'blues': 0.5}"
        )
    return {
        str(name): _check_number(f"the weight of tag {name!r}", weight)
        for name, weight in tags.items()
    }


def _check_k(k, n_songs: int) -> int:
    if (
        not isinstance(k, numbers.Integral)
        or isinstance(k, bool)
        or not (1 <= k <= n_songs)
    ):
        raise InputError(f"k={k!r} must be an integer in [1, n_songs={n_songs}]")
    return int(k)


def _check_data(data: ListeningData | None, c: ModelConfig, why: str) -> None:
    if data is None:
        raise InputError(f"{why} needs data= (the listening data with song tags)")
    if data.n_songs != c.n_songs:
        raise InputError(
            f"data has {data.n_songs} songs but the model scores {c.n_songs}"
        )


# ----------------------------------------------------------------------------
# Steering ingredients, computed once per call on the host.


def _tag_indices(data: ListeningData, tags: Iterable[str]) -> np.ndarray:
    return np.array([data.tag_index(t) for t in tags], np.int64)


def song_multipliers(
    data: ListeningData, tags: Mapping[str, float], alpha: float
) -> np.ndarray:
    """The factor by which post-filtering multiplies each song's probability.

    For a song carrying the requested tags R (among its own tags), the mean
    of `(1 + tags[t]) ** alpha` over t in R; 1 for a song carrying none.

    Args:
      data: the listening data (song -> tag map).
      tags: tag name -> weight >= 0.
      alpha: strength >= 0.

    Returns:
      float64 `[n_songs]`, >= 1.

    Raises:
      UnknownTagError: a tag is not in the data.
      InputError: a weight or `alpha` is negative or not finite.
    """
    tags = _check_tags(tags)
    alpha = _check_number("alpha", alpha)
    factor_of_tag = np.full(data.n_tags, np.nan)
    factor_of_tag[_tag_indices(data, tags)] = [
        (1.0 + w) ** alpha for w in tags.values()
    ]
    songs = np.repeat(np.arange(data.n_songs), np.diff(data.tag_indptr))
    factors = factor_of_tag[data.tag_indices]
    requested = ~np.isnan(factors)
    total = np.bincount(
        songs[requested], weights=factors[requested], minlength=data.n_songs
    )
    count = np.bincount(songs[requested], minlength=data.n_songs)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def tag_song_mask(data: ListeningData, tags: Iterable[str] | str) -> np.ndarray:
    """bool `[n_songs]`: the songs carrying at least one of the tags.

    Args:
      data: the listening data.
      tags: a tag name, or several (a dict's keys count).

    Raises:
      UnknownTagError: a tag is not in the data.
    """
    tags = [tags] if isinstance(tags, str) else list(tags)
    wanted = np.zeros(data.n_tags, bool)
    wanted[_tag_indices(data, tags)] = True
    songs = np.repeat(np.arange(data.n_songs), np.diff(data.tag_indptr))
    mask = np.zeros(data.n_songs, bool)
    mask[songs[wanted[data.tag_indices]]] = True
    return mask


def _steering_target(tag_latents: latent.TagLatents, tags: dict[str, float]):
    """Weight-averaged latent mean of the requested tags, float64 `[d]`."""
    index = np.array([tag_latents.index(t) for t in tags], np.int64)
    weights = np.array(list(tags.values()), np.float64)
    if weights.sum() <= 0:
        raise InputError(
            f"tags={tags!r}: latent steering needs a positive weight on at least "
            "one tag"
        )
    means = tag_latents.means[index].astype(np.float64)
    return weights @ means / weights.sum()


def _song_tag_sums(data: ListeningData, tag_latents: latent.TagLatents):
    """Per song: sum of the latent means of its tags that have one `[S, d]`,
    and how many such tags `[S]` (float32 both)."""
    if data.tag_names.tolist() != tag_latents.tag_names.tolist():
        raise InputError(
            "the data's tags differ from those of tag_latents; compute the tag "
            "latents on the same data"
        )
    songs = np.repeat(np.arange(data.n_songs), np.diff(data.tag_indptr))
    usable = tag_latents.has_mean[data.tag_indices]
    songs, tags = songs[usable], data.tag_indices[usable]
    sums = _segment_sums(
        jnp.asarray(tag_latents.means),
        jnp.asarray(songs),
        jnp.asarray(tags),
        n_songs=data.n_songs,
    )
    counts = np.bincount(songs, minlength=data.n_songs)
    return np.asarray(sums), counts.astype(np.float32)


@functools.partial(jax.jit, static_argnames="n_songs")
def _segment_sums(means, songs, tags, *, n_songs):
    """`sums[s] = sum of means[tags[i]] over i with songs[i] == s` (sorted)."""
    return jax.ops.segment_sum(
        means[tags], songs, num_segments=n_songs, indices_are_sorted=True
    )


def _steer(z: jax.Array, x: jax.Array, steer: dict[str, jax.Array]) -> jax.Array:
    """`z + alpha * (target - user_tag_mean)` for inputs `x [B, L]`."""
    present = x >= 0
    songs = jnp.where(present, x, 0)
    sums = jnp.sum(steer["song_sums"][songs] * present[..., None], axis=1)
    counts = jnp.sum(steer["song_counts"][songs] * present, axis=1)[:, None]
    user_tag_mean = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), z)
    return z + steer["alpha"] * (steer["target"] - user_tag_mean)


# ----------------------------------------------------------------------------
# The jitted kernel.


@functools.partial(
    jax.jit,
    static_argnames=("config", "k", "sigmoid", "exclude_seen", "normalize", "plain"),
)
def _recommend_chunk(
    params,
    x,
    log_multipliers,
    steer,
    *,
    config,
    k,
    sigmoid,
    exclude_seen,
    normalize=True,
    plain=False,
):
    """`(indices, scores, exact)` of one chunk; see `recommend`.

    `exact` is False when `metrics.grouped_top_k` may have ordered equal
    scores otherwise than `lax.top_k`; `plain=True` then ranks whole rows.
    """
    z, _ = models.encode(params, config, x)
    if steer is not None:
        z = _steer(z, x, steer)
    logits = models.decode(params, config, z)
    if sigmoid and log_multipliers is not None:
        # log_sigmoid(logits) + log_multipliers is not monotone in
        # logits + log_multipliers: rank the scores of every song.
        scores = jax.nn.log_sigmoid(logits[:, : config.n_songs]) + log_multipliers
        indices, values = _top_k_of_scores(scores, x, k, exclude_seen)
        return indices, values, jnp.bool_(True)
    return _top_k_of_logits(
        logits, x, log_multipliers, config, k, sigmoid, exclude_seen, normalize, plain
    )


def _top_k_of_logits(
    logits, x, log_multipliers, config, k, sigmoid, exclude_seen, normalize, plain
):
    """Top k by a score that is a monotone function of each song's logit.

    The log-probability (`log_softmax`, or `log_sigmoid` for sigmoid
    models) plus the post-filter's log multiplier orders songs as the logit
    plus that multiplier does, so the ranking needs no `exp` or `log` of
    every song: `metrics.grouped_top_k` finds the best `k` unseen songs (or
    `lax.top_k` when `plain`, after setting the seen songs' keys to -inf),
    and only those are turned into log-probabilities. Equal keys go to the
    lower song id.
    """
    n_songs, n_outputs = config.n_songs, config.n_outputs
    keys = logits
    if log_multipliers is not None:
        padding = jnp.zeros(n_outputs - n_songs, log_multipliers.dtype)
        keys = logits + jnp.concatenate([log_multipliers, padding])
    if plain:
        values, indices = lax.top_k(_without_seen(keys, x) if exclude_seen else keys, k)
        exact = jnp.bool_(True)
    else:
        values, indices, exact = metrics.grouped_top_k(
            keys, k, exclude=x if exclude_seen else None
        )
    if sigmoid:
        scores = jax.nn.log_sigmoid(values)
    elif normalize:  # padded songs have logit MASKED_LOGIT: probability 0
        scores = values - metrics.logsumexp(logits)
    else:
        scores = values
    # Seen songs (-inf) and padded songs fill only slots nothing else could.
    found = (values > -jnp.inf) & (indices < n_songs)
    indices = jnp.where(found, indices, -1).astype(jnp.int32)
    return indices, jnp.where(found, scores, -jnp.inf), exact


def _without_seen(scores, x):
    """`scores [B, n]` with each user's input songs set to -inf."""
    rows = jnp.arange(x.shape[0])[:, None]
    songs = jnp.where(x >= 0, x, scores.shape[1])  # padding -> dropped
    return scores.at[rows, songs].set(-jnp.inf, mode="drop")


def _top_k_of_scores(scores, x, k, exclude_seen):
    """Top k of per-song scores `[B, n_songs]`, seen songs excluded."""
    if exclude_seen:
        scores = _without_seen(scores, x)
    indices, values = metrics.top_k(scores, k)
    # Only excluded songs score -inf: mark the slots nothing else could fill.
    indices = jnp.where(values > -jnp.inf, indices, -1)
    return indices, values


def recommend(
    params: models.Params,
    config: Config | ModelConfig,
    inputs: ArrayLike,
    *,
    k: int = 100,
    exclude_seen: bool = True,
    batch_size: int = 512,
    tags: Mapping[str, float] | None = None,
    alpha: float = 0.0,
    method: str = "postfilter",
    data: ListeningData | None = None,
    tag_latents: latent.TagLatents | None = None,
    factor: float = 1.0,
    probabilities: str | None = None,
    normalize: bool = True,
    progress: bool = False,
) -> Recommendations:
    """The `k` best songs for each user, optionally steered towards tags.

    See the module docstring for the scores and the steering methods.

    Args:
      params: model parameters.
      config: a full `Config` (its loss decides sigmoid or softmax) or a
        `ModelConfig`.
      inputs: int `[n_users, input_len]`, input songs, -1 for padding (see
        `splits.to_input`).
      k: songs per user, `1 <= k <= n_songs`.
      exclude_seen: never recommend a user's input songs.
      batch_size: users per jitted chunk; bounds memory to about
        `batch_size * n_outputs` floats. At 180,198 songs on a CPU, 256-512
        users keep a chunk's scores close to the caches and ran fastest
        (`benchmarks/scoring.py --batch-size`). The ranking does not depend on it;
        the scores may differ in the last bit, as XLA can choose other
        kernels for another chunk shape.
      tags: tag name -> weight >= 0 to steer towards; None or {} for none.
      alpha: steering strength, a finite number >= 0.
      method: "postfilter", "latent" or "both".
      data: the listening data; needed with `tags` (song -> tag map).
      tag_latents: the tags' latent means; needed for "latent" and "both".
      factor: "both" post-filters with strength `alpha * factor` (>= 0).
      probabilities: "softmax" or "sigmoid" to override what `config`
        implies.
      normalize: softmax scores are log-probabilities (the default). False
        returns `logits + log(multiplier)` instead: the same ranking
        without the softmax normaliser (one pass of `exp` over every
        song; `benchmarks/scoring.py` times both). No effect on sigmoid
        scores.
      progress: show a progress bar over chunks.

    Returns:
      `Recommendations(indices int32 [n_users, k], scores float32
      [n_users, k])`. Padded output songs (beyond `n_songs`) never appear,
      nor, with `exclude_seen`, the input songs.

    Raises:
      InputError: bad inputs, `k`, weights, `alpha`, `factor`, `method`,
        or a missing `data` / `tag_latents`.
      UnknownTagError: a tag is unknown, or ("latent", "both") has no
        latent mean.
    """
    c = models.model_config(config)
    sigmoid = probability_kind(config, probabilities) == "sigmoid"
    models.check_params(params, c)
    x = np.asarray(models.check_inputs(inputs, c))
    k = _check_k(k, c.n_songs)
    latent._check_batch_size(batch_size)
    if method not in METHODS:
        raise InputError(f"method={method!r} is not one of {list(METHODS)}")
    alpha = _check_number("alpha", alpha)
    factor = _check_number("factor", factor)
    tags = _check_tags(tags)

    log_multipliers = steer = None
    if tags:
        _check_data(data, c, "steering towards tags")
        post_alpha = {"postfilter": alpha, "latent": 0.0, "both": alpha * factor}
        multipliers = song_multipliers(data, tags, post_alpha[method])
        if method != "postfilter":
            if tag_latents is None:
                raise InputError(
                    f"method={method!r} needs tag_latents= (see "
                    "latent.compute_tag_latents)"
                )
            target = _steering_target(tag_latents, tags)
            if alpha > 0:
                song_sums, song_counts = _song_tag_sums(data, tag_latents)
                steer = {
                    "song_sums": jnp.asarray(song_sums),
                    "song_counts": jnp.asarray(song_counts),
                    "target": jnp.asarray(target, jnp.float32),
                    "alpha": jnp.float32(alpha),
                }
        if post_alpha[method] > 0:
            log_multipliers = jnp.asarray(np.log(multipliers), jnp.float32)

    n = len(x)
    indices = np.empty((n, k), np.int32)
    scores = np.empty((n, k), np.float32)
    kernel = functools.partial(
        _recommend_chunk,
        config=c,
        k=k,
        sigmoid=sigmoid,
        exclude_seen=bool(exclude_seen),
        normalize=bool(normalize),
    )
    for start, chunk, size in tqdm(
        list(latent._chunks(n, batch_size)), desc="recommend", disable=not progress
    ):
        block = latent._pad_rows(x[start : start + size], chunk)
        top, values, exact = kernel(params, block, log_multipliers, steer)
        if not exact:  # equal scores at the cut: rank whole rows
            top, values, _ = kernel(params, block, log_multipliers, steer, plain=True)
        indices[start : start + size] = np.asarray(top[:size])
        scores[start : start + size] = np.asarray(values[:size])
    return Recommendations(indices, scores)


def recommend_one(
    params: models.Params,
    config: Config | ModelConfig,
    song_indexes: Iterable[int] | np.ndarray,
    *,
    k: int = 10,
    key=None,
    **steering,
) -> Recommendations:
    """Recommendations for one listening history, e.g. typed in a notebook.

    Args:
      params: model parameters.
      config: a `Config` or `ModelConfig`.
      song_indexes: the songs listened to (any order, duplicates allowed).
      k: songs to return.
      key: PRNG key or seed to subsample a history longer than
        `input_len` (default 0).
      **steering: any keyword of `recommend` (tags, alpha, method, data,
        tag_latents, factor, exclude_seen, probabilities).

    Returns:
      `Recommendations` of 1-D arrays `[k]`.

    Raises:
      InputError: an empty history, or any error of `recommend`.
    """
    c = models.model_config(config)
    x = splits.to_input(
        song_indexes, c.input_len, key=0 if key is None else key, n_songs=c.n_songs
    )
    if not (x >= 0).any():
        raise InputError(
            "the history is empty: the model needs at least one song to "
            "recommend from (rank a new user by popularity instead)"
        )
    result = recommend(params, config, x[None], k=k, batch_size=1, **steering)
    return Recommendations(result.indices[0], result.scores[0])


# ----------------------------------------------------------------------------
# Latent geometry of users and tags.


def user_tag_means(
    inputs: ArrayLike, data: ListeningData, tag_latents: latent.TagLatents
) -> tuple[np.ndarray, np.ndarray]:
    """The average latent mean of the tags of each user's input songs.

    Each tag with a mean counts as often as it occurs among the user's
    input songs (see the module docstring).

    Args:
      inputs: int `[n_users, L]`, -1 padded.
      data: the listening data (song -> tag map).
      tag_latents: the tags' latent means.

    Returns:
      `(means float32 [n_users, d], has_tags bool [n_users])`; NaN rows
      where a user has no song with such a tag.
    """
    x = np.asarray(inputs)
    if x.ndim != 2:
        raise InputError(f"inputs must be [n_users, L], got shape {x.shape}")
    song_sums, song_counts = _song_tag_sums(data, tag_latents)
    means = np.empty((len(x), tag_latents.latent_dim), np.float32)
    counts = np.empty(len(x), np.float32)
    for start, _, size in latent._chunks(len(x), 1024):
        block = x[start : start + size]
        present = block >= 0
        songs = np.where(present, block, 0)
        sums = (song_sums[songs] * present[..., None]).sum(axis=1)
        counts[start : start + size] = (song_counts[songs] * present).sum(axis=1)
        means[start : start + size] = (
            sums / np.maximum(counts[start : start + size], 1)[:, None]
        )
    means[counts == 0] = np.nan
    return means, counts > 0


@functools.partial(jax.jit, static_argnames="config")
def _steered_chunk(params, x, steer, *, config):
    z, _ = models.encode(params, config, x)
    return _steer(z, x, steer)


def steered_latents(
    params: models.Params,
    config: Config | ModelConfig,
    inputs: ArrayLike,
    *,
    tags: Mapping[str, float],
    alpha: float,
    data: ListeningData,
    tag_latents: latent.TagLatents,
    batch_size: int = 1024,
) -> np.ndarray:
    """The latent vectors that "latent" steering decodes, `[n_users, d]`.

    `z + alpha * (target - user_tag_mean)`; see the module docstring.
    """
    c = models.model_config(config)
    x = np.asarray(models.check_inputs(inputs, c))
    latent._check_batch_size(batch_size)
    alpha = _check_number("alpha", alpha)
    tags = _check_tags(tags)
    if not tags:
        raise InputError("tags={} is empty: name at least one tag to steer towards")
    _check_data(data, c, "latent steering")
    target = _steering_target(tag_latents, tags)
    song_sums, song_counts = _song_tag_sums(data, tag_latents)
    steer = {
        "song_sums": jnp.asarray(song_sums),
        "song_counts": jnp.asarray(song_counts),
        "target": jnp.asarray(target, jnp.float32),
        "alpha": jnp.float32(alpha),
    }
    out = np.empty((len(x), c.latent_dim), np.float32)
    for start, chunk, size in latent._chunks(len(x), batch_size):
        block = latent._pad_rows(x[start : start + size], chunk)
        out[start : start + size] = np.asarray(
            _steered_chunk(params, block, steer, config=c)[:size]
        )
    return out


def user_latent(
    params: models.Params,
    config: Config | ModelConfig,
    songs: Iterable[int] | ArrayLike,
    *,
    key=None,
) -> np.ndarray:
    """Latent vector(s): of one history (1-D song indexes) -> `[d]`, or of
    padded inputs `[n_users, input_len]` -> `[n_users, d]`.

    Args:
      params: model parameters.
      config: a `Config` or `ModelConfig`.
      songs: one history's song indexes, or a 2-D array of padded inputs.
      key: PRNG key or seed to subsample a history longer than `input_len`
        (default 0).
    """
    c = models.model_config(config)
    if np.ndim(songs) == 2:
        return latent.user_latents(params, c, songs)
    x = splits.to_input(
        songs, c.input_len, key=0 if key is None else key, n_songs=c.n_songs
    )
    return latent.user_latents(params, c, x[None])[0]


@jax.jit
def _distances(z, means, stds):
    difference = z[:, None, :] - means[None]
    euclidean = jnp.sqrt(jnp.sum(jnp.square(difference), axis=-1))
    scaled = difference / jnp.maximum(stds, MIN_STD)[None]
    mahalanobis = jnp.sqrt(jnp.sum(jnp.square(scaled), axis=-1))
    return euclidean, mahalanobis


def tag_distances(
    z: ArrayLike, tag_latents: latent.TagLatents, *, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Distances of latent vectors from every tag's mean.

    Euclidean `||z - mean_t||` and diagonal Mahalanobis
    `||(z - mean_t) / max(std_t, 1e-6)||`.

    Args:
      z: float `[n, d]` or `[d]`.
      tag_latents: the tags' latent statistics.
      batch_size: vectors per jitted chunk; by default as many as keep a
        chunk's `[batch, n_tags, latent_dim]` differences near 64 MiB.

    Returns:
      `{"euclidean": ..., "mahalanobis": ...}`, float32 `[n, n_tags]` (or
      `[n_tags]` for a 1-D `z`); NaN for tags without a mean.
    """
    z = np.asarray(z, np.float32)
    single = z.ndim == 1
    z = z[None] if single else z
    d = tag_latents.latent_dim
    if z.ndim != 2 or z.shape[1] != d:
        raise InputError(f"z has shape {z.shape}; expected [n, {d}] or [{d}]")
    if batch_size is None:
        batch_size = max(1, _DISTANCE_CHUNK_ELEMENTS // (tag_latents.n_tags * d))
    latent._check_batch_size(batch_size)
    means = jnp.asarray(tag_latents.means)
    stds = jnp.asarray(tag_latents.stds)
    out = {
        "euclidean": np.empty((len(z), tag_latents.n_tags), np.float32),
        "mahalanobis": np.empty((len(z), tag_latents.n_tags), np.float32),
    }
    for start, chunk, size in latent._chunks(len(z), batch_size):
        block = z[start : start + size]
        if len(block) < chunk:
            block = np.concatenate([block, np.zeros((chunk - size, d), np.float32)])
        euclidean, mahalanobis = _distances(jnp.asarray(block), means, stds)
        out["euclidean"][start : start + size] = np.asarray(euclidean[:size])
        out["mahalanobis"][start : start + size] = np.asarray(mahalanobis[:size])
    return {name: value[0] if single else value for name, value in out.items()}
