"""Training with patience, learning-rate restarts and resumable checkpoints.

The procedure:

1. Users are split into train / validation / test by `TrainConfig.seed`;
   each user's songs are split into an input and the songs to predict.
2. Each epoch runs Adam over shuffled batches of training users, then
   evaluates the validation loss (and NDCG@100 when `select_by="ndcg"`,
   the model selection of Mult-VAE).
3. An improvement saves the parameters as the best checkpoint and resets
   the patience count; otherwise the count goes down. When it reaches
   zero, training restarts from the best parameters with the learning
   rate multiplied by `lr_factor` and a fresh optimizer state, at most
   `restarts` times; after that it stops.
4. Every epoch ends by saving the latest checkpoint: parameters,
   optimizer state, history and loop position. `train(..., resume=True)`
   continues from it. Batches and random keys derive from `seed`, the
   epoch and the step alone, so an interrupted and resumed run ends with
   exactly the parameters of an uninterrupted one.

The history of each epoch (loss parts, patience, learning rate) is kept
in a `History`, saved with every checkpoint, and plotted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from songrec_jax import checkpointing, fused_step, losses, metrics, models, splits
from songrec_jax.config import Config
from songrec_jax.data import ListeningData
from songrec_jax.errors import CheckpointError, ConfigError, TrainingError

log = logging.getLogger(__name__)

Callback = Callable[[str, dict], None]
NDCG_K = 100


class TrainingInterrupted(TrainingError):
    """Training was stopped by the user (Ctrl-C); the latest state is saved."""


class History:
    """Per-epoch records of a training run, grouped by restart.

    `runs[r]` lists the epochs trained after the r-th restart; each record
    is a dict with `epoch`, `lr`, `patience` (epochs of patience left after
    the epoch), `improved`, and `train` / `val` dicts of loss parts
    (`recon`, `kl`, `total`, and `ndcg` when measured).
    """

    def __init__(self, runs: list[list[dict]] | None = None):
        self.runs = runs if runs is not None else [[]]

    def add(self, record: dict, patience: int) -> None:
        """Appends an epoch's record with the patience left after it."""
        self.runs[-1].append({**record, "patience": int(patience)})

    def restart(self) -> None:
        """Starts a new group of epochs (after a learning-rate restart)."""
        self.runs.append([])

    @property
    def records(self) -> list[dict]:
        return [r for run in self.runs for r in run]

    def to_dict(self) -> dict:
        return {"runs": self.runs}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        runs = d.get("runs") if isinstance(d, dict) else None
        if not isinstance(runs, list) or not all(isinstance(r, list) for r in runs):
            raise CheckpointError(f"not a training history: {str(d)[:80]!r}")
        return cls(runs or [[]])

    def save(self, path: str | Path) -> None:
        """Writes the history as JSON."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> History:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read history {str(path)!r}: {e}") from e

    def plot(self, path: str | Path, *, title: str = ""):
        """Plots each loss part against epoch; see `plotting.plot_history`."""
        from songrec_jax import plotting

        return plotting.plot_history(self, path, title=title)


@dataclasses.dataclass(frozen=True)
class Splits:
    """The users and song splits of one run, derived from `train.seed` alone.

    Attributes:
      train_users, val_users, test_users: int64 user indices.
      train: inputs and targets of the training users.
      val: inputs and targets of the validation users.
    """

    train_users: np.ndarray
    val_users: np.ndarray
    test_users: np.ndarray
    train: splits.UserSplit
    val: splits.UserSplit


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      params: the best parameters.
      config: the config trained with.
      history: the training history.
      splits: the data splits used.
      directory: the checkpoint folder, or None.
    """

    params: Any
    config: Config
    history: History
    splits: Splits
    directory: Path | None


def _keys(config: Config) -> dict[str, jax.Array]:
    root = jax.random.key(config.train.seed)
    names = ("split", "target", "init", "batches", "steps")
    return dict(zip(names, jax.random.split(root, len(names)), strict=True))


def make_splits(data: ListeningData, config: Config) -> Splits:
    """Splits users and their songs as `train` does (same seed, same result)."""
    check_data(data, config)
    keys = _keys(config)
    t = config.train
    train_users, val_users, test_users = splits.split_users(
        data.n_users,
        val_fraction=t.val_fraction,
        test_fraction=t.test_fraction,
        key=keys["split"],
    )
    val_target = "rest" if t.target == "all" else t.target
    val = splits.input_target_split(
        data,
        val_users,
        config.model.input_len,
        key=jax.random.fold_in(keys["target"], 1),
        target=val_target,
    )
    train = training_split(data, config, train_users, epoch=0)
    return Splits(train_users, val_users, test_users, train, val)


