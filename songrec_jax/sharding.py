"""Training and scoring on several devices and hosts with `jax.sharding`.

A `Mesh` arranges the devices in a grid with two named axes:

* "data": the users of a batch are split over it (data parallelism);
* "model": the songs are split over it. The output layer (kernel
  `[n_outputs, hidden]`, bias `[n_outputs]`), the embedding table
  `[n_outputs, width]` and the attention score of each song live in
  slices of `n_outputs / model` songs, so no device ever holds a whole
  song-sized matrix. Everything else (the small hidden layers) is
  replicated.

The song count must divide evenly over the "model" axis: `padded_config`
rounds `n_outputs` up with `ModelConfig.song_multiple`; the model masks
the padded logits to a large negative value, so they add nothing to any
loss (their targets are 0) and never reach a ranking.

The pieces:

* `make_mesh`, `padded_config`, `param_shardings`, `opt_state_shardings`,
  `init_params`, `init_opt_state`: where every array lives;
* `make_train_step`, `make_eval_step`: the steps of `training`, compiled
  with explicit input and output shardings (`training.train(..., mesh=...)`
  uses them);
* `sharded_top_k`: each device ranks its slice of songs for its users; the
  `k` best of every slice are gathered over "model" and ranked again;
* `restore_sharded`: restores a checkpoint straight onto a mesh of any
  shape, padding the songs anew when the mesh needs it;
* `initialize_distributed`, `process_users`, `process_block`,
  `global_batch`: several hosts, each running the same program (JAX's
  multi-controller model), each training on its own share of the users.

Running on one host with N CPU "devices" (for tests) needs
`XLA_FLAGS=--xla_force_host_platform_device_count=N` before JAX starts;
speed on such virtual devices says nothing about real accelerators.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from songrec_jax import checkpointing, models, recommend, splits, training
from songrec_jax.config import Config, ModelConfig
from songrec_jax.errors import CheckpointError, ConfigError, InputError

log = logging.getLogger(__name__)

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)

NO_ITEM_AXIS = -1
"""`item_axes` marks a replicated parameter with this value."""

# The parameters with one entry per song, and the axis that indexes songs.
_ITEM_AXES = {
    ("params", "output", "kernel"): 0,
    ("params", "output", "bias"): 0,
    ("params", "bag", "embedding"): 0,
    ("params", "bag", "attention"): 0,
}

Params = models.Params
Batch = dict[str, Any]


# ----------------------------------------------------------------------------
# The mesh and the padded config.


def make_mesh(
    data: int | None = None, model: int = 1, *, devices: list | None = None
) -> Mesh:
    """A device mesh with axes ("data", "model").

    Args:
      data: devices over which batches are split; None uses every device
        not taken by `model`.
      model: devices over which the songs are split.
      devices: the devices to use; None takes all of `jax.devices()` (every
        process's devices after `initialize_distributed`).

    Returns:
      A `Mesh` of shape `(data, model)` whose axes are in automatic mode,
      so `jit` places the intermediate values.

    Raises:
      ConfigError: a size is not a positive integer, or `data * model`
        differs from the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n == 0:
        raise ConfigError("devices=[] is empty; give at least one device")
    _check_size("model", model)
    if data is None:
        if n % model:
            raise ConfigError(
                f"model={model} does not divide the {n} devices; "
                f"accepted: a divisor of {n}"
            )
        data = n // model
    _check_size("data", data)
    if data * model != n:
        raise ConfigError(
            f"a mesh of data={data} x model={model} needs "
            f"{data * model} devices, but {n} are given; accepted: "
            f"data * model == {n}"
        )
    shape = (data, model)
    try:
        from jax.sharding import AxisType
    except ImportError:  # older JAX: every axis is automatic
        return jax.make_mesh(shape, AXES, devices=devices)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def _check_size(name: str, value) -> None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < 1:
        raise ConfigError(f"{name}={value!r} must be an integer >= 1")


def padded_config(config: Config | ModelConfig, mesh: Mesh) -> Config | ModelConfig:
    """`config` with its songs padded to split evenly over the mesh.

    `n_outputs` is rounded up to a multiple of the mesh's device count
    (not only of its "model" size), so a checkpoint saved on one mesh
    restores without re-padding on any other mesh of as many devices. A
    config whose `n_outputs` already divides is returned unchanged.

    Args:
      config: a full `Config` or its `ModelConfig`.
      mesh: the target mesh.

    Returns:
      A config of the same type, differing at most in `song_multiple`.
    """
    c = models.model_config(config)
    if c.n_outputs % mesh.size == 0:
        return config
    multiple = math.lcm(c.song_multiple, mesh.size)
    padded = dataclasses.replace(c, song_multiple=multiple)
    if isinstance(config, Config):
        return config.replace(model=padded)
    return padded


def check_config(config: Config | ModelConfig, mesh: Mesh) -> None:
    """Raises ConfigError unless the songs split evenly over "model"."""
    c = models.model_config(config)
    m = mesh.shape[MODEL]
    if c.n_outputs % m:
        raise ConfigError(
            f"n_outputs={c.n_outputs} does not divide over the mesh's "
            f"model={m} devices; pad the config first with "
            "sharding.padded_config(config, mesh)"
        )


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises ConfigError unless `batch_size` splits evenly over "data"."""
    d = mesh.shape[DATA]
    if batch_size % d:
        up = -(-batch_size // d) * d
        raise ConfigError(
            f"train.batch_size={batch_size} does not divide over the "
            f"mesh's data={d} devices; accepted: a multiple of {d} "
            f"(e.g. {up})"
        )


# ----------------------------------------------------------------------------
# Where each array lives.


def _path_names(path) -> tuple:
    return tuple(getattr(entry, "key", getattr(entry, "name", entry)) for entry in path)


def item_axes(params: Params) -> Any:
    """The song axis of every parameter: a tree of ints like `params`.

    Args:
      params: parameters, or their shapes (`jax.eval_shape`).

    Returns:
      The axis that indexes songs (0 or 1) for the output kernel and
      bias, the embedding table and the attention scores; `NO_ITEM_AXIS`
      for every other parameter.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _ITEM_AXES.get(_path_names(path), NO_ITEM_AXIS), params
    )


