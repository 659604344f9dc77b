"""Synthetic listening data with a known tag structure.

The built-in data source: no network, any size, and the truth behind it is
known, so tests and notebooks can check that a model recovers it.
`generate` returns a `ListeningData`; `generate_with_truth` also returns
the hidden factors as a `SyntheticTruth`.

Generative story, in a latent space R^d (d = `latent_dim`):

1. **Tags.** Tags come in families of about three, like genres and their
   neighbours (which names share a family is random). Tag t has a centre
   c_t on the unit sphere, the normalised sum of sqrt(0.35) times its
   family's direction and sqrt(0.65) times its own direction, both spread
   apart by farthest-point sampling: tags of one family have cosines
   around 0.35, other tags around 0. Tags differ in size: their shares of
   the catalogue are one Dirichlet(2, ..., 2) draw.
2. **Songs.** Song s has one primary tag p_s (every tag gets a song when
   n_songs >= n_tags) and 0, 1 or 2 secondary tags (probabilities 0.4, 0.4,
   0.2; two equal draws count once) drawn near the primary: tag j with
   probability proportional to exp(cos(c_{p_s}, c_j) / 0.2). Its vector is

       v_s = (1 - a) c_{p_s} + a mean_j c_j + song_noise * e_s / sqrt(d),

   with a = `secondary_share` (a = 0 for songs without secondary tags) and
   e_s ~ N(0, I). Popularity is Zipf-like: songs get random ranks
   r_s = 1..n_songs and a log-popularity b_s = -popularity_exponent log r_s.
3. **Users.** User u likes 1, 2 or 3 tags (probabilities 0.35, 0.4, 0.25):
   a dominant tag drawn with the tag shares, the others near it as above.
   The weights w_u are a sorted Dirichlet(1, ..., 1) draw, the largest on
   the dominant tag, and the user's vector is

       x_u = sum_t w_ut c_t + user_noise * e_u / sqrt(d).

4. **Histories.** User u listens to k_u distinct songs, k_u a lognormal
   draw with median `median_songs` and shape `songs_sigma`, rounded and
   clipped to [min(min_songs, max_songs), max_songs] (`max_songs` defaults
   to n_songs // 2). The songs are drawn without replacement with
   probability proportional to exp(temperature * x_u . v_s + b_s).
5. **Play counts** are ceil(exp(N(1, 1.2^2))): integers >= 1, median 3,
   heavy-tailed, independent of the song.

Two samplers draw the histories. "exact" adds Gumbel noise to the
log-weights of every song and keeps each user's k_u largest, which is
exactly sampling without replacement (the Gumbel-top-k trick, Kool et al.,
"Stochastic Beams and Where to Find Them", ICML 2019); it costs
O(n_users * n_songs), in chunks of users of bounded memory. "candidates"
is for large catalogues. Songs with the same tags form a group g whose
songs share the noiseless part A_g of their vectors; each user draws
4 k_u + 64 candidates from a proposal q (a group with probability
proportional to exp(temperature x_u . A_g) times the group's total
popularity, then a song of the group by popularity), weights each distinct
candidate by its count times p/q = exp(temperature x_u . (v_s - A_g)) (which
only corrects for the songs' noise), and runs the Gumbel-top-k trick on
those. This approximates the same distribution (sampling-importance-
resampling) at a cost of O(n_users * n_groups + sum_u k_u); a user whose
candidates hold fewer than k_u distinct songs keeps fewer. "auto" picks
"exact" up to `EXACT_MAX_SONGS` songs.

Users are numbered `user_000000`, ..., songs `song_000000`, ..., and song
names read like "Jazz Artist 3 - Song 12" (the artist's genre is the song's
primary tag). Tag names are real genre names, then `tag_NN`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

from songrec_jax.data import ListeningData
from songrec_jax.errors import InputError
from songrec_jax.rng import numpy_rng

logger = logging.getLogger(__name__)

GENRES = tuple(
    "rock pop jazz blues electronic hip-hop metal folk classical country reggae "
    "soul punk ambient indie latin funk disco techno house grunge ska gospel "
    "trance dubstep opera swing grime shoegaze synthpop".split()
)
SAMPLERS = ("auto", "exact", "candidates")
EXACT_MAX_SONGS = 4096

_SECONDARY_TAG_PROBS = (0.4, 0.4, 0.2)
_USER_TAG_PROBS = (0.35, 0.4, 0.25)
_NEAR_TAG_TEMPERATURE = 0.2
_TAG_SHARE_CONCENTRATION = 2.0
_SONGS_PER_ARTIST = 8
_TAGS_PER_FAMILY = 3
_FAMILY_SHARE = 0.35  # squared weight of the family direction in a tag centre
_CHUNK_ELEMENTS = 1 << 21  # scores per chunk of users (exact sampler)
_CHUNK_DRAWS = 1 << 21  # candidate draws per chunk of users


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The hidden factors behind a synthetic data set.

    Attributes:
      tag_centres: float32 [n_tags, latent_dim], unit-norm tag centres.
      song_factors: float32 [n_songs, latent_dim], song vectors v_s.
      song_primary_tag: int32 [n_songs], each song's primary tag.
      song_log_popularity: float32 [n_songs], b_s = -exponent * log(rank).
      user_factors: float32 [n_users, latent_dim], user vectors x_u.
      user_tag_weights: float32 [n_users, n_tags], each user's taste; rows
        sum to 1 and have 1 to 3 non-zero entries (dense, so mind its size
        for millions of users and thousands of tags).
      user_dominant_tag: int32 [n_users], the tag of largest weight.
    """

    tag_centres: np.ndarray
    song_factors: np.ndarray
    song_primary_tag: np.ndarray
    song_log_popularity: np.ndarray
    user_factors: np.ndarray
    user_tag_weights: np.ndarray
    user_dominant_tag: np.ndarray


