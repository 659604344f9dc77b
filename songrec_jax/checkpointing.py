"""Self-describing Orbax checkpoints of a training run.

A run's directory holds two Orbax checkpoint managers, each keeping one
checkpoint:

* `best/`: the parameters with the best validation score so far;
* `latest/`: everything needed to resume: parameters, optimizer state
  and the training loop's position.

Each checkpoint has two items: `state` (arrays, saved with
`StandardSave`) and `meta` (JSON: the full config, the training history,
the loop position and `format_version`). A checkpoint therefore describes
itself: `load_params(directory)` needs nothing else.

Orbax writes into a temporary folder and renames it only once every file
is complete, and removes the previous checkpoint only after that, so an
interrupted or failed save never replaces a good checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from songrec_jax.config import Config
from songrec_jax.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1
KINDS = ("best", "latest")

log = logging.getLogger(__name__)


def _manager(directory: Path, kind: str, *, read_only: bool = False):
    if kind not in KINDS:
        raise CheckpointError(f"checkpoint kind {kind!r} is not one of {list(KINDS)}")
    if read_only:
        options = ocp.CheckpointManagerOptions(
            create=False, enable_async_checkpointing=False
        )
    else:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
    return ocp.CheckpointManager(
        directory.resolve() / kind,
        options=options,
        item_names=("params", "opt_state", "meta"),
    )


def _to_numpy_tree(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def save(
    directory: str | Path,
    params: Any,
    config: Config,
    *,
    opt_state: Any = None,
    history: dict | None = None,
    step: int = 0,
    loop: dict | None = None,
    kind: str = "latest",
) -> Path:
    """Saves a checkpoint, atomically.

    Args:
      directory: the run's folder (created if missing).
      params: model parameters.
      config: the run's config, stored as JSON metadata.
      opt_state: optimizer state to resume from (omit for `best`).
      history: the training history as a JSON-compatible dict.
      step: the epoch (or other progress count) the checkpoint holds; it
        also numbers the checkpoint's folder unless that number is taken.
      loop: JSON-compatible position of the training loop.
      kind: "best" or "latest".

    Returns:
      The folder of the new checkpoint.

    Raises:
      CheckpointError: the folder cannot be written (the previous
        checkpoint of that kind stays loadable).
    """
    directory = Path(directory)
    items = {"params": ocp.args.StandardSave(params)}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "history": history or {},
        "loop": loop or {},
        "step": int(step),
        "has_opt_state": opt_state is not None,
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _manager(directory, kind) as manager:
            # A step already on disk (saved by a run that was killed before
            # its next save) is never overwritten in place: the new
            # checkpoint takes the next number and then replaces it.
            number = max(int(step), (manager.latest_step() or 0) + 1)
            manager.save(
                number,
                force=True,
                args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items),
            )
            manager.wait_until_finished()
    except CheckpointError:
        raise
    except Exception as e:  # Orbax raises many types for I/O failures.
        raise CheckpointError(
            f"could not save the {kind} checkpoint in {str(directory)!r}: "
            f"{type(e).__name__}: {e}. The previous checkpoint, if any, is intact."
        ) from e
    return directory / kind / str(number)


def exists(directory: str | Path, kind: str = "latest") -> bool:
    """Whether a complete checkpoint of that kind exists."""
    path = Path(directory) / kind
    if not path.is_dir():
        return False
    try:
        with _manager(Path(directory), kind, read_only=True) as manager:
            return manager.latest_step() is not None
    except Exception:  # noqa: BLE001 - an unreadable folder has no checkpoint
        return False


def load_meta(directory: str | Path, kind: str = "best") -> dict:
    """The JSON metadata of a checkpoint (config, history, loop position)."""
    with _open(directory, kind) as (manager, step):
        try:
            out = manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as e:
            raise _damaged(directory, kind, e) from e
    meta = out["meta"]
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(Path(directory) / kind)!r} has format "
            f"version {meta.get('format_version')!r}; this library "
            f"reads version {FORMAT_VERSION}"
        )
    return meta


def load_config(directory: str | Path, kind: str = "best") -> Config:
    """The config stored in a checkpoint."""
    try:
        return Config.from_dict(load_meta(directory, kind)["config"])
    except ConfigError as e:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} holds an invalid config: {e}"
        ) from e


def load_params(
    directory: str | Path, *, kind: str = "best", config: Config | None = None
) -> tuple[Any, Config]:
    """Loads trained parameters and the config they were trained with.

    Args:
      directory: the run's folder.
      kind: "best" (default) or "latest".
      config: if given, its model section must equal the stored one.

    Returns:
      `(params, config)`.

    Raises:
      CheckpointError: missing, damaged, or not matching `config`.
    """
    stored = load_config(directory, kind)
    if config is not None and config.model != stored.model:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} was trained with model {stored.model}, "
            f"which differs from the requested {config.model}"
        )
    from songrec_jax import models  # local: models imports jax-heavy modules

    abstract = jax.eval_shape(lambda: models.init(stored, key=jax.random.key(0)))
    state = restore_state(directory, {"params": abstract}, kind=kind)
    return state["params"], stored


def restore_state(
    directory: str | Path, abstract_state: dict, *, kind: str = "latest"
) -> dict:
    """Restores saved items into the structure of `abstract_state`.

    Args:
      directory: the run's folder.
      abstract_state: `{"params": tree[, "opt_state": tree]}` of arrays or
        `jax.ShapeDtypeStruct`s (for example from `jax.eval_shape`), so
        optimizer states keep their types. Give the leaves a `sharding`
        to restore onto devices.
      kind: "best" or "latest".

    Returns:
      A dict with the same keys as `abstract_state`.
    """
    unknown = set(abstract_state) - {"params", "opt_state"}
    if unknown:
        raise CheckpointError(
            f"cannot restore items {sorted(unknown)}; accepted: params, opt_state"
        )
    with _open(directory, kind) as (manager, step):
        try:
            meta = manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )["meta"]
        except Exception as e:
            raise _damaged(directory, kind, e) from e
        if "opt_state" in abstract_state and not meta.get("has_opt_state"):
            raise CheckpointError(
                f"checkpoint {str(Path(directory) / kind)!r} "
                "holds no optimizer state to resume from"
            )
        try:
            out = manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        name: ocp.args.StandardRestore(tree)
                        for name, tree in abstract_state.items()
                    }
                ),
            )
        except Exception as e:
            raise _damaged(directory, kind, e) from e
    return {name: out[name] for name in abstract_state}


class _open:
    def __init__(self, directory, kind):
        self.directory = Path(directory)
        self.kind = kind

    def __enter__(self):
        path = self.directory / self.kind
        if not path.is_dir():
            raise CheckpointError(
                f"no {self.kind} checkpoint in "
                f"{str(self.directory)!r} (expected a folder "
                f"{str(path)!r}; train first)"
            )
        try:
            self.manager = _manager(self.directory, self.kind, read_only=True)
            step = self.manager.latest_step()
        except Exception as e:
            raise _damaged(self.directory, self.kind, e) from e
        if step is None:
            self.manager.close()
            raise CheckpointError(
                f"the {self.kind} folder of {str(self.directory)!r} "
                "holds no complete checkpoint"
            )
        return self.manager, step

    def __exit__(self, *exc):
        self.manager.close()
        return False


def _damaged(directory, kind, error) -> CheckpointError:
    return CheckpointError(
        f"the {kind} checkpoint in {str(directory)!r} is damaged "
        f"or unreadable: {type(error).__name__}: {error}"
    )