def _spec(axis: int, ndim: int) -> P:
    if axis == NO_ITEM_AXIS:
        return P()
    return P(*(MODEL if i == axis else None for i in range(ndim)))


def param_shardings(params: Params, mesh: Mesh) -> Any:
    """A `NamedSharding` for every parameter; see the module docstring.

    Args:
      params: parameters, or their shapes (`jax.eval_shape`).
      mesh: the target mesh.

    Returns:
      A tree like `params`: song-indexed parameters are split over
      "model", the others replicated.

    Raises:
      ConfigError: a song axis does not divide over "model".
    """
    m = mesh.shape[MODEL]

    def sharding(leaf, axis):
        if axis != NO_ITEM_AXIS and leaf.shape[axis] % m:
            raise ConfigError(
                f"a parameter of shape {leaf.shape} has "
                f"{leaf.shape[axis]} songs, which do not divide over "
                f"model={m} devices; use sharding.padded_config"
            )
        return NamedSharding(mesh, _spec(axis, len(leaf.shape)))

    return jax.tree_util.tree_map(sharding, params, item_axes(params))


def shard_params(params: Params, mesh: Mesh) -> Params:
    """`params` placed on the mesh by `param_shardings`."""
    return jax.device_put(params, param_shardings(params, mesh))


def opt_state_shardings(
    optimizer: optax.GradientTransformation, params: Params, mesh: Mesh
) -> Any:
    """The shardings of `optimizer.init(params)`.

    Every part of the optimizer state shaped like the parameters (Adam's
    moments) is sharded like them, matched by `optax.tree_map_params`;
    the rest (step counts, hyperparameters) is replicated.

    Args:
      optimizer: the optimizer.
      params: parameters, or their shapes.
      mesh: the target mesh.

    Returns:
      A tree of `NamedSharding` with the structure of the optimizer state.
    """
    abstract = jax.eval_shape(optimizer.init, params)
    replicated = NamedSharding(mesh, P())
    return optax.tree_utils.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract,
        param_shardings(params, mesh),
        transform_non_params=lambda _: replicated,
    )