def training_split(
    data: ListeningData, config: Config, train_users: np.ndarray, *, epoch: int
) -> splits.UserSplit:
    """The training users' inputs and targets for an epoch.

    The same for every epoch unless `config.train.resample`; either way a
    function of the seed and the epoch alone (so resuming repeats it).
    """
    key = jax.random.fold_in(_keys(config)["target"], 0)
    if config.train.resample and epoch > 0:
        key = jax.random.fold_in(key, epoch + 1)
    return splits.input_target_split(
        data, train_users, config.model.input_len, key=key, target=config.train.target
    )


def check_data(data: ListeningData, config: Config) -> None:
    if data.n_songs != config.model.n_songs:
        raise ConfigError(
            f"model.n_songs={config.model.n_songs} but the data has {data.n_songs} "
            "songs; use config_for_data(config, data)"
        )


def config_for_data(config: Config, data: ListeningData) -> Config:
    """The config with `model.n_songs` set to the data's song count."""
    return config.replace(model=dataclasses.replace(config.model, n_songs=data.n_songs))


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam whose learning rate lives in its state, so restarts can change it."""
    return optax.inject_hyperparams(optax.adam)(
        learning_rate=config.train.learning_rate
    )


def _set_lr(opt_state, lr: float):
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, jnp.float32)
    return opt_state._replace(hyperparams=hyper)


def make_train_step(config: Config, optimizer: optax.GradientTransformation):
    """A jitted `step(state, batch, key, beta) -> (state, metrics)`.

    `state` is `{"params", "opt_state"}` and is donated: its buffers are
    reused for the result. `config.train.step` chooses the implementation
    (`uses_fused_step`); both compute Adam's update of the same loss. The
    fused one is a `fused_step.BufferedStep` (it also has `lower` and
    `_cache_size`), compiled with `compiler_options(config)` like the
    plain one.
    """
    options = compiler_options(config)
    if uses_fused_step(config):
        return fused_step.BufferedStep(
            config,
            lazy=config.train.lazy_embedding_updates,
            compiler_options=options,
        )
    step = plain_train_step(config, optimizer)
    return jax.jit(step, donate_argnums=0, compiler_options=options)


CPU_GEMM_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"
}
"""XLA options of a multinomial step on a large catalogue on CPU.

By default XLA on CPU hands every matrix product to YNNPACK. With these
options only reductions (and the products fused into them) go there: the
logits' product, which the log-softmax's maximum is fused into, stays in
YNNPACK, while `dlogits @ kernel` and `dlogits.T @ h` run on XLA's own
GEMM, which multiplies these shapes faster. `benchmarks/train_step.py`
measures it (about 10 % less time per step at 180,198 songs). Steps whose
loss has no such reduction (BCE, focal) lose their fast logits product
this way, so they keep the defaults.
"""


def compiler_options(config: Config) -> dict[str, str] | None:
    """The XLA options `make_train_step` compiles this config's step with."""
    large = config.model.n_outputs >= fused_step.AUTO_MIN_SONGS
    if config.loss.name != "ce" or not large or jax.default_backend() != "cpu":
        return None
    return CPU_GEMM_OPTIONS if _accepts_cpu_gemm_options() else None


@functools.cache
def _accepts_cpu_gemm_options() -> bool:
    """Whether this jaxlib compiles with `CPU_GEMM_OPTIONS` (older ones may
    not know them)."""
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=CPU_GEMM_OPTIONS)
        probe.lower(jnp.float32(0)).compile()
    except Exception:  # noqa: BLE001 (any rejection means: do without)
        return False
    return True


def uses_fused_step(config: Config) -> bool:
    """Whether `make_train_step` builds the fused step for this config."""
    t = config.train
    if t.step == "auto":
        return t.lazy_embedding_updates or (
            config.model.n_outputs >= fused_step.AUTO_MIN_SONGS
        )
    return t.step == "fused"


def plain_train_step(config: Config, optimizer: optax.GradientTransformation):
    """The unjitted step of `jax.value_and_grad` and `optimizer.update`."""
    model_config = config.model

    def loss_of(params, batch, key, beta):
        logits, aux = models.apply_train(params, model_config, batch["inputs"], key)
        return losses.loss_fn(
            config.loss,
            logits,
            batch["targets"],
            **_posterior(aux),
            beta=beta,
            weights=batch["weights"],
        )

    def step(state, batch, key, beta):
        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        (_, parts), grads = grad_fn(state["params"], batch, key, beta)
        updates, opt_state = optimizer.update(
            grads, state["opt_state"], state["params"]
        )
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state}, parts

    return step