def generate(
    n_users: int = 2000,
    n_songs: int = 1000,
    n_tags: int = 12,
    *,
    key,
    latent_dim: int = 8,
    temperature: float = 6.0,
    popularity_exponent: float = 1.0,
    song_noise: float = 0.35,
    user_noise: float = 0.25,
    secondary_share: float = 0.25,
    median_songs: float = 30.0,
    songs_sigma: float = 0.9,
    min_songs: int = 5,
    max_songs: int | None = None,
    sampler: str = "auto",
) -> ListeningData:
    """Synthetic listening histories and song tags; see the module docstring.

    Args:
      n_users: number of users (each listens to at least one song).
      n_songs: number of songs, kept exactly (songs nobody drew stay).
      n_tags: number of tags; every song carries 1 to 3 of them.
      key: JAX PRNG key or integer seed; the same key gives the same data.
      latent_dim: dimension d of the latent space, >= 2.
      temperature: how strongly taste drives choices (0: popularity only).
      popularity_exponent: Zipf exponent of song popularity (0: uniform).
      song_noise: spread of songs around their tag centres.
      user_noise: spread of users around their tag mixtures.
      secondary_share: weight a of the secondary tags in a song's vector.
      median_songs: median number of distinct songs per user.
      songs_sigma: lognormal shape of the number of songs per user.
      min_songs: fewest songs per user (capped by `max_songs`).
      max_songs: most songs per user; default n_songs // 2.
      sampler: "exact", "candidates" or "auto" (see the module docstring).

    Returns:
      `ListeningData` with exactly `n_users` users, `n_songs` songs and
      `n_tags` tags; play counts are whole numbers >= 1.

    Raises:
      InputError: an argument is out of range; the message names it.
    """
    data, _ = generate_with_truth(
        n_users,
        n_songs,
        n_tags,
        key=key,
        latent_dim=latent_dim,
        temperature=temperature,
        popularity_exponent=popularity_exponent,
        song_noise=song_noise,
        user_noise=user_noise,
        secondary_share=secondary_share,
        median_songs=median_songs,
        songs_sigma=songs_sigma,
        min_songs=min_songs,
        max_songs=max_songs,
        sampler=sampler,
    )
    return data