def state_shardings(
    config: Config, optimizer: optax.GradientTransformation, mesh: Mesh
) -> dict[str, Any]:
    """Shardings of a training state `{"params", "opt_state"}` of `config`."""
    params = abstract_params(config)
    return {
        "params": param_shardings(params, mesh),
        "opt_state": opt_state_shardings(optimizer, params, mesh),
    }


def abstract_params(config: Config | ModelConfig) -> Any:
    """The shapes and dtypes of the parameters of `config`, allocating nothing.

    The tree is cached per model config and shared: do not modify it.
    """
    return _abstract_params(models.model_config(config))


@functools.lru_cache(maxsize=16)
def _abstract_params(config: ModelConfig) -> Any:
    return jax.eval_shape(lambda: models.init(config, key=jax.random.key(0)))


def init_params(
    config: Config,
    mesh: Mesh,
    *,
    key: jax.Array,
    song_popularity: np.ndarray | None = None,
) -> Params:
    """`models.init`, computed directly in its shards.

    No device ever holds more than its shard, and the values equal those
    of `models.init` with the same key.

    Args:
      config: a config padded for `mesh`.
      mesh: the target mesh.
      key: PRNG key for the weights (the same on every process).
      song_popularity: as in `models.init`.
    """
    check_config(config, mesh)
    shardings = param_shardings(abstract_params(config), mesh)
    init = jax.jit(
        lambda key: models.init(config, key=key, song_popularity=song_popularity),
        out_shardings=shardings,
    )
    return init(key)


def init_opt_state(
    optimizer: optax.GradientTransformation, params: Params, mesh: Mesh
) -> Any:
    """`optimizer.init(params)`, placed by `opt_state_shardings`."""
    shardings = opt_state_shardings(optimizer, params, mesh)
    return jax.jit(optimizer.init, out_shardings=shardings)(params)


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    """Shardings of a training batch: users over "data", songs over "model"."""
    users = NamedSharding(mesh, P(DATA))
    return {
        "inputs": users,
        "targets": NamedSharding(mesh, P(DATA, MODEL)),
        "weights": users,
    }


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Places a batch (NumPy or JAX arrays) by `batch_shardings`.

    With several processes each must pass the same global batch; every
    process then copies only the rows its devices hold. Targets given as
    `splits.DenseTargets` (what `training.train` passes on a mesh) are
    built only for those rows and songs.

    Raises:
      InputError: the batch size does not divide over "data".
    """
    shardings = batch_shardings(mesh)
    d = mesh.shape[DATA]
    out = {}
    for name, value in batch.items():
        if len(value) % d:
            raise InputError(
                f"a batch of {len(value)} rows does not divide over the "
                f"mesh's data={d} devices; pad it to a multiple of {d}"
            )
        out[name] = _place(value, shardings[name])
    return out


def _place(value: ArrayLike, sharding: NamedSharding) -> jax.Array:
    if isinstance(value, jax.Array):
        return jax.device_put(value, sharding)
    if isinstance(value, splits.DenseTargets):  # built block by block
        return jax.make_array_from_callback(value.shape, sharding, value.__getitem__)
    array = np.asarray(value)
    return jax.make_array_from_callback(array.shape, sharding, lambda i: array[i])


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of the arrays of `tree` held by each addressable device."""
    out: dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def shard_bytes(abstract: Any, shardings: Any) -> int:
    """Bytes one device holds of arrays of these shapes and shardings.

    Computed from the shardings alone (nothing is allocated): the largest
    shard of each array, summed.
    """

    def nbytes(leaf, sharding):
        shape = sharding.shard_shape(leaf.shape)
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize

    return sum(
        jax.tree_util.tree_leaves(jax.tree_util.tree_map(nbytes, abstract, shardings))
    )


# ----------------------------------------------------------------------------
# Training and evaluation steps.


