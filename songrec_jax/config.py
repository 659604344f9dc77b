"""Immutable configuration of data, model, loss and training.

A `Config` holds four frozen dataclasses. Change one with
`dataclasses.replace`, never by assignment::

    config = load_config("configs/vae_h2.toml")
    config = config.replace(train=dataclasses.replace(config.train, seed=1))

Every field is validated when the object is built, so an invalid config
cannot exist. `Config.name` derives a short, unique, human-readable name
from the fields that differ from their defaults; outputs (checkpoints,
latent statistics, plots) are stored under that name.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from songrec_jax.errors import ConfigError

MODEL_KINDS = ("mlp", "vae")
POOLINGS = ("sum", "mean", "attention")
LOSSES = ("bce", "bce2", "ce", "focal", "focal2")
SELECT_BY = ("loss", "ndcg")
DATA_SOURCES = ("synthetic", "lastfm-hetrec", "msd", "movielens", "tsv", "npz")
TARGETS = ("rest", "window", "all")
STEPS = ("auto", "plain", "fused")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{field}={value!r} is not one of {list(choices)}")


def _check_positive(field: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    bound = ">= 0" if allow_zero else "> 0"
    _check(ok, f"{field}={value!r} must be a finite number {bound}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The autoencoder's architecture.

    Attributes:
      kind: "mlp" (deterministic autoencoder) or "vae" (variational).
      n_songs: number of songs, the size of the output layer.
      input_len: length of the padded song-id input of each user.
      dims: hidden sizes of the encoder; the last one is the latent size.
        The decoder mirrors them back to `n_songs` logits.
      pooling: how the song embeddings of a history are combined: "sum",
        "mean" or "attention" (a learned score per song, softmax over the
        songs present).
      input_dropout: probability of dropping each input song while
        training (denoising, as in Mult-VAE); 0 disables it.
      popularity_bias: initialise the output bias from song popularity.
      song_multiple: the output layer is padded to a multiple of this many
        songs (for sharding over devices); padded logits are masked.
    """

    kind: str = "vae"
    n_songs: int = 1000
    input_len: int = 100
    dims: tuple[int, ...] = (600, 200)
    pooling: str = "sum"
    input_dropout: float = 0.0
    popularity_bias: bool = True
    song_multiple: int = 1

    def __post_init__(self):
        object.__setattr__(self, "dims", tuple(self.dims))
        _check_choice("model.kind", self.kind, MODEL_KINDS)
        _check_choice("model.pooling", self.pooling, POOLINGS)
        _check(
            isinstance(self.n_songs, int) and self.n_songs >= 2,
            f"model.n_songs={self.n_songs!r} must be an integer >= 2",
        )
        _check(
            isinstance(self.input_len, int) and self.input_len >= 1,
            f"model.input_len={self.input_len!r} must be an integer >= 1",
        )
        _check(len(self.dims) >= 1, "model.dims=() must list at least one size")
        for d in self.dims:
            _check(
                isinstance(d, int) and d >= 1,
                f"model.dims={self.dims!r}: every size must be an integer >= 1",
            )
        _check(
            0.0 <= self.input_dropout < 1.0,
            f"model.input_dropout={self.input_dropout!r} must be in [0, 1)",
        )
        _check(
            isinstance(self.song_multiple, int) and self.song_multiple >= 1,
            f"model.song_multiple={self.song_multiple!r} must be an integer >= 1",
        )

    @property
    def latent_dim(self) -> int:
        return self.dims[-1]

    @property
    def n_outputs(self) -> int:
        """`n_songs` rounded up to a multiple of `song_multiple`."""
        m = self.song_multiple
        return -(-self.n_songs // m) * m


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The training objective.

    Attributes:
      name: reconstruction loss: "bce" (binary cross-entropy summed over
        songs), "bce2" (that sum divided by the user's number of
        positive songs), "ce" (softmax cross-entropy, the multinomial likelihood
        of Mult-VAE), "focal" / "focal2" (focal loss, summed / per part).
      beta: weight of the KL term of a VAE (its cap when annealed).
      beta_start_epoch: the KL term is off before this epoch (0: always on).
      anneal_steps: if > 0, beta rises linearly from 0 to `beta` over this
        many training steps (Mult-VAE's annealing).
      focal_alpha: weight of the positive class in the focal loss.
      focal_gamma: focusing exponent of the focal loss.
    """

    name: str = "ce"
    beta: float = 1.0
    beta_start_epoch: int = 0
    anneal_steps: int = 0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self):
        _check_choice("loss.name", self.name, LOSSES)
        _check_positive("loss.beta", self.beta, allow_zero=True)
        _check(
            isinstance(self.beta_start_epoch, int) and self.beta_start_epoch >= 0,
            f"loss.beta_start_epoch={self.beta_start_epoch!r} must be an integer >= 0",
        )
        _check(
            isinstance(self.anneal_steps, int) and self.anneal_steps >= 0,
            f"loss.anneal_steps={self.anneal_steps!r} must be an integer >= 0",
        )
        _check(
            0.0 <= self.focal_alpha <= 1.0,
            f"loss.focal_alpha={self.focal_alpha!r} must be in [0, 1]",
        )
        _check_positive("loss.focal_gamma", self.focal_gamma, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation procedure.

    Attributes:
      learning_rate: Adam's initial learning rate.
      batch_size: users per step.
      epochs: maximum number of epochs.
      patience: epochs without validation improvement before a restart.
      lr_factor: the learning rate is multiplied by this at each restart.
      restarts: how many restarts before training stops.
      seed: the random seed of every choice (splits, init, batches).
      val_fraction: share of users held out for validation.
      test_fraction: share of users held out for testing.
      select_by: keep the parameters with the best validation "loss" or
        the best validation "ndcg" (NDCG@100, as Mult-VAE).
      target: each training user's target songs: "rest" (all songs not
        in the input), "window" (at most `input_len` of them) or "all"
        (every song of the user, the input included: Mult-VAE's
        autoencoding, to pair with input dropout). Validation users always
        predict the "rest" of their songs from their input.
      resample: draw each training user's input and targets anew every
        epoch (from `seed` and the epoch) instead of once for the run.
      step: how a training step computes Adam's update: "plain"
        (`jax.grad` and `optax.adam`), "fused" (the same update without
        the dense gradients of the song-sized layers, faster for large
        catalogues; see `fused_step`), or "auto" (fused from
        `fused_step.AUTO_MIN_SONGS` songs on, plain below). Plain and fused
        agree to float32 rounding. A step on a device mesh is always plain.
      lazy_embedding_updates: lazy Adam for the embedding table: only the
        rows of the songs in a batch are updated (their moments included)
        instead of every row decaying. An approximation that skips most of
        the table's work; needs the fused step.
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 100
    patience: int = 5
    lr_factor: float = 0.1
    restarts: int = 2
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    select_by: str = "loss"
    target: str = "rest"
    resample: bool = False
    step: str = "auto"
    lazy_embedding_updates: bool = False

    def __post_init__(self):
        _check_positive("train.learning_rate", self.learning_rate)
        for field in ("batch_size", "epochs"):
            value = getattr(self, field)
            _check(
                isinstance(value, int) and value >= 1,
                f"train.{field}={value!r} must be an integer >= 1",
            )
        for field in ("patience", "restarts", "seed"):
            value = getattr(self, field)
            _check(
                isinstance(value, int) and value >= 0,
                f"train.{field}={value!r} must be an integer >= 0",
            )
        _check(
            0.0 < self.lr_factor <= 1.0,
            f"train.lr_factor={self.lr_factor!r} must be in (0, 1]",
        )
        for field in ("val_fraction", "test_fraction"):
            value = getattr(self, field)
            _check(0.0 <= value < 1.0, f"train.{field}={value!r} must be in [0, 1)")
        _check(
            self.val_fraction + self.test_fraction < 1.0,
            "train.val_fraction + train.test_fraction must be < 1, got "
            f"{self.val_fraction} + {self.test_fraction}",
        )
        _check_choice("train.select_by", self.select_by, SELECT_BY)
        _check_choice("train.target", self.target, TARGETS)
        _check_choice("train.step", self.step, STEPS)
        _check(
            isinstance(self.resample, bool),
            f"train.resample={self.resample!r} must be true or false",
        )
        _check(
            isinstance(self.lazy_embedding_updates, bool),
            f"train.lazy_embedding_updates={self.lazy_embedding_updates!r} must be "
            "true or false",
        )
        _check(
            not (self.lazy_embedding_updates and self.step == "plain"),
            "train.lazy_embedding_updates=true needs train.step='fused' or 'auto' "
            "(the plain step always updates every row)",
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the listening data comes from and how it is filtered.

    Attributes:
      source: "synthetic" (the built-in generator), "lastfm-hetrec",
        "msd", "movielens", "tsv" or "npz" (this library's own format).
      path: file or folder of the data; unused for "synthetic".
      n_users, n_songs, n_tags: sizes of the synthetic data.
      min_user_listens: drop users with fewer distinct songs.
      min_song_listens: drop songs with fewer listeners.
      top_tags: keep only the most used tags (0 keeps all).
      min_rating: ratings at or above this count as a listen (MovieLens).
    """

    source: str = "synthetic"
    path: str = ""
    n_users: int = 2000
    n_songs: int = 1000
    n_tags: int = 12
    min_user_listens: int = 1
    min_song_listens: int = 1
    top_tags: int = 0
    min_rating: float = 4.0

    def __post_init__(self):
        _check_choice("data.source", self.source, DATA_SOURCES)
        _check(
            self.source == "synthetic" or bool(self.path),
            f"data.path is required for data.source={self.source!r}",
        )
        for field in ("n_users", "n_songs", "n_tags"):
            value = getattr(self, field)
            _check(
                isinstance(value, int) and value >= 1,
                f"data.{field}={value!r} must be an integer >= 1",
            )
        for field in ("min_user_listens", "min_song_listens", "top_tags"):
            value = getattr(self, field)
            _check(
                isinstance(value, int) and value >= 0,
                f"data.{field}={value!r} must be an integer >= 0",
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run.

    Attributes:
      model: the architecture.
      loss: the objective.
      train: the optimisation procedure.
      data: the data source.
    """

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        """A name unique to this config, used for output folders.

        Kind, dims and loss always appear; every other field that differs
        from its default is appended as `field=value`.
        """
        dims = "-".join(str(d) for d in self.model.dims)
        parts = [self.model.kind, dims, self.loss.name]
        skip = {
            ("model", "kind"),
            ("model", "dims"),
            ("loss", "name"),
            ("model", "n_songs"),
            ("data", "path"),
        }
        for section in ("model", "loss", "train", "data"):
            value = getattr(self, section)
            default = type(value)()
            for field in dataclasses.fields(value):
                if (section, field.name) in skip:
                    continue
                v = getattr(value, field.name)
                if v != getattr(default, field.name):
                    parts.append(f"{field.name}={v}")
        return "_".join(parts).replace("/", "-").replace(" ", "")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {}
        for section in ("model", "loss", "train", "data"):
            d = dataclasses.asdict(getattr(self, section))
            out[section] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
            }
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Builds a config from nested dicts; unknown keys raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a table of sections, got {d!r}")
        sections = {
            "model": ModelConfig,
            "loss": LossConfig,
            "train": TrainConfig,
            "data": DataConfig,
        }
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(
                f"unknown config sections {sorted(unknown)}; accepted: {list(sections)}"
            )
        kwargs = {}
        for section, klass in sections.items():
            values = dict(d.get(section, {}))
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - names
            if bad:
                raise ConfigError(
                    f"unknown fields {sorted(bad)} in [{section}]; "
                    f"accepted: {sorted(names)}"
                )
            if "dims" in values:
                values["dims"] = tuple(values["dims"])
            try:
                kwargs[section] = klass(**values)
            except TypeError as e:
                raise ConfigError(f"[{section}]: {e}") from None
        return cls(**kwargs)


def load_config(path: str | Path) -> Config:
    """Reads a config from a TOML file; missing fields take their defaults."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    return Config.from_dict(d)


def save_config(config: Config, path: str | Path) -> None:
    """Writes a config as TOML (readable back with `load_config`)."""
    Path(path).write_text(tomli_w.dumps(config.to_dict()))


def preset(name: str) -> Config:
    """Loads a named preset from the project's `configs/` folder."""
    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.toml"
    if not path.exists():
        names = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise ConfigError(f"no preset named {name!r}; available: {names}")
    return load_config(path)