def generate_with_truth(
    n_users: int = 2000,
    n_songs: int = 1000,
    n_tags: int = 12,
    *,
    key,
    latent_dim: int = 8,
    temperature: float = 6.0,
    popularity_exponent: float = 1.0,
    song_noise: float = 0.35,
    user_noise: float = 0.25,
    secondary_share: float = 0.25,
    median_songs: float = 30.0,
    songs_sigma: float = 0.9,
    min_songs: int = 5,
    max_songs: int | None = None,
    sampler: str = "auto",
) -> tuple[ListeningData, SyntheticTruth]:
    """Like `generate`, and also returns the hidden factors.

    Returns:
      (data, truth): the `ListeningData` of `generate` (the same for the
      same arguments) and its `SyntheticTruth`.
    """
    _check_int("n_users", n_users, 1)
    _check_int("n_songs", n_songs, 2)
    _check_int("n_tags", n_tags, 1)
    _check_int("latent_dim", latent_dim, 2)
    _check_int("min_songs", min_songs, 1)
    if max_songs is None:
        max_songs = n_songs // 2
    _check_int("max_songs", max_songs, 1)
    if max_songs > n_songs:
        raise InputError(f"max_songs={max_songs} must be <= n_songs={n_songs}")
    for name, value in (
        ("temperature", temperature),
        ("popularity_exponent", popularity_exponent),
        ("song_noise", song_noise),
        ("user_noise", user_noise),
        ("songs_sigma", songs_sigma),
    ):
        _check_float(name, value, low=0.0)
    _check_float("median_songs", median_songs, low=0.0, strict=True)
    _check_float("secondary_share", secondary_share, low=0.0, high=1.0)
    if sampler not in SAMPLERS:
        raise InputError(f"sampler={sampler!r} is not one of {list(SAMPLERS)}")
    if sampler == "auto":
        sampler = "exact" if n_songs <= EXACT_MAX_SONGS else "candidates"

    started = time.perf_counter()
    tag_rng, song_rng, user_rng, listen_rng = numpy_rng(key).spawn(4)
    centres = _tag_centres(tag_rng, n_tags, latent_dim)
    tag_shares = tag_rng.dirichlet(np.full(n_tags, _TAG_SHARE_CONCENTRATION))
    near_cdf = _near_tag_cdf(centres)

    primary, secondary = _song_tags(song_rng, n_songs, tag_shares, near_cdf)
    anchors = _song_anchors(centres, primary, secondary, secondary_share)
    noise = song_rng.standard_normal((n_songs, latent_dim), dtype=np.float32)
    song_factors = anchors + song_noise / math.sqrt(latent_dim) * noise
    ranks = song_rng.permutation(n_songs) + 1
    log_popularity = (-popularity_exponent * np.log(ranks)).astype(np.float32)

    user_tags, user_weights = _user_tags(user_rng, n_users, tag_shares, near_cdf)
    noise = user_rng.standard_normal((n_users, latent_dim), dtype=np.float32)
    user_factors = np.einsum("uk,ukd->ud", user_weights, centres[user_tags])
    user_factors += user_noise / math.sqrt(latent_dim) * noise
    lengths = np.rint(user_rng.lognormal(math.log(median_songs), songs_sigma, n_users))
    lengths = np.clip(lengths, min(min_songs, max_songs), max_songs).astype(np.int64)

    if sampler == "exact":
        rows, songs = _sample_exact(
            listen_rng,
            user_factors,
            song_factors,
            log_popularity,
            lengths,
            temperature,
        )
    else:
        rows, songs = _sample_candidates(
            listen_rng,
            user_factors,
            song_factors,
            anchors,
            _song_groups(primary, secondary),
            log_popularity,
            lengths,
            temperature,
        )
    counts = np.ceil(np.exp(listen_rng.normal(1.0, 1.2, len(songs))))

    tag_names = _tag_names(n_tags)
    data = ListeningData(
        indptr=np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_users))]),
        indices=songs.astype(np.int32),
        counts=np.maximum(counts, 1.0).astype(np.float32),
        tag_indptr=np.concatenate([[0], np.cumsum(1 + (secondary >= 0).sum(1))]),
        tag_indices=_song_tag_indices(primary, secondary),
        user_ids=_ids("user", n_users),
        song_ids=_ids("song", n_songs),
        song_names=_song_names(primary, tag_names),
        tag_names=tag_names,
    )
    logger.info(
        "generated %d users x %d songs (%d listens, %d tags, %s sampler) in %.2f s",
        n_users,
        n_songs,
        data.n_listens,
        n_tags,
        sampler,
        time.perf_counter() - started,
    )
    weights = np.zeros((n_users, n_tags), np.float32)
    np.add.at(weights, (np.arange(n_users)[:, None], user_tags), user_weights)
    truth = SyntheticTruth(
        tag_centres=centres,
        song_factors=song_factors,
        song_primary_tag=primary.astype(np.int32),
        song_log_popularity=log_popularity,
        user_factors=user_factors.astype(np.float32),
        user_tag_weights=weights,
        user_dominant_tag=user_tags[:, 0].astype(np.int32),
    )
    return data, truth