def _posterior(aux: dict) -> dict:
    """The VAE's `mean` and `logvar` for the KL term; nothing for the MLP."""
    if aux["logvar"] is None:
        return {}
    return {"mean": aux["mean"], "logvar": aux["logvar"]}


def make_eval_step(config: Config):
    """A jitted `step(params, batch, beta) -> metrics` on the VAE mean.

    Metrics are per-batch sums (`recon`, `kl`, `total`, `ndcg`, `n`), so
    batches of any padding add up exactly.
    """
    model_config = config.model
    k = min(NDCG_K, model_config.n_songs)

    @jax.jit
    def step(params, batch, beta):
        logits, aux = models._forward(
            params, model_config, batch["inputs"], None, False
        )
        w = batch["weights"]
        _, parts = losses.loss_fn(
            config.loss,
            logits,
            batch["targets"],
            **_posterior(aux),
            beta=beta,
            weights=w,
        )
        n = w.sum()
        sums = {name: value * jnp.maximum(n, 1.0) for name, value in parts.items()}
        seen = input_mask(batch["inputs"], model_config.n_outputs)
        top, _ = metrics.top_k(logits, k, exclude=seen)
        ndcg = metrics.ndcg_at_k(top, batch["targets"])
        valid = (w > 0) & jnp.isfinite(ndcg)
        sums["ndcg"] = jnp.where(valid, ndcg, 0.0).sum()
        sums["n_ndcg"] = valid.sum().astype(jnp.float32)
        sums["n"] = n
        return sums

    return step


def input_mask(inputs: jax.Array, width: int) -> jax.Array:
    """bool [B, width]: True at each song present in the padded inputs."""
    rows = jnp.arange(inputs.shape[0])[:, None]
    mask = jnp.zeros((inputs.shape[0], width), bool)
    return mask.at[rows, jnp.where(inputs >= 0, inputs, width)].set(True, mode="drop")


def evaluate_split(
    params,
    config: Config,
    split: splits.UserSplit,
    *,
    beta: float = 1.0,
    eval_step=None,
    lazy: bool = False,
) -> dict[str, float]:
    """Mean loss parts and NDCG@100 of a split (VAE: decoded from the mean).

    `lazy` passes the targets as `splits.DenseTargets` (for a sharded
    `eval_step`, which builds only each device's part).
    """
    eval_step = eval_step or make_eval_step(config)
    totals: dict[str, float] = {}
    for batch in splits.batches(
        split, config.train.batch_size, config.model.n_outputs, lazy_targets=lazy
    ):
        sums = eval_step(params, batch, jnp.float32(beta))
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    n = max(totals.pop("n", 0.0), 1.0)
    n_ndcg = max(totals.pop("n_ndcg", 0.0), 1.0)
    out = {name: value / n for name, value in totals.items() if name != "ndcg"}
    out["ndcg"] = totals.get("ndcg", 0.0) / n_ndcg
    return out


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