def make_train_step(
    config: Config, optimizer: optax.GradientTransformation, mesh: Mesh
):
    """`training.make_train_step`, compiled for the mesh.

    The step is `training.plain_train_step` (the fused step's row-sparse
    updates and blocked loop do not split over devices), compiled with the
    state sharded by `state_shardings` (and donated), the batch by
    `batch_shardings`, and the key, `beta` and metrics replicated.

    Args:
      config: a config padded for `mesh`.
      optimizer: the optimizer of the state.
      mesh: the target mesh.

    Returns:
      `step(state, batch, key, beta) -> (state, metrics)`, as in
      `training`; `batch` may hold NumPy arrays. `step.jitted` is the
      compiled function (for `lower`, `_cache_size`).
    """
    check_config(config, mesh)
    check_batch_size(config.train.batch_size, mesh)
    shardings = state_shardings(config, optimizer, mesh)
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        training.plain_train_step(config, optimizer),
        in_shardings=(shardings, batch_shardings(mesh), replicated, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )

    def step(state, batch, key, beta):
        state = jax.device_put(state, shardings)
        return jitted(state, shard_batch(batch, mesh), key, beta)

    step.jitted = jitted
    return step


def make_eval_step(config: Config, mesh: Mesh):
    """`training.make_eval_step`, compiled for the mesh.

    Returns:
      `step(params, batch, beta) -> metrics` (replicated per-batch sums).
    """
    check_config(config, mesh)
    shardings = param_shardings(abstract_params(config), mesh)
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        training.make_eval_step(config).__wrapped__,
        in_shardings=(shardings, batch_shardings(mesh), replicated),
        out_shardings=replicated,
    )

    def step(params, batch, beta):
        params = jax.device_put(params, shardings)
        return jitted(params, shard_batch(batch, mesh), beta)

    step.jitted = jitted
    return step


# ----------------------------------------------------------------------------
# Top-k over songs split across devices.


def _shard_map(f, mesh, in_specs, out_specs):
    # The outputs are gathered over "model", hence equal on its devices;
    # JAX cannot infer that through `all_gather`, so the check is off.
    if hasattr(jax, "shard_map"):
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
    from jax.experimental.shard_map import shard_map

    return shard_map(
        f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False
    )


def _local_top_k(logits, x, *, n_songs, k, sigmoid, exclude_seen):
    """Top-k of one block of users x one slice of songs, merged over "model".

    `logits [b, w]` are the scores of songs `offset .. offset + w - 1` of
    this device's slice; `x [b, L]` the users' inputs (global song ids).
    """
    width = logits.shape[1]
    offset = lax.axis_index(MODEL) * width
    songs = offset + jnp.arange(width)
    real = songs < n_songs
    if sigmoid:
        scores = jax.nn.log_sigmoid(logits)
    else:  # log_softmax over every real song of every slice
        local_max = jnp.max(jnp.where(real, logits, -jnp.inf), axis=1, keepdims=True)
        shifted = logits - lax.pmax(local_max, MODEL)
        local_sum = jnp.sum(
            jnp.where(real, jnp.exp(shifted), 0.0), axis=1, keepdims=True
        )
        scores = shifted - jnp.log(lax.psum(local_sum, MODEL))
    exclude = jnp.broadcast_to(~real, scores.shape)
    if exclude_seen:
        here = (x >= offset) & (x < offset + width)
        rows = jnp.arange(x.shape[0])[:, None]
        exclude = exclude.at[rows, jnp.where(here, x - offset, width)].set(
            True, mode="drop"
        )
    scores = jnp.where(exclude, -jnp.inf, scores)
    values, local = lax.top_k(scores, min(k, width))
    candidates = lax.all_gather(values, MODEL, axis=1, tiled=True)
    ids = lax.all_gather(local + offset, MODEL, axis=1, tiled=True)
    # Candidates come slice by slice, each by (score desc, id asc), and
    # top_k keeps the earlier of equal values, so ties go to the lower id.
    values, position = lax.top_k(candidates, k)
    indices = jnp.take_along_axis(ids, position, axis=1)
    return jnp.where(values > -jnp.inf, indices, -1).astype(jnp.int32), values


