"""Offline evaluation: ranking quality tables and the tag-steering study.

**Ranking quality.** `evaluate` splits each held-out user's history into
the songs a recommender sees and the songs it should find, scores every
song with each *scorer* (`baselines.Scorer`), removes the seen songs, and
compares the ranking with the held-out songs:

* NDCG@100, Recall@20, Recall@50 and MAP@100 by default (binary
  relevance; see `songrec_jax.metrics` for the definitions), each as
  mean ± standard error over the users with at least one held-out song.

Two protocols choose the seen and held-out songs:

* "input_target" (`splits.input_target_split`): users with at least 2
  songs; a random 80% of the history (at most `input_len` songs, at least
  one) is seen and the rest is held out;
* "strong" (strong generalisation, Liang et al. 2018;
  `splits.fold_in_split`): users with at least 5 songs; a random 80% is
  folded in (the input, at most `input_len` of them) and 20% is held out.
  When a user folds in more than `input_len` songs, the ones left out of
  the input are neither masked nor held out.

**Steering.** `steering_study` measures how recommendations steered
towards each user's dominant tag trade the held-out songs for songs of
that tag, for each steering method and strength `alpha`; see its
docstring.

References:
  D. Liang, R. G. Krishnan, M. D. Hoffman, T. Jebara. "Variational
  Autoencoders for Collaborative Filtering." WWW 2018.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from songrec_jax import baselines, latent, metrics, models, recommend, splits, training
from songrec_jax.config import Config, ModelConfig
from songrec_jax.data import ListeningData
from songrec_jax.errors import DataFormatError, InputError, ResourceError
from songrec_jax.rng import numpy_rng

log = logging.getLogger(__name__)

PROTOCOLS = ("input_target", "strong")
DEFAULT_METRICS = ("NDCG@100", "Recall@20", "Recall@50", "MAP@100")
METRIC_FUNCTIONS = {
    "NDCG": metrics.ndcg_at_k,
    "Recall": metrics.recall_at_k,
    "MAP": metrics.average_precision_at_k,
    "Precision": metrics.precision_at_k,
}
FOLD_IN_FRACTION = 0.8
MIN_ITEMS = 5
BATCH_SIZE = 1024


def parse_metric(name: str) -> tuple[str, int]:
    """Splits a metric name such as "NDCG@100" into ("NDCG", 100).

    Raises:
      InputError: the name is not `<NDCG|Recall|MAP|Precision>@<k >= 1>`.
    """
    match = re.fullmatch(r"(\w+)@(\d+)", name) if isinstance(name, str) else None
    if match is None or match[1] not in METRIC_FUNCTIONS or int(match[2]) < 1:
        raise InputError(
            f"metric {name!r} is not understood; accepted: "
            f"{'|'.join(METRIC_FUNCTIONS)}@k with k >= 1, e.g. 'NDCG@100'"
        )
    return match[1], int(match[2])


# ----------------------------------------------------------------------------
# Tables.


@dataclasses.dataclass
class EvaluationTable:
    """Mean ± standard error of each metric for each model.

    Attributes:
      rows: model name -> metric name -> `metrics.MeanStderr` (the count `n`
        is the number of users with at least one held-out song).
      metrics: the metric names, in column order.
      protocol: "input_target" or "strong" (or another description).
      n_users: number of users in the split (including any with nothing
        held out).
      values: model name -> metric name -> float64 `[n_users]` per-user
        values, NaN where a user had nothing held out; not serialised.
    """

    rows: dict[str, dict[str, metrics.MeanStderr]]
    metrics: tuple[str, ...]
    protocol: str = ""
    n_users: int = 0
    values: dict[str, dict[str, np.ndarray]] = dataclasses.field(
        default_factory=dict, repr=False
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: `{"protocol", "n_users", "metrics", "rows"}`."""
        rows = {
            model: {
                name: {
                    "mean": _float(v.mean),
                    "stderr": _float(v.stderr),
                    "n": int(v.n),
                }
                for name, v in row.items()
            }
            for model, row in self.rows.items()
        }
        return {
            "protocol": self.protocol,
            "n_users": self.n_users,
            "metrics": list(self.metrics),
            "rows": rows,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationTable:
        """The inverse of `to_dict` (per-user values are not restored)."""
        try:
            rows = {
                model: {
                    name: metrics.MeanStderr(
                        _nan(v["mean"]), _nan(v["stderr"]), int(v["n"])
                    )
                    for name, v in row.items()
                }
                for model, row in d["rows"].items()
            }
            return cls(
                rows,
                tuple(d["metrics"]),
                d.get("protocol", ""),
                int(d.get("n_users", 0)),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(
                f"not an evaluation table: {str(d)[:80]!r} ({e})"
            ) from None

    def format(self, digits: int = 3) -> str:
        """An aligned text table, one row per model: "0.312 ± 0.004"."""
        header = ["model", *self.metrics]
        lines = [header]
        for model, row in self.rows.items():
            cells = [model]
            for name in self.metrics:
                v = row.get(name)
                cells.append(
                    "-" if v is None else f"{v.mean:.{digits}f} ± {v.stderr:.{digits}f}"
                )
            lines.append(cells)
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [
            " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
            for line in lines
        ]
        text.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in text)

    def merge(self, other: EvaluationTable) -> EvaluationTable:
        """Rows of both tables (same metrics); `other`'s win on a name clash."""
        if tuple(other.metrics) != tuple(self.metrics):
            raise InputError(
                f"cannot merge tables of metrics {list(self.metrics)} and "
                f"{list(other.metrics)}"
            )
        return EvaluationTable(
            {**self.rows, **other.rows},
            self.metrics,
            self.protocol,
            self.n_users,
            {**self.values, **other.values},
        )


def _float(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


# ----------------------------------------------------------------------------
# Ranking quality.


def make_split(
    data: ListeningData,
    users: Sequence[int] | np.ndarray,
    *,
    protocol: str,
    input_len: int,
    key,
) -> splits.UserSplit:
    """The seen / held-out songs of `users` under a protocol (module docstring).

    Args:
      data: the listening data.
      users: distinct user rows of `data`.
      protocol: "input_target" or "strong".
      input_len: length of the padded inputs.
      key: JAX PRNG key or integer seed.

    Returns:
      The split; users with too few songs for the protocol are left out.
    """
    if protocol == "input_target":
        return splits.input_target_split(data, users, input_len, key=key)
    if protocol == "strong":
        return splits.fold_in_split(
            data,
            users,
            input_len,
            key=key,
            fold_in_fraction=FOLD_IN_FRACTION,
            min_items=MIN_ITEMS,
        )
    raise InputError(f"protocol={protocol!r} is not one of {list(PROTOCOLS)}")


def evaluate_split(
    scorers: Mapping[str, baselines.Scorer],
    split: splits.UserSplit,
    *,
    n_songs: int | None = None,
    metric_names: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = BATCH_SIZE,
    protocol: str = "",
) -> EvaluationTable:
    """Ranking metrics of each scorer on a split's users.

    For each chunk of users: scores from the scorer, the input (seen)
    songs excluded, the top `max k` songs ranked (`metrics.top_k`), and
    each metric computed against the held-out songs. A cut-off `k` beyond
    the number of songs is capped at it (every song is ranked).

    Args:
      scorers: model name -> scorer.
      split: the users' inputs and held-out songs.
      n_songs: number of songs; default: the width of the first scores.
      metric_names: metric names such as "NDCG@100" (see `parse_metric`).
      batch_size: users scored at a time.
      protocol: stored in the table.

    Returns:
      The table, one row per scorer, in the order given.
    """
    parsed = [parse_metric(name) for name in metric_names]
    if not scorers:
        raise InputError("scorers={} must name at least one scorer")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be an integer >= 1")
    n = split.n_users
    rows, values = {}, {}
    for model, scorer in scorers.items():
        per_user = {name: np.full(n, np.nan) for name in metric_names}
        size = min(batch_size, max(n, 1))
        for start in range(0, n, size):
            stop = min(start + size, n)
            inputs = np.full((size, split.input_len), splits.PAD, np.int32)
            inputs[: stop - start] = split.inputs[start:stop]
            scores = jnp.asarray(scorer(inputs), jnp.float32)
            if n_songs is None:
                n_songs = scores.shape[1]
            if scores.shape != (size, n_songs):
                raise InputError(
                    f"scorer {model!r} returned scores of shape {tuple(scores.shape)}"
                    f"; expected [n_users, n_songs]=({size}, {n_songs})"
                )
            heldout = np.zeros((size, n_songs), bool)
            heldout[: stop - start] = (
                split.targets_dense(np.arange(start, stop), n_songs) > 0
            )
            chunk_values = _chunk_metrics(
                scores, jnp.asarray(inputs), heldout, tuple(parsed)
            )
            for name, value in zip(metric_names, chunk_values, strict=True):
                per_user[name][start:stop] = np.asarray(value)[: stop - start]
        values[model] = per_user
        rows[model] = {name: metrics.mean_and_stderr(v) for name, v in per_user.items()}
    return EvaluationTable(rows, tuple(metric_names), protocol, n, values)


@functools.partial(jax.jit, static_argnames="parsed")
def _chunk_metrics(scores, inputs, heldout, parsed):
    """Per-user values of each parsed metric, seen songs excluded (one compile)."""
    n_songs = scores.shape[1]
    top, _ = metrics.top_k(
        scores,
        min(max(k for _, k in parsed), n_songs),
        exclude=training.input_mask(inputs, n_songs),
    )
    return tuple(
        METRIC_FUNCTIONS[kind](top[:, : min(k, n_songs)], heldout) for kind, k in parsed
    )


def evaluate(
    scorers: Mapping[str, baselines.Scorer],
    data: ListeningData,
    users: Sequence[int] | np.ndarray,
    *,
    protocol: str = "input_target",
    input_len: int,
    key,
    metric_names: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = BATCH_SIZE,
) -> EvaluationTable:
    """Ranking quality of each scorer on held-out users (module docstring).

    Args:
      scorers: model name -> scorer, each built without these users.
      data: the listening data (all users).
      users: the held-out users to evaluate (rows of `data`).
      protocol: "input_target" or "strong".
      input_len: length of the padded inputs given to the scorers.
      key: JAX PRNG key or integer seed for the split of each history.
      metric_names: metric names such as "NDCG@100" (see `parse_metric`).
      batch_size: users scored at a time.

    Returns:
      The table of mean ± standard error per scorer and metric.
    """
    split = make_split(data, users, protocol=protocol, input_len=input_len, key=key)
    log.info(
        "%s protocol: %d of %d users evaluated", protocol, split.n_users, len(users)
    )
    return evaluate_split(
        scorers,
        split,
        n_songs=data.n_songs,
        metric_names=metric_names,
        batch_size=batch_size,
        protocol=protocol,
    )


def baseline_scorers(
    train_data: ListeningData,
    *,
    ease: bool = True,
    ease_l2: float = 500.0,
    max_memory_gb: float | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict[str, baselines.Scorer]:
    """Popularity and (when it fits in memory) EASE, built from `train_data`.

    EASE is skipped, with the reason logged, when it would not fit
    (`ResourceError`) or when `ease` is False.
    """
    scorers = {
        "popularity": baselines.popularity_scorer(train_data, batch_size=batch_size)
    }
    if ease:
        try:
            scorers["ease"] = baselines.ease_scorer(
                train_data,
                l2=ease_l2,
                max_memory_gb=max_memory_gb,
                batch_size=batch_size,
            )
        except ResourceError as e:
            log.warning("EASE skipped: %s", e)
    return scorers


def evaluate_model(
    params: models.Params,
    config: Config | ModelConfig,
    data: ListeningData,
    splits_or_test_users: training.Splits | Sequence[int] | np.ndarray,
    *,
    key,
    protocol: str = "strong",
    name: str | None = None,
    train_users: Sequence[int] | np.ndarray | None = None,
    ease: bool = True,
    ease_l2: float = 500.0,
    max_memory_gb: float | None = None,
    metric_names: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = BATCH_SIZE,
) -> EvaluationTable:
    """A trained model next to popularity and EASE on the test users.

    Args:
      params: the model parameters.
      config: the model's config.
      data: the listening data (all users).
      splits_or_test_users: the `training.Splits` of the run (its test
        users are evaluated, its training users build the baselines), or
        the test users themselves.
      key: JAX PRNG key or integer seed for the split of each history.
      protocol: "strong" or "input_target".
      name: the model's row name; default its kind ("vae" or "mlp").
      train_users: users the baselines learn from when test users are
        given; default every other user.
      ease: include EASE (skipped, logged, when it does not fit).
      ease_l2: EASE's L2 weight.
      max_memory_gb: memory EASE may use, in GiB; default what is free.
      metric_names: metric names such as "NDCG@100".
      batch_size: users scored at a time.

    Returns:
      The table: the model's row first, then "popularity" and "ease".
    """
    model_config = models.model_config(config)
    if isinstance(splits_or_test_users, training.Splits):
        test_users = splits_or_test_users.test_users
        train_users = splits_or_test_users.train_users
    else:
        test_users = np.asarray(splits_or_test_users, np.int64)
        if train_users is None:
            train_users = np.setdiff1d(np.arange(data.n_users), test_users)
    scorers = {
        name or model_config.kind: baselines.model_scorer(
            params, model_config, batch_size=batch_size
        )
    }
    scorers.update(
        baseline_scorers(
            data.subset_users(train_users),
            ease=ease,
            ease_l2=ease_l2,
            max_memory_gb=max_memory_gb,
            batch_size=batch_size,
        )
    )
    return evaluate(
        scorers,
        data,
        test_users,
        protocol=protocol,
        input_len=model_config.input_len,
        key=key,
        metric_names=metric_names,
        batch_size=batch_size,
    )


# ----------------------------------------------------------------------------
# Steering.

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
DEFAULT_RELI = 0.5
STEERING_TARGETS = ("dominant", "random")
STEERING_METRICS = (
    "graded_ndcg",
    "ndcg",
    "heldout_count",
    "tag_count",
    "other_count",
    "tag_share",
    "euclidean",
    "mahalanobis",
)
"""Per-user measurements of the steering study (see `steering_study`)."""


def _pad_to(x: np.ndarray, rows: int, fill) -> np.ndarray:
    """`x` with rows of `fill` appended up to `rows` rows."""
    if len(x) == rows:
        return x
    return np.concatenate([x, np.full((rows - len(x), *x.shape[1:]), fill, x.dtype)])


@jax.jit
def _steering_measures(top, heldout, tag_songs, seen, reli, z, mean, std):
    """Measures of steered top-k lists `[B, k]` (-1: empty slot) and of the
    latent vectors `z [B, d]` they were decoded from."""
    n_songs = heldout.shape[1]
    pad = ((0, 0), (0, 1))  # an always-irrelevant column for the empty slots
    top = jnp.where(top >= 0, top, n_songs)
    heldout = jnp.pad(heldout, pad)
    tag_songs = jnp.pad(jnp.broadcast_to(tag_songs, seen.shape), pad)
    seen = jnp.pad(seen, pad, constant_values=True)
    graded = metrics.graded_relevance(heldout, tag_songs, reli)
    graded = jnp.where(seen, 0.0, graded)  # seen songs can never be recommended
    filled = jnp.sum(top < n_songs, axis=1)
    tag_count = metrics.count_in_top_k(top, tag_songs)
    heldout_count = metrics.count_in_top_k(top, heldout)
    either = metrics.count_in_top_k(top, heldout | tag_songs)
    return {
        "graded_ndcg": metrics.ndcg_at_k(top, graded),
        "ndcg": metrics.ndcg_at_k(top, heldout),
        "heldout_count": heldout_count.astype(jnp.float32),
        "tag_count": tag_count.astype(jnp.float32),
        "other_count": (filled - either).astype(jnp.float32),
        "tag_share": tag_count.astype(jnp.float32) / top.shape[1],
        "euclidean": metrics.latent_distance(z, mean),
        "mahalanobis": metrics.latent_distance(z, mean, std),
    }


def steering_study(
    params: models.Params,
    config: Config | ModelConfig,
    data: ListeningData,
    split: splits.UserSplit,
    tag_latents: latent.TagLatents,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    methods: Sequence[str] = ("postfilter", "latent", "both"),
    k: int = 100,
    reli: float = DEFAULT_RELI,
    min_users: int = 10,
    factor: float = 1.0,
    batch_size: int = BATCH_SIZE,
    target: str = "dominant",
    key=None,
) -> dict[str, Any]:
    """How steering each user towards a tag changes the top k.

    Each user of `split` is steered towards a tag `t` with
    `recommend.recommend(..., tags={t: 1.0}, alpha=alpha, method=method)`,
    for every method and alpha. With `target="dominant"`, `t` is the
    user's *dominant tag* (the most frequent tag of their input songs,
    `latent.dominant_tags_of_split`): more of what they already like. With
    `target="random"`, `t` is drawn uniformly, with `key`, from the other
    tags that have a latent mean: a taste the user does not show, whose
    share of the top k starts low. Users are grouped by `t` (the "class")
    and each group is recommended for in one vectorised call. Per user:

    * "graded_ndcg": NDCG@k with relevance 1 for the held-out songs and
      `reli` for the other songs of `t` that the user has not seen
      (`metrics.graded_relevance`); `reli = 0.5` by default: a new song of
      the requested tag is worth half a song the user really listened to;
    * "ndcg": NDCG@k of the held-out songs alone (binary relevance);
    * "heldout_count", "tag_count", "other_count": songs of the top k that
      are held out, that carry `t`, and that are neither;
    * "tag_share": `tag_count / k`;
    * "euclidean", "mahalanobis": the distance of the decoded latent vector
      (steered for "latent" and "both", the user's own for "postfilter")
      from `t`'s latent mean, plain and scaled by `t`'s latent standard
      deviations (`metrics.latent_distance`).

    Users whose input has no tagged song, or whose dominant tag has no
    latent mean, are left out of the study (counted in `skipped_users`).
    Every other user counts in the "average" over users; a class (a
    dominant tag) with fewer than `min_users` users gets no "per_class"
    entry (counted in `skipped_classes`).

    Args:
      params: the model parameters.
      config: the model's config (a full `Config` lets `recommend` read
        the loss, which decides softmax or sigmoid scores).
      data: the listening data (song tags).
      split: the evaluated users' inputs and held-out songs, e.g.
        `make_split(data, test_users, protocol="strong", ...)`.
      tag_latents: the tags' latent statistics (`latent.TagLatents`),
        computed on other users (the training users).
      alphas: steering strengths, each >= 0; include 0 for the unsteered
        reference (which is identical for every method).
      methods: steering methods of `recommend.recommend`.
      k: length of the recommendation lists (capped at the song count).
      reli: graded relevance of an unseen song of the target tag, >= 0.
      min_users: smallest class given a per-class entry.
      factor: post-filter strength of "both" relative to `alpha`.
      batch_size: users per jitted chunk.
      target: "dominant" or "random" (see above).
      key: PRNG key or integer seed of the random targets; required with
        `target="random"`.

    Returns:
      A JSON-ready dict, as `plotting.plot_steering` reads it::

        {"alphas": [...], "k": k, "reli": reli, "factor": factor,
         "target": target,
         "min_users": min_users, "n_users": n, "metrics": [...],
         "methods": {method: {
             "average": {metric: [per alpha], metric + "_se": [...]},
             "per_class": {tag: {metric: [...], metric + "_se": [...]}}}},
         "class_sizes": {tag: n_tag},            # classes with an entry
         "skipped_classes": {tag: n_tag},        # fewer than min_users
         "skipped_users": {"no_tagged_input": n, "no_latent_mean": n}}

      Means and standard errors are over users; a NaN (such as the NDCG
      of a user with nothing relevant) leaves that user out of that value.
    """
    alphas = [float(a) for a in alphas]
    if not alphas or any(not np.isfinite(a) or a < 0 for a in alphas):
        raise InputError(f"alphas={alphas!r} must be one or more finite numbers >= 0")
    for method in methods:
        if method not in recommend.METHODS:
            raise InputError(
                f"method {method!r} is not one of {list(recommend.METHODS)}"
            )
    if not (isinstance(reli, (int, float)) and np.isfinite(reli) and reli >= 0):
        raise InputError(f"reli={reli!r} must be a finite number >= 0")
    if not isinstance(min_users, int) or min_users < 1:
        raise InputError(f"min_users={min_users!r} must be an integer >= 1")
    if target not in STEERING_TARGETS:
        raise InputError(f"target={target!r} is not one of {list(STEERING_TARGETS)}")
    if target == "random" and key is None:
        raise InputError('target="random" needs key= (a PRNG key or integer seed)')
    k = min(int(k), data.n_songs)

    dominant = latent.dominant_tags_of_split(data, split, "input")
    has_mean = np.append(np.asarray(tag_latents.has_mean, bool), False)
    no_tag = dominant < 0
    no_mean = ~no_tag & ~has_mean[dominant]
    users = np.flatnonzero(~no_tag & ~no_mean)
    n = len(users)
    goal = dominant
    if target == "random":
        goal = np.full(len(dominant), -1, np.int64)
        goal[users] = _other_tags(dominant[users], has_mean[:-1], key)
    values = {
        m: {name: np.full((len(alphas), n), np.nan) for name in STEERING_METRICS}
        for m in methods
    }
    classes, class_of = np.unique(goal[users], return_inverse=True)
    sizes = np.bincount(class_of, minlength=len(classes))
    rows = int(min(batch_size, sizes.max())) if n else 1  # users per chunk
    common = dict(data=data, tag_latents=tag_latents, batch_size=rows)

    for c, tag_index in enumerate(classes):
        tag = str(data.tag_names[tag_index])
        tag_songs = jnp.asarray(recommend.tag_song_mask(data, tag))
        mean, std = tag_latents.means[tag_index], tag_latents.stds[tag_index]
        members = np.flatnonzero(class_of == c)
        for start in range(0, len(members), rows):  # one shape for every chunk
            part = members[start : start + rows]
            inputs = _pad_to(split.inputs[users[part]], rows, splits.PAD)
            heldout = split.targets_dense(users[part], data.n_songs) > 0
            heldout = jnp.asarray(_pad_to(heldout, rows, False))
            seen = training.input_mask(jnp.asarray(inputs), data.n_songs)
            own = latent.user_latents(params, config, inputs, batch_size=rows)
            for a, alpha in enumerate(alphas):
                for method in methods:
                    steering = dict(tags={tag: 1.0}, alpha=alpha, **common)
                    result = recommend.recommend(
                        params,
                        config,
                        inputs,
                        k=k,
                        method=method,
                        factor=factor,
                        **steering,
                    )
                    z = own
                    if method != "postfilter" and alpha > 0:
                        z = recommend.steered_latents(
                            params, config, inputs, **steering
                        )
                    measures = _steering_measures(
                        jnp.asarray(result.indices),
                        heldout,
                        tag_songs,
                        seen,
                        jnp.float32(reli),
                        jnp.asarray(z),
                        mean,
                        std,
                    )
                    for name in STEERING_METRICS:
                        values[method][name][a, part] = np.asarray(measures[name])[
                            : len(part)
                        ]

    tag_names = [str(data.tag_names[t]) for t in classes]
    kept = [c for c in range(len(classes)) if sizes[c] >= min_users]
    results = {
        "alphas": alphas,
        "k": k,
        "reli": float(reli),
        "factor": float(factor),
        "target": target,
        "min_users": min_users,
        "n_users": n,
        "metrics": list(STEERING_METRICS),
        "methods": {},
        "class_sizes": {tag_names[c]: int(sizes[c]) for c in kept},
        "skipped_classes": {
            tag_names[c]: int(sizes[c]) for c in range(len(classes)) if c not in kept
        },
        "skipped_users": {
            "no_tagged_input": int(no_tag.sum()),
            "no_latent_mean": int(no_mean.sum()),
        },
    }
    for method in methods:
        results["methods"][method] = {
            "average": _summarise(values[method], slice(None)),
            "per_class": {
                tag_names[c]: _summarise(values[method], class_of == c) for c in kept
            },
        }
    log.info(
        "steering study: %d users, %d classes (%d skipped with fewer than %d users)",
        n,
        len(kept),
        len(classes) - len(kept),
        min_users,
    )
    return results


def _other_tags(dominant: np.ndarray, has_mean: np.ndarray, key) -> np.ndarray:
    """For each user, a uniformly random tag with a mean other than theirs."""
    candidates = np.flatnonzero(has_mean)
    if len(candidates) < 2:
        raise InputError(
            f'target="random" needs at least 2 tags with a latent mean, found '
            f"{len(candidates)}"
        )
    position = np.searchsorted(candidates, dominant)
    drawn = numpy_rng(key).integers(0, len(candidates) - 1, len(dominant))
    return candidates[drawn + (drawn >= position)]


def _summarise(values: dict[str, np.ndarray], members) -> dict[str, Any]:
    """Mean and standard error over users (axis 1) of each `[A, n]` metric."""
    out: dict[str, Any] = {}
    for name, v in values.items():
        summary = metrics.mean_and_stderr(v[:, members], axis=1)
        out[name] = [float(x) for x in summary.mean]
        out[name + "_se"] = [float(x) for x in summary.stderr]
    return out


def steering_headline(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The strength at which each method doubles the tag share, and its cost.

    For each method: the smallest alpha > 0 at which the average tag share
    of the top k is at least twice (and above) its value at alpha = 0, and
    the held-out NDCG@k kept there, absolute and as a fraction of alpha =
    0's. A share above 1/2 at alpha = 0 cannot double; the largest share
    reached is reported as well.

    Args:
      results: the output of `steering_study` (or `load_steering`); its
        alphas must include 0.

    Returns:
      `{method: {"alpha": a or None, "tag_share": ..., "tag_share_0": ...,
      "ndcg": ..., "ndcg_0": ..., "ndcg_fraction": ..., "max_tag_share":
      ..., "max_alpha": ...}}`; the values at `alpha` are None when the
      share never doubles.
    """
    try:
        alphas = [float(a) for a in results["alphas"]]
        methods = results["methods"]
    except (KeyError, TypeError) as e:
        raise InputError(f"not steering results: missing {e}") from None
    if 0.0 not in alphas:
        raise InputError(f"alphas={alphas} must include 0, the unsteered reference")
    base = alphas.index(0.0)
    headline = {}
    for method, res in methods.items():
        share = [_nan(x) for x in res["average"]["tag_share"]]
        ndcg = [_nan(x) for x in res["average"]["ndcg"]]
        finite = [i for i, x in enumerate(share) if not np.isnan(x)]
        top = max(finite, key=share.__getitem__) if finite else None
        found = None
        for i in sorted(range(len(alphas)), key=lambda i: alphas[i]):
            if alphas[i] > 0 and share[i] > share[base] and share[i] >= 2 * share[base]:
                found = i
                break
        row = {
            "alpha": None,
            "tag_share": None,
            "tag_share_0": share[base],
            "ndcg": None,
            "ndcg_0": ndcg[base],
            "ndcg_fraction": None,
            "max_tag_share": None if top is None else share[top],
            "max_alpha": None if top is None else alphas[top],
        }
        if found is not None:
            row.update(alpha=alphas[found], tag_share=share[found], ndcg=ndcg[found])
            if ndcg[base] > 0:
                row["ndcg_fraction"] = ndcg[found] / ndcg[base]
        headline[method] = row
    return headline


def format_headline(headline: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per method of `steering_headline`, for a report."""
    lines = []
    for method, row in headline.items():
        if row["alpha"] is None:
            lines.append(
                f"{method}: the tag share ({row['tag_share_0']:.3f} "
                f"unsteered) never doubles; at most {row['max_tag_share']:.3f} "
                f"(alpha={row['max_alpha']:g})"
            )
            continue
        kept = (
            ""
            if row["ndcg_fraction"] is None
            else (f" ({100 * row['ndcg_fraction']:.0f}% of {row['ndcg_0']:.3f})")
        )
        lines.append(
            f"{method}: tag share {row['tag_share_0']:.3f} -> {row['tag_share']:.3f} "
            f"at alpha={row['alpha']:g}, held-out NDCG {row['ndcg']:.3f}{kept}"
        )
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """A copy of nested dicts and lists with NaN as None (strict JSON) and
    NumPy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _from_json(value):
    """null inside a list of numbers becomes NaN again."""
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [float("nan") if v is None else _from_json(v) for v in value]
    return value


def save_steering(results: Mapping[str, Any], path: str | Path) -> Path:
    """Writes steering results as JSON, atomically (temporary file + rename).

    NaN values are written as null and read back as NaN by `load_steering`.

    Returns:
      The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_ready(results), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def load_steering(path: str | Path) -> dict[str, Any]:
    """Reads steering results written by `save_steering`.

    Raises:
      DataFormatError: the file is missing, not JSON, or not steering
        results.
    """
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataFormatError("no such file", path=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"not valid JSON: {e}", path=path) from None
    if not isinstance(results, dict) or not {"alphas", "methods"} <= set(results):
        raise DataFormatError(
            "not steering results: expected keys 'alphas' and 'methods'", path=path
        )
    return _from_json(results)