# Validation -----------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_float(
    name: str, value, *, low: float, high: float | None = None, strict: bool = False
) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    ok = ok and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if strict else '>='} {low}"
        bound += "" if high is None else f" and <= {high}"
        raise InputError(f"{name}={value!r} must be a finite number {bound}")


# Tags and songs ---------------------------------------------------------------


def _tag_centres(rng: np.random.Generator, n_tags: int, dim: int) -> np.ndarray:
    """float32 [n_tags, dim] unit vectors: spread-out tags in families of ~3.

    c_t is sqrt(r) f + sqrt(1 - r) e_t normalised, with f the direction of
    the tag's family, e_t the tag's own direction (both spread apart by
    farthest-point sampling) and r the family share.
    """
    n_families = max(1, round(n_tags / _TAGS_PER_FAMILY))
    family = _spread_directions(rng, n_families, dim)[
        rng.permutation(n_tags) % n_families
    ]
    own = _spread_directions(rng, n_tags, dim)
    centres = math.sqrt(_FAMILY_SHARE) * family + math.sqrt(1 - _FAMILY_SHARE) * own
    return (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)


def _spread_directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """float64 [n, dim] unit vectors, spread apart by farthest-point sampling."""
    candidates = rng.standard_normal((max(256, 8 * n), dim))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    chosen = [0]
    nearest = candidates @ candidates[0]  # largest cosine to a chosen direction
    for _ in range(n - 1):
        nearest[chosen[-1]] = np.inf
        chosen.append(int(np.argmin(nearest)))
        nearest = np.maximum(nearest, candidates @ candidates[chosen[-1]])
    return candidates[chosen]


def _near_tag_cdf(centres: np.ndarray) -> np.ndarray:
    """float64 [n_tags, n_tags]: row t is the CDF of a tag drawn near tag t."""
    if len(centres) == 1:
        return np.ones((1, 1))  # no other tag: callers draw none
    logits = (centres @ centres.T).astype(np.float64) / _NEAR_TAG_TEMPERATURE
    np.fill_diagonal(logits, -np.inf)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    return cdf


def _draw_rows(rng: np.random.Generator, cdf: np.ndarray, rows: np.ndarray):
    """One draw per entry of `rows` from the categorical CDF `cdf[row]`."""
    n_cols = cdf.shape[1]
    flat = (cdf + np.arange(len(cdf))[:, None]).ravel()
    pos = np.searchsorted(flat, rows + rng.random(len(rows)), side="right")
    return np.minimum(pos - rows * n_cols, n_cols - 1)


def _near_tags(rng, near_cdf, tags: np.ndarray, n_draws: int) -> np.ndarray:
    """int64 [len(tags), n_draws]: tags drawn near each given tag (not itself)."""
    if len(near_cdf) == 1:
        return np.full((len(tags), n_draws), -1)
    rows = np.repeat(tags, n_draws)
    return _draw_rows(rng, near_cdf, rows).reshape(len(tags), n_draws)


def _song_tags(rng, n_songs: int, tag_shares: np.ndarray, near_cdf: np.ndarray):
    """Primary tag int64 [n_songs] and secondary tags int64 [n_songs, 2] (-1: none)."""
    n_tags = len(tag_shares)
    n_cover = min(n_tags, n_songs)
    primary = np.concatenate(
        [
            rng.permutation(n_tags)[:n_cover],
            rng.choice(n_tags, n_songs - n_cover, p=tag_shares),
        ]
    )
    rng.shuffle(primary)
    secondary = _near_tags(rng, near_cdf, primary, 2)
    n_secondary = rng.choice(3, n_songs, p=_SECONDARY_TAG_PROBS)
    secondary[n_secondary < 1, 0] = -1
    secondary[(n_secondary < 2) | (secondary[:, 1] == secondary[:, 0]), 1] = -1
    return primary, secondary