def train(
    config: Config,
    data: ListeningData,
    *,
    directory: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callback | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainResult:
    """Trains a model on `data` as described in the module docstring.

    Args:
      config: the run's config; `model.n_songs` must equal `data.n_songs`.
      data: the listening data.
      directory: the checkpoint folder (best and latest checkpoints); None
        trains without saving.
      resume: continue from the latest checkpoint in `directory`, if any.
      progress: show a progress bar per epoch.
      callback: called as `callback(event, info)` after each step
        ("step") and each epoch ("epoch"), e.g. for live plots.
      mesh: train on the devices of this mesh (`sharding.make_mesh`):
        batches split over its "data" axis, songs over "model". The config
        is padded first (`sharding.padded_config`); the result and the
        checkpoints carry the padded config. On several processes whose
        devices each hold whole rows of the "data" axis, each process
        batches only its own contiguous share of the training users
        (`sharding.process_block`), so the batches differ from a
        one-process run. None trains on one device.

    Returns:
      The best parameters, the history and the splits.

    Raises:
      TrainingError: the loss became non-finite (the checkpoints keep the
        last good epoch).
      TrainingInterrupted: Ctrl-C; the latest finished epoch is saved.
      CheckpointError: resuming from a checkpoint of another config.
    """
    directory = Path(directory) if directory is not None else None
    if resume and directory is None:
        raise ConfigError("resume=True needs a checkpoint directory")
    if mesh is not None:
        from songrec_jax import sharding  # local: sharding imports this module

        config = sharding.padded_config(config, mesh)
        sharding.check_batch_size(config.train.batch_size, mesh)
    t = config.train
    data_splits = make_splits(data, config)
    if data_splits.train.n_users == 0 or data_splits.val.n_users == 0:
        raise ConfigError(
            f"{data_splits.train.n_users} training and "
            f"{data_splits.val.n_users} validation users: too few "
            "users with at least two songs to train"
        )
    keys = _keys(config)
    optimizer = make_optimizer(config)
    train_data = data.subset_users(data_splits.train_users)
    popularity = train_data.song_popularity() / max(train_data.n_users, 1)
    if mesh is None:
        params = models.init(config, key=keys["init"], song_popularity=popularity)
        init_opt = optimizer.init
    else:
        params = sharding.init_params(
            config, mesh, key=keys["init"], song_popularity=popularity
        )
        init_opt = lambda p: sharding.init_opt_state(optimizer, p, mesh)  # noqa: E731
    opt_state = init_opt(params)
    history = History()
    loop = {
        "epoch": 0,
        "step": 0,
        "best": None,
        "patience_left": t.patience,
        "restarts": 0,
        "lr": t.learning_rate,
        "done": False,
    }
    best_params = params

    if resume and checkpointing.exists(directory, "latest"):
        stored = checkpointing.load_config(directory, "latest")
        if stored != config:
            raise CheckpointError(
                f"the checkpoint in {str(directory)!r} was trained with another "
                f"config ({stored.name}); requested {config.name}"
            )
        meta = checkpointing.load_meta(directory, "latest")
        state = checkpointing.restore_state(
            directory, {"params": params, "opt_state": opt_state}, kind="latest"
        )
        params, opt_state = state["params"], state["opt_state"]
        loop, history = meta["loop"], History.from_dict(meta["history"])
        if checkpointing.exists(directory, "best") and mesh is None:
            best_params = checkpointing.load_params(directory, kind="best")[0]
        elif checkpointing.exists(directory, "best"):
            best_params = sharding.restore_sharded(
                directory, config, mesh, kind="best"
            )[0]["params"]
        log.info("resuming %s at epoch %d", directory, loop["epoch"])
    elif directory is not None and checkpointing.exists(directory, "latest"):
        log.warning(
            "%s already holds checkpoints; they will be replaced "
            "(pass resume=True to continue them)",
            directory,
        )

    if mesh is None:
        train_step = make_train_step(config, optimizer)
        eval_step = make_eval_step(config)
    else:
        train_step = sharding.make_train_step(config, optimizer, mesh)
        eval_step = sharding.make_eval_step(config, mesh)
    state = {"params": params, "opt_state": opt_state}
    # On several processes whose devices each hold whole rows of the batch,
    # every process trains on its own share of the training users.
    block = sharding.process_block(mesh) if mesh is not None else None
    own_users, own_split = data_splits.train_users, data_splits.train
    batch_rows, n_batches = t.batch_size, splits.n_batches(own_split, t.batch_size)
    if block is not None:
        index, count = block
        n = len(own_users)
        own_users = own_users[
            sharding.process_users(n, process_index=index, process_count=count)
        ]
        own_split = training_split(data, config, own_users, epoch=0)
        batch_rows = t.batch_size // count
        largest_share = -(-n // count)
        n_batches = -(-largest_share // batch_rows)  # the same in every process
        log.info(
            "process %d of %d trains on %d of the %d training users",
            index,
            count,
            len(own_users),
            n,
        )
    try:
        while loop["epoch"] < t.epochs and not loop["done"]:
            epoch = loop["epoch"]
            epoch_key = jax.random.fold_in(keys["batches"], epoch)
            train_split = own_split
            if t.resample and epoch > 0:
                train_split = training_split(data, config, own_users, epoch=epoch)
            step_losses = []
            epoch_batches = splits.batches(
                train_split,
                batch_rows,
                config.model.n_outputs,
                key=epoch_key
                if block is None
                else jax.random.fold_in(epoch_key, index),
                lazy_targets=mesh is not None,
                min_batches=n_batches,
            )
            if block is not None:
                epoch_batches = (
                    sharding.global_batch(b, mesh, count) for b in epoch_batches
                )
            bar = tqdm(
                epoch_batches,
                total=n_batches,
                desc=f"epoch {epoch + 1}/{t.epochs}",
                disable=not progress,
                leave=False,
            )
            for batch in bar:
                beta = losses.beta_at(config.loss, step=loop["step"], epoch=epoch)
                key = jax.random.fold_in(keys["steps"], loop["step"])
                state, parts = train_step(state, batch, key, jnp.float32(beta))
                step_losses.append(parts)
                loop["step"] += 1
                if callback is not None:
                    callback("step", {"epoch": epoch, "step": loop["step"]})
            train_parts = _check_finite(step_losses, epoch, loop["step"] - n_batches)
            beta = float(losses.beta_at(config.loss, step=loop["step"], epoch=epoch))
            val = evaluate_split(
                state["params"],
                config,
                data_splits.val,
                beta=beta,
                eval_step=eval_step,
                lazy=mesh is not None,
            )
            if not all(math.isfinite(v) for v in val.values()):
                raise TrainingError(
                    f"validation loss is not finite after epoch "
                    f"{epoch + 1}: {val}; the checkpoints keep the "
                    "last good epoch"
                )
            score = -val["ndcg"] if t.select_by == "ndcg" else val["total"]
            improved = loop["best"] is None or score < loop["best"]
            if improved:
                loop["best"], loop["patience_left"] = score, t.patience
                best_params = _copy(state["params"])
            else:
                loop["patience_left"] -= 1
            history.add(
                {
                    "epoch": epoch + 1,
                    "lr": loop["lr"],
                    "improved": improved,
                    "train": train_parts,
                    "val": val,
                },
                loop["patience_left"],
            )
            log.info(
                "epoch %d: train %.4f, val %.4f, ndcg@%d %.4f%s",
                epoch + 1,
                train_parts["total"],
                val["total"],
                NDCG_K,
                val["ndcg"],
                " (best)" if improved else f", patience {loop['patience_left']}",
            )
            if improved and directory is not None:
                with _sigint_deferred():
                    checkpointing.save(
                        directory,
                        best_params,
                        config,
                        step=epoch + 1,
                        history=history.to_dict(),
                        kind="best",
                    )
            if loop["patience_left"] <= 0:
                if loop["restarts"] >= t.restarts:
                    loop["done"] = True
                else:
                    loop["restarts"] += 1
                    loop["lr"] *= t.lr_factor
                    loop["patience_left"] = t.patience
                    params = _copy(best_params)
                    state = {
                        "params": params,
                        "opt_state": _set_lr(init_opt(params), loop["lr"]),
                    }
                    history.restart()
                    log.info(
                        "restart %d from the best parameters, learning rate %.3g",
                        loop["restarts"],
                        loop["lr"],
                    )
            loop["epoch"] = epoch + 1
            if directory is not None:
                with _sigint_deferred():
                    checkpointing.save(
                        directory,
                        state["params"],
                        config,
                        opt_state=state["opt_state"],
                        step=epoch + 1,
                        history=history.to_dict(),
                        loop=loop,
                        kind="latest",
                    )
            if callback is not None:
                callback("epoch", {"epoch": epoch + 1, "val": val, "loop": dict(loop)})
    except KeyboardInterrupt:
        where = (
            f"the latest checkpoint in {str(directory)!r} holds epoch "
            f"{loop['epoch']}; resume with resume=True (songrec train "
            "--resume)"
            if directory is not None
            else "nothing was saved"
        )
        raise TrainingInterrupted(
            f"training interrupted by the user; {where}"
        ) from None
    return TrainResult(best_params, config, history, data_splits, directory)


@contextlib.contextmanager
def _sigint_deferred():
    """Holds Ctrl-C back until a checkpoint save has finished.

    A save cut short would leave nothing lost (saves are atomic) but would
    throw away the epoch just trained; the interrupt is raised right after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _check_finite(step_losses: list[dict], epoch: int, first_step: int) -> dict:
    """Mean of each loss part over the epoch; raises on a non-finite value."""
    if not step_losses:
        return {}
    stacked = {
        k: np.asarray(jnp.stack([p[k] for p in step_losses])) for k in step_losses[0]
    }
    bad = ~np.isfinite(stacked["total"])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TrainingError(
            f"the loss became {stacked['total'][i]} at epoch {epoch + 1}, step "
            f"{first_step + i + 1}; the checkpoints keep the last good epoch. Try a "
            "lower learning rate."
        )
    return {k: float(v.mean()) for k, v in stacked.items()}