@functools.lru_cache(maxsize=32)
def _top_k_kernel(
    config: ModelConfig, k: int, sigmoid: bool, exclude_seen: bool, mesh: Mesh
):
    users = NamedSharding(mesh, P(DATA))
    params = param_shardings(abstract_params(config), mesh)
    local = _shard_map(
        functools.partial(
            _local_top_k,
            n_songs=config.n_songs,
            k=k,
            sigmoid=sigmoid,
            exclude_seen=exclude_seen,
        ),
        mesh,
        in_specs=(P(DATA, MODEL), P(DATA)),
        out_specs=(P(DATA), P(DATA)),
    )

    def kernel(params, x):
        logits, _ = models._forward(params, config, x, None, False)
        logits = lax.with_sharding_constraint(
            logits, NamedSharding(mesh, P(DATA, MODEL))
        )
        return local(logits, x)

    return jax.jit(kernel, in_shardings=(params, users), out_shardings=users)


def sharded_top_k(
    params: Params,
    config: Config | ModelConfig,
    inputs: ArrayLike,
    k: int,
    mesh: Mesh,
    *,
    exclude_seen: bool = True,
    batch_size: int = 1024,
    probabilities: str | None = None,
) -> recommend.Recommendations:
    """`recommend.recommend` (without steering) with songs split over devices.

    Users are split over "data" and songs over "model". Each device scores
    its users against its slice of songs, masks the padded songs and the
    users' input songs that fall in its slice (exactly: every song belongs
    to one slice), and keeps its `k` best with their global song ids; the
    candidates of all slices are gathered over "model" and the `k` best of
    them kept. The result equals the unsharded ranking, ties included
    (lower song id first). The softmax normaliser is a sum over slices.

    Args:
      params: parameters (placed on the mesh if they are not already).
      config: a config padded for `mesh`; a full `Config` decides sigmoid
        or softmax scores by its loss, as in `recommend`.
      inputs: int `[n_users, input_len]` song indices, -1 padded.
      k: songs per user, `1 <= k <= n_songs`.
      mesh: the mesh.
      exclude_seen: never recommend a user's input songs.
      batch_size: users per compiled call (rounded up to a multiple of
        the "data" size); bounds memory to about `batch_size * n_outputs`
        floats over all devices.
      probabilities: "softmax" or "sigmoid" to override the config.

    Returns:
      `Recommendations(indices int32 [n_users, k], scores float32
      [n_users, k])`: log-probabilities, -1 / -inf in slots left over.
      With several processes, every process passes the same inputs and
      receives every user's result.
    """
    c = models.model_config(config)
    check_config(c, mesh)
    sigmoid = recommend.probability_kind(config, probabilities) == "sigmoid"
    x = np.asarray(models.check_inputs(inputs, c))
    if (
        not isinstance(k, numbers.Integral)
        or isinstance(k, bool)
        or not (1 <= k <= c.n_songs)
    ):
        raise InputError(f"k={k!r} must be an integer in [1, n_songs={c.n_songs}]")
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be an integer >= 1")
    kernel = _top_k_kernel(c, int(k), sigmoid, bool(exclude_seen), mesh)
    params = jax.device_put(params, param_shardings(params, mesh))
    d = mesh.shape[DATA]
    n = len(x)
    chunk = -(-min(batch_size, max(n, 1)) // d) * d
    users = NamedSharding(mesh, P(DATA))
    indices = np.empty((n, k), np.int32)
    scores = np.empty((n, k), np.float32)
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        size = len(block)
        if size < chunk:
            block = np.concatenate(
                [block, np.full((chunk - size, c.input_len), -1, np.int32)]
            )
        top, values = kernel(params, _place(block, users))
        indices[start : start + size] = _to_host(top)[:size]
        scores[start : start + size] = _to_host(values)[:size]
    return recommend.Recommendations(indices, scores)


def _to_host(array: jax.Array) -> np.ndarray:
    if array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


# ----------------------------------------------------------------------------
# Checkpoints.


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        abstract,
        shardings,
    )