def _song_anchors(centres, primary, secondary, share: float) -> np.ndarray:
    """float32 [n_songs, dim]: the noiseless part of each song's vector."""
    has = secondary >= 0
    n_secondary = has.sum(axis=1, keepdims=True)
    secondary_sum = (centres[np.maximum(secondary, 0)] * has[..., None]).sum(axis=1)
    secondary_mean = secondary_sum / np.maximum(n_secondary, 1)
    a = np.where(n_secondary > 0, share, 0.0).astype(np.float32)
    return ((1 - a) * centres[primary] + a * secondary_mean).astype(np.float32)


def _song_groups(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """int64 [n_songs]: songs with the same tags (hence anchor) share a group."""
    n_tags = int(max(primary.max(), secondary.max())) + 2
    secondary = np.sort(secondary, axis=1) + 1
    combination = (primary * n_tags + secondary[:, 0]) * n_tags + secondary[:, 1]
    return np.unique(combination, return_inverse=True)[1].ravel()


def _song_tag_indices(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """int32 [n_song_tags]: each song's distinct tags, sorted, song by song."""
    tags = np.concatenate([primary[:, None], secondary], axis=1)
    missing = np.iinfo(np.int64).max  # sorts after every tag
    tags = np.sort(np.where(tags >= 0, tags, missing), axis=1)
    return tags[tags != missing].astype(np.int32)


def _user_tags(rng, n_users: int, tag_shares: np.ndarray, near_cdf: np.ndarray):
    """Tags int64 [n_users, 3] (dominant first) and float32 weights [n_users, 3].

    Unused slots repeat the dominant tag with weight 0.
    """
    n_tags = len(tag_shares)
    dominant = rng.choice(n_tags, n_users, p=tag_shares)
    tags = np.concatenate(
        [dominant[:, None], _near_tags(rng, near_cdf, dominant, 2)], axis=1
    )
    n_liked = rng.choice(3, n_users, p=_USER_TAG_PROBS) + 1
    valid = np.arange(3) < np.minimum(n_liked, n_tags)[:, None]
    valid[:, 2] &= tags[:, 2] != tags[:, 1]
    tags = np.where(valid, tags, dominant[:, None])
    raw = np.where(valid, rng.standard_exponential((n_users, 3)), 0.0)  # Dirichlet(1)
    raw = -np.sort(-raw, axis=1)  # valid slots form a prefix; largest first
    weights = raw / raw.sum(axis=1, keepdims=True)
    return tags, weights.astype(np.float32)


# Histories ------------------------------------------------------------------


def _gumbel(rng: np.random.Generator, shape) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -np.log(rng.standard_exponential(shape, dtype=np.float32))


def _chunks(costs: np.ndarray, budget: int):
    """Consecutive (start, stop) ranges of users whose costs sum to <= budget.

    A single user over budget forms a chunk of its own.
    """
    total = np.concatenate([[0], np.cumsum(costs)])
    start = 0
    while start < len(costs):
        stop = int(np.searchsorted(total, total[start] + budget, side="right")) - 1
        stop = max(stop, start + 1)
        yield start, stop
        start = stop


def _sample_exact(
    rng, user_factors, song_factors, log_popularity, lengths, temperature: float
):
    """Gumbel-top-k over all songs; returns (user rows, songs) sorted by both."""
    n_users, n_songs = len(user_factors), len(song_factors)
    all_rows, all_songs = [], []
    for start, stop in _chunks(np.full(n_users, n_songs), _CHUNK_ELEMENTS):
        x, k = user_factors[start:stop], lengths[start:stop]
        scores = (temperature * x) @ song_factors.T + log_popularity
        scores += _gumbel(rng, scores.shape)
        top = np.argpartition(-scores, int(k.max()) - 1, axis=1)[:, : k.max()]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(top.shape[1]) < k[:, None]
        top = np.sort(np.where(keep, top, n_songs), axis=1)
        all_rows.append(np.repeat(np.arange(start, stop), k))
        all_songs.append(top[keep])
    return np.concatenate(all_rows), np.concatenate(all_songs)


def _sample_candidates(
    rng,
    user_factors,
    song_factors,
    song_anchors,
    song_group,
    log_popularity,
    lengths,
    temperature: float,
):
    """Gumbel-top-k over importance-weighted candidates (see module docstring).

    Songs with the same tags share an anchor A_g (their noiseless vector).
    The proposal q draws a group with probability proportional to
    exp(temperature x . A_g) Z_g, Z_g the group's total popularity, then a
    song of the group by popularity; so p/q = exp(temperature x . (v_s - A_g))
    only corrects for the songs' noise.
    """
    n_songs, n_groups = len(song_factors), int(song_group.max()) + 1
    by_group = np.argsort(song_group, kind="stable")
    group_of = song_group[by_group]
    log_popularity = log_popularity.astype(np.float64) - log_popularity.max()
    popularity = np.exp(np.maximum(log_popularity, -700.0))  # no zero masses
    group_mass = np.bincount(song_group, weights=popularity, minlength=n_groups)
    mass_before = np.concatenate([[0.0], np.cumsum(group_mass)])[group_of]
    within = (np.cumsum(popularity[by_group]) - mass_before) / group_mass[group_of]
    within[np.flatnonzero(np.diff(group_of, append=n_groups))] = 1.0  # group ends
    song_cdf = group_of + within
    anchors = np.zeros((n_groups, song_anchors.shape[1]), np.float32)
    anchors[song_group] = song_anchors
    noise = song_factors - song_anchors

    n_draws = 4 * lengths + 64
    all_rows, all_songs = [], []
    for start, stop in _chunks(n_draws + n_groups, _CHUNK_DRAWS):
        x = user_factors[start:stop]
        logits = (temperature * x) @ anchors.T + np.log(group_mass)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        group_cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
        group_cdf[:, -1] = 1.0
        rows = np.repeat(np.arange(stop - start), n_draws[start:stop])
        groups = _draw_rows(rng, group_cdf, rows)
        pos = np.searchsorted(song_cdf, groups + rng.random(len(rows)), side="right")
        songs = by_group[np.minimum(pos, n_songs - 1)]

        pairs, count = np.unique(rows * n_songs + songs, return_counts=True)
        pair_rows, pair_songs = pairs // n_songs, pairs % n_songs
        log_weight = np.einsum("nd,nd->n", x[pair_rows], noise[pair_songs])
        scores = temperature * log_weight + np.log(count) + _gumbel(rng, len(pairs))
        order = np.lexsort((-scores, pair_rows))
        row_start = np.searchsorted(pair_rows, np.arange(stop - start))
        rank = np.empty(len(pairs), np.int64)
        rank[order] = np.arange(len(pairs)) - row_start[pair_rows[order]]
        keep = rank < lengths[start:stop][pair_rows]
        all_rows.append(pair_rows[keep] + start)
        all_songs.append(pair_songs[keep])
    return np.concatenate(all_rows), np.concatenate(all_songs)


# Names ------------------------------------------------------------------------


def _tag_names(n_tags: int) -> np.ndarray:
    names = list(GENRES[:n_tags])
    names += [f"tag_{i:02d}" for i in range(len(names), n_tags)]
    return np.array(names)


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(6, len(str(n - 1)))
    return np.array([f"{prefix}_{i:0{width}d}" for i in range(n)])


def _song_names(primary: np.ndarray, tag_names: np.ndarray) -> np.ndarray:
    """Names like "Jazz Artist 3 - Song 12": artists hold songs of one tag."""
    n_songs, n_tags = len(primary), len(tag_names)
    by_tag = np.argsort(primary, kind="stable")
    tag_sizes = np.bincount(primary, minlength=n_tags)
    position = np.empty(n_songs, np.int64)
    position[by_tag] = np.arange(n_songs) - np.repeat(
        np.cumsum(tag_sizes) - tag_sizes, tag_sizes
    )
    artists_per_tag = -(-tag_sizes // _SONGS_PER_ARTIST)
    artist = (np.cumsum(artists_per_tag) - artists_per_tag)[primary]
    artist += position // _SONGS_PER_ARTIST
    genre = [str(t).title() for t in tag_names]
    return np.array(
        [
            f"{genre[t]} Artist {a} - Song {s}"
            for s, (t, a) in enumerate(
                zip(primary.tolist(), artist.tolist(), strict=True)
            )
        ]
    )
