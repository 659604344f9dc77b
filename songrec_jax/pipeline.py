"""End-to-end workflows built from the library's steps.

Each function here chains the modules a researcher would otherwise call
one by one: load data, train, evaluate, compute the latent statistics per
tag, run the steering study, draw the plots. The `songrec` command line
and the notebooks call these; they print nothing and return plain results.

A run is identified by its config: its checkpoints live in
`<checkpoints>/<config.name>/` and its latent statistics and plots in
`<z_data>/<config.name>/`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from songrec_jax import (
    checkpointing,
    evaluation,
    latent,
    plotting,
    readers,
    recommend,
    splits,
    training,
)
from songrec_jax.config import Config, DataConfig
from songrec_jax.data import ListeningData
from songrec_jax.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS = Path("checkpoints")
DEFAULT_Z_DATA = Path("z_data")


def load_data(config: DataConfig) -> ListeningData:
    """The listening data a DataConfig describes (synthetic data: seed 0)."""
    return readers.load_source(config, key=0)


@dataclasses.dataclass
class Run:
    """A trained (or to be trained) model with its data and splits.

    Attributes:
      config: the full config; `model.n_songs` matches `data`.
      data: the listening data.
      directory: the checkpoint folder.
      params: trained parameters, or None before training.
      splits: the user and song splits (derived from `train.seed`).
    """

    config: Config
    data: ListeningData
    directory: Path
    params: Any = None
    splits: training.Splits | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def label(self) -> str:
        """A short label for plot titles, e.g. "VAE 600-200, ce loss"."""
        m = self.config.model
        dims = "-".join(str(d) for d in m.dims)
        return f"{m.kind.upper()} {dims}, {self.config.loss.name} loss"

    def z_dir(self, z_data: str | Path = DEFAULT_Z_DATA) -> Path:
        return Path(z_data) / self.name


def prepare(
    config: Config,
    *,
    data: ListeningData | None = None,
    checkpoints: str | Path = DEFAULT_CHECKPOINTS,
) -> Run:
    """Loads the data (unless given) and fits the config to it."""
    data = load_data(config.data) if data is None else data
    config = training.config_for_data(config, data)
    return Run(config, data, Path(checkpoints) / config.name)


def open_run(directory: str | Path, *, data: ListeningData | None = None) -> Run:
    """A trained run from its checkpoint folder (config and data from it)."""
    params, config = checkpointing.load_params(directory)
    data = load_data(config.data) if data is None else data
    training.check_data(data, config)
    return Run(
        config, data, Path(directory), params, training.make_splits(data, config)
    )


def train(run: Run, *, resume: bool = False, progress: bool = True, mesh=None) -> Run:
    """Trains the run's model, saves checkpoints and the history plot.

    With a `mesh` (`sharding.make_mesh`) it trains on the mesh's devices;
    the returned run then holds the padded config the checkpoint stores.
    """
    result = training.train(
        run.config,
        run.data,
        directory=run.directory,
        resume=resume,
        progress=progress,
        mesh=mesh,
    )
    result.history.save(run.directory / "history.json")
    result.history.plot(
        run.directory / "history.png", title=f"{run.label}: training history"
    )
    return dataclasses.replace(
        run, config=result.config, params=result.params, splits=result.splits
    )


def evaluate(
    run: Run,
    *,
    protocols=evaluation.PROTOCOLS,
    ease: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, evaluation.EvaluationTable]:
    """Test-user metrics of the run's model against popularity and EASE.

    Args:
      run: a trained run.
      protocols: "input_target" and/or "strong".
      ease: include EASE (skipped with a log message if it does not fit).
      extra: more trained runs to put in the same table, by name.

    Returns:
      One table per protocol.
    """
    tables = {}
    for protocol in protocols:
        key = jax.random.fold_in(jax.random.key(run.config.train.seed), 7)
        table = evaluation.evaluate_model(
            run.params,
            run.config,
            run.data,
            run.splits,
            key=key,
            protocol=protocol,
            name=run.config.model.kind.upper(),
            ease=ease,
        )
        for name, other in (extra or {}).items():
            table = table.merge(
                evaluation.evaluate_model(
                    other.params,
                    other.config,
                    run.data,
                    other.splits,
                    key=key,
                    protocol=protocol,
                    name=name,
                    ease=False,
                )
            )
        tables[protocol] = table
    return tables


@dataclasses.dataclass
class Analysis:
    """Latent statistics of a run's users, per tag and per cluster.

    Attributes:
      tag_latents: per-tag means and standard deviations.
      latents: float [n_users, d], the users' latent means.
      dominant: int [n_users], each user's dominant tag (-1: none).
      clusters: per cluster, its top tags as (tag, count, share).
      files: the files written.
    """

    tag_latents: latent.TagLatents
    latents: np.ndarray
    dominant: np.ndarray
    clusters: list
    files: list[Path]


def analyze(
    run: Run,
    *,
    z_data: str | Path = DEFAULT_Z_DATA,
    split: str = "train",
    which: str = "input",
    n_clusters: int = 8,
    method: str = "pca",
    max_users: int = 2000,
    progress: bool = False,
) -> Analysis:
    """Computes, saves and plots the latent space per tag.

    Args:
      run: a trained run.
      z_data: parent folder of the results (`<z_data>/<run name>/`).
      split: the users: "train", "val" or "test".
      which: dominant tags from the "input" or the "target" songs.
      n_clusters: k-means clusters of the users' latent vectors.
      method: 2-D projection of the plots, "pca" or "tsne".
      max_users: at most this many users in the user plot.
      progress: show progress bars.
    """
    user_split = split_of(run, split)
    out = run.z_dir(z_data)
    dominant = latent.dominant_tags_of_split(run.data, user_split, which=which)
    tag_latents = latent.compute_tag_latents(
        run.params,
        run.config,
        run.data,
        user_split.inputs,
        dominant,
        model_name=run.name,
        split=f"{split}/{which}",
        progress=progress,
    )
    latent.save_tag_latents(tag_latents, out)
    z = latent.user_latents(run.params, run.config, user_split.inputs)
    key = jax.random.key(run.config.train.seed)
    n_clusters = max(1, min(n_clusters, len(z)))
    centres, assignment = latent.kmeans(z, n_clusters, key=key)
    latent.save_clusters(centres, assignment, out)
    clusters = latent.cluster_top_tags(
        assignment, dominant, run.data.tag_names, n_clusters=n_clusters
    )
    title = f"{run.label}, {split} users"
    files = [out / "tag_latents.npz", out / "tag_latents.json"]
    plotting.plot_z_rand(
        tag_latents.means,
        tag_latents.stds,
        tag_latents.tag_names,
        out / "z_rand.png",
        key=key,
        title=title,
    )
    plotting.plot_z_users(
        z,
        dominant,
        run.data.tag_names,
        out / "z_users.png",
        means=tag_latents.means,
        max_users=max_users,
        key=key,
        method=method,
        title=title,
    )
    plotting.plot_clusters(clusters, out / "clusters.png", title=title)
    files += [
        out / f"{name}.{ext}"
        for name in ("z_rand", "z_users", "clusters")
        for ext in ("png", "pdf")
    ]
    return Analysis(tag_latents, z, dominant, clusters, files)


def split_of(run: Run, split: str) -> splits.UserSplit:
    """The users of a split with their inputs and targets."""
    if split == "train":
        return run.splits.train
    if split == "val":
        return run.splits.val
    if split == "test":
        key = jax.random.fold_in(jax.random.key(run.config.train.seed), 11)
        return splits.input_target_split(
            run.data, run.splits.test_users, run.config.model.input_len, key=key
        )
    raise InputError(f"split={split!r} is not one of ['train', 'val', 'test']")


def sweep(
    run: Run,
    tag_latents: latent.TagLatents,
    *,
    z_data: str | Path = DEFAULT_Z_DATA,
    alphas=evaluation.DEFAULT_ALPHAS,
    min_users: int = 10,
    k: int = 100,
    target: str = "dominant",
) -> dict:
    """The steering study on the test users; saved as JSON and plotted.

    Towards each user's dominant tag, or with `target="random"` towards a
    random other tag (drawn from the run's seed); see
    `evaluation.steering_study`. The files are `steering.json` and
    `steering.png` (`steering_random.*` for random targets) in the run's
    `z_data` folder.
    """
    results = evaluation.steering_study(
        run.params,
        run.config,
        run.data,
        split_of(run, "test"),
        tag_latents,
        alphas=alphas,
        min_users=min_users,
        k=min(k, run.data.n_songs),
        target=target,
        key=run.config.train.seed,
    )
    out = run.z_dir(z_data)
    stem = steering_stem(target)
    evaluation.save_steering(results, out / f"{stem}.json")
    title = f"{run.label}: steering toward each user's {target} tag"
    plotting.plot_steering(
        results, out / f"{stem}.png", metric=["tag_share", "ndcg"], title=title
    )
    return results


def steering_stem(target: str) -> str:
    """The file name (without suffix) of a steering study's results."""
    return "steering" if target == "dominant" else f"steering_{target}"


def parse_tags(specs: list[str]) -> dict[str, float]:
    """Parses `NAME[=WEIGHT]` strings (weight 1 by default)."""
    tags = {}
    for spec in specs:
        name, _, weight = spec.partition("=")
        if not name:
            raise InputError(f"tag {spec!r} is empty; expected NAME or NAME=WEIGHT")
        try:
            tags[name] = float(weight) if weight else 1.0
        except ValueError:
            raise InputError(
                f"tag weight {weight!r} in {spec!r} is not a number; "
                "expected NAME=WEIGHT, e.g. jazz=0.5"
            ) from None
    return tags


def song_indexes(data: ListeningData, songs: list[str]) -> np.ndarray:
    """Song indexes from song ids (or integer indexes as strings)."""
    lookup = {str(s): i for i, s in enumerate(data.song_ids)}
    out = []
    for song in songs:
        if song in lookup:
            out.append(lookup[song])
        elif song.lstrip("-").isdigit() and 0 <= int(song) < data.n_songs:
            out.append(int(song))
        else:
            raise InputError(
                f"song {song!r} is neither a song id of the data (e.g. "
                f"{data.song_ids[0]!r}) nor an index in "
                f"[0, {data.n_songs})"
            )
    return np.asarray(out, np.int64)


def user_index(data: ListeningData, user: str) -> int:
    """A user's row from their id (or an integer row as a string)."""
    matches = np.flatnonzero(data.user_ids == user)
    if len(matches):
        return int(matches[0])
    if user.isdigit() and int(user) < data.n_users:
        return int(user)
    raise InputError(
        f"user {user!r} is neither a user id of the data (e.g. "
        f"{data.user_ids[0]!r}) nor a row in [0, {data.n_users})"
    )


def user_inputs(run: Run, rows: np.ndarray, chunk_size: int = 4096):
    """Model inputs of the data's users `rows`, yielded in chunks.

    Yields:
      int32 [<= chunk_size, input_len]: each user's songs, padded with -1
      (a longer history is subsampled, keyed by the user's row).
    """
    input_len = run.config.model.input_len
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        yield np.stack(
            [
                splits.to_input(run.data.user_songs(int(r)), input_len, key=int(r))
                for r in chunk
            ]
        )


def describe(data: ListeningData, songs: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Readable rows for recommended songs: rank, id, name, score, tags."""
    return [
        {
            "rank": r + 1,
            "song": str(data.song_ids[s]),
            "name": str(data.song_names[s]),
            "score": float(score),
            "tags": [str(data.tag_names[t]) for t in data.song_tags(int(s))],
        }
        for r, (s, score) in enumerate(zip(songs, scores, strict=True))
    ]


def recommend_history(
    run: Run,
    songs: np.ndarray,
    *,
    k: int = 10,
    tags: dict[str, float] | None = None,
    alpha: float = 0.0,
    method: str = "postfilter",
    tag_latents: latent.TagLatents | None = None,
) -> list[dict]:
    """Top songs for one history, optionally steered, as readable rows."""
    rec = recommend.recommend_one(
        run.params,
        run.config,
        songs,
        k=min(k, run.data.n_songs),
        tags=tags,
        alpha=alpha,
        method=method,
        data=run.data,
        tag_latents=tag_latents,
    )
    return describe(run.data, np.asarray(rec.indices), np.asarray(rec.scores))