def _pad_songs(array: np.ndarray, axis: int, n_outputs: int) -> np.ndarray:
    if axis == NO_ITEM_AXIS:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, n_outputs - array.shape[axis])
    return np.pad(array, widths)


def restore_sharded(
    directory: str | Path,
    config: Config | None,
    mesh: Mesh,
    *,
    kind: str = "latest",
    opt_state: bool | None = None,
) -> tuple[dict[str, Any], Config]:
    """Restores a checkpoint onto a mesh, whatever mesh it was saved from.

    The arrays are read straight into their shards. When the stored songs
    do not divide over the new mesh (a checkpoint from one device, say),
    the checkpoint is read into host memory instead, its song axes padded
    with zeros (padded logits are masked, and padded Adam moments stay 0),
    and then placed; the returned config records the new padding.

    Args:
      directory: the run's folder (see `checkpointing`).
      config: if given, its model must equal the stored one but for
        `song_multiple`; None takes the stored config.
      mesh: the target mesh.
      kind: "best" or "latest".
      opt_state: restore the optimizer state too; None does when the
        checkpoint holds one.

    Returns:
      `(state, config)`: `state` has "params" (and "opt_state") placed by
      `param_shardings` / `opt_state_shardings`; `config` is the stored
      config padded for `mesh` (`padded_config`).

    Raises:
      CheckpointError: missing or damaged, or its model differs from
        `config`'s.
    """
    stored = checkpointing.load_config(directory, kind)
    if config is not None and _unpadded(config.model) != _unpadded(stored.model):
        raise CheckpointError(
            f"checkpoint {str(directory)!r} was trained with model {stored.model}, "
            f"which differs from the requested {config.model}"
        )
    if opt_state is None:
        opt_state = bool(checkpointing.load_meta(directory, kind)["has_opt_state"])
    target = padded_config(stored, mesh)
    optimizer = training.make_optimizer(stored)
    shardings = state_shardings(target, optimizer, mesh)
    names = ("params", "opt_state") if opt_state else ("params",)
    shardings = {name: shardings[name] for name in names}

    def abstract(config):
        params = abstract_params(config)
        return {"params": params, "opt_state": jax.eval_shape(optimizer.init, params)}

    if target.model.n_outputs == stored.model.n_outputs:
        tree = abstract(target)
        tree = _with_shardings({n: tree[n] for n in names}, shardings)
        return checkpointing.restore_state(directory, tree, kind=kind), target

    log.info(
        "re-padding %s from %d to %d songs for a mesh of %d devices",
        directory,
        stored.model.n_outputs,
        target.model.n_outputs,
        mesh.size,
    )
    host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    stored_tree = abstract(stored)
    stored_tree = {n: stored_tree[n] for n in names}
    state = checkpointing.restore_state(
        directory,
        _with_shardings(
            stored_tree, jax.tree_util.tree_map(lambda _: host, stored_tree)
        ),
        kind=kind,
    )
    axes = item_axes(state["params"])
    n_outputs = target.model.n_outputs

    def pad(array, axis):
        return _pad_songs(np.asarray(array), axis, n_outputs)

    padded = {"params": jax.tree_util.tree_map(pad, state["params"], axes)}
    if opt_state:
        padded["opt_state"] = optax.tree_utils.tree_map_params(
            optimizer, pad, state["opt_state"], axes, transform_non_params=np.asarray
        )
    placed = jax.tree_util.tree_map(_place, padded, shardings)
    return placed, target


def _unpadded(model: ModelConfig) -> ModelConfig:
    return dataclasses.replace(model, song_multiple=1)


# ----------------------------------------------------------------------------
# Several hosts.


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={value!r} must be an integer"
        ) from None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[int, int]:
    """Connects the processes of a multi-host run (`jax.distributed`).

    Call it once per process, before any other JAX call. Each argument left
    None is read from the environment (`JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`); what is still missing JAX
    detects on a cluster it knows (Slurm, Open MPI, Kubernetes, TPU pods).
    Afterwards `jax.devices()` lists every process's devices, so
    `make_mesh()` spans them all; every process then runs the same
    program. In training each process loads the data set, and when its
    devices hold whole rows of the mesh's "data" axis (`process_block`),
    it batches only its own share of the training users; otherwise every
    process builds each global batch and places only its devices' rows.

    Args:
      coordinator_address: "host:port" of process 0.
      num_processes: how many processes take part.
      process_id: this process's rank, `0 <= process_id < num_processes`.

    Returns:
      `(jax.process_index(), jax.process_count())`.

    Raises:
      ConfigError: a value is invalid, or JAX cannot connect.
    """
    if coordinator_address is None:
        coordinator_address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    if num_processes is not None:
        _check_size("num_processes", num_processes)
    if process_id is not None and (
        num_processes is not None
        and not (0 <= process_id < num_processes)
        or process_id < 0
    ):
        raise ConfigError(
            f"process_id={process_id} must be in [0, num_processes={num_processes})"
        )
    if jax.distributed.is_initialized():
        log.info("jax.distributed is already initialised")
        return jax.process_index(), jax.process_count()
    kwargs = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    kwargs = {name: value for name, value in kwargs.items() if value is not None}
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"jax.distributed.initialize({kwargs}) failed: {e}. Give "
            "coordinator_address, num_processes and process_id (or set "
            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or run "
            "under a cluster manager JAX detects, and call this before any "
            "other JAX function"
        ) from e
    log.info(
        "process %d of %d, %d local and %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return jax.process_index(), jax.process_count()


def process_users(
    n_users: int, *, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """The contiguous share of `n_users` users this process scores.

    The shares of processes `0 .. count - 1` are consecutive, cover every
    user once, and differ in size by at most one.

    Args:
      n_users: the number of users, >= 0.
      process_index: defaults to `jax.process_index()`.
      process_count: defaults to `jax.process_count()`.
    """
    if not isinstance(n_users, numbers.Integral) or n_users < 0:
        raise InputError(f"n_users={n_users!r} must be an integer >= 0")
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    _check_size("process_count", count)
    if not 0 <= index < count:
        raise InputError(f"process_index={index} must be in [0, {count})")
    return slice(n_users * index // count, n_users * (index + 1) // count)


def process_block(mesh: Mesh) -> tuple[int, int] | None:
    """Where this process's rows of a global batch lie on the mesh.

    When every process holds whole rows of the "data" axis (all "model"
    shards of them) and the same number of them, contiguously, each
    process can build its own part of every global batch from its own
    users: this returns `(index, count)`, the position of this process's
    block of rows among the `count` processes. Otherwise (the model axis
    spans processes, or the mesh is on one process) it returns None and
    every process builds the whole global batch.
    """
    if jax.process_count() == 1:
        return None
    devices = np.asarray(mesh.devices)
    owners = np.vectorize(lambda d: d.process_index)(devices)  # [data, model]
    if not (owners == owners[:, :1]).all():
        return None  # a row of the data axis spans processes
    rows = owners[:, 0]
    processes, sizes = np.unique(rows, return_counts=True)
    mine = np.flatnonzero(rows == jax.process_index())
    if (
        len(processes) != jax.process_count()
        or len(set(sizes.tolist())) != 1
        or len(mine) == 0
        or np.any(np.diff(mine) != 1)
    ):
        return None
    return int(mine[0]) // len(mine), len(processes)


def global_batch(local: Batch, mesh: Mesh, count: int) -> Batch:
    """The global batch made of every process's local rows.

    `local` holds this process's `batch_size / count` rows (see
    `process_block`); each process passes its own.
    """
    shardings = batch_shardings(mesh)
    out = {}
    for name, value in local.items():
        array = np.asarray(value)  # builds `splits.DenseTargets` whole
        shape = (array.shape[0] * count, *array.shape[1:])
        out[name] = jax.make_array_from_process_local_data(
            shardings[name], array, shape
        )
    return out
