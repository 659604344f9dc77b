"""Sharding checks on 8 virtual CPU devices, run by test_sharding.py.

JAX fixes its device count when it starts, so these checks run in a
process of their own: `python tests/_sharded_checks.py OUT.json`. Each
check records plain numbers and flags in one JSON object; the tests
assert on them. A check that raises records its traceback instead, so
the others still run.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("TQDM_DISABLE", "1")

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from songrec_jax import (  # noqa: E402
    checkpointing,
    models,
    recommend,
    sharding,
    synthetic,
    training,
)
from songrec_jax.config import (  # noqa: E402
    Config,
    LossConfig,
    ModelConfig,
    TrainConfig,
)
from songrec_jax.errors import ConfigError  # noqa: E402

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
N_SONGS = 37  # pads to 40 on 8 devices
BASE = Config(
    model=ModelConfig(
        kind="vae", n_songs=N_SONGS, input_len=6, dims=(8,), pooling="attention"
    ),
    loss=LossConfig(name="ce", beta=0.5),
    train=TrainConfig(batch_size=8, learning_rate=0.05),
)
RNG = np.random.default_rng(0)


def _batch(n_outputs: int) -> dict:
    inputs = RNG.integers(-1, N_SONGS, (8, 6)).astype(np.int32)
    targets = np.zeros((8, n_outputs), np.float32)
    targets[np.arange(8)[:, None], RNG.integers(0, N_SONGS, (8, 3))] = 1.0
    weights = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)
    return {"inputs": inputs, "targets": targets, "weights": weights}


def _max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y))))
        for x, y in zip(
            jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
        )
    )


def _item_shards_ok(tree, axes, n_outputs: int, model: int) -> bool:
    """Every song-indexed array holds n_outputs / model songs per device."""
    ok = True
    for leaf, axis in zip(
        jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(axes), strict=True
    ):
        for shard in leaf.addressable_shards:
            if axis == sharding.NO_ITEM_AXIS:
                ok &= shard.data.shape == leaf.shape
            else:
                ok &= shard.data.shape[axis] == n_outputs // model
    return bool(ok)


def check_mesh() -> dict:
    out = {
        "default": list(sharding.make_mesh().devices.shape),
        "model2": list(sharding.make_mesh(model=2).devices.shape),
        "subset": sharding.make_mesh(2, 2, devices=jax.devices()[:4]).size,
        "axes": list(sharding.make_mesh().axis_names),
    }
    errors = []
    for args in [(3, 2), (None, 3), (0, 8), (16, 1)]:
        try:
            sharding.make_mesh(*args)
            errors.append(None)
        except ConfigError as e:
            errors.append(str(e))
    out["errors"] = errors
    return out


def check_train_steps(state: dict) -> dict:
    config = sharding.padded_config(BASE, sharding.make_mesh())
    optimizer = training.make_optimizer(config)
    params = models.init(config, key=jax.random.key(0))
    batches = [_batch(config.model.n_outputs) for _ in range(2)]
    keys = [jax.random.key(10), jax.random.key(11)]

    reference = {"params": params, "opt_state": optimizer.init(params)}
    reference = jax.tree_util.tree_map(jnp.copy, reference)
    step = training.make_train_step(config, optimizer)
    reference_metrics = []
    for batch, key in zip(batches, keys, strict=True):
        reference, metrics = step(reference, batch, key, jnp.float32(0.5))
        reference_metrics.append(metrics)
    state["config"], state["reference"] = config, reference

    out = {"n_outputs": config.model.n_outputs}
    mesh = sharding.make_mesh(4, 2)
    sharded_init = sharding.init_params(config, mesh, key=jax.random.key(0))
    out["init_equal"] = _max_diff(sharded_init, params) == 0.0
    for shape in MESHES:
        mesh = sharding.make_mesh(*shape)
        # A copy: on a mesh, device 0's shard may share the buffer of the
        # array it came from, and the step donates it.
        p = sharding.shard_params(jax.tree_util.tree_map(jnp.copy, params), mesh)
        opt_state = jax.tree_util.tree_map(jnp.copy, optimizer.init(params))
        opt_state = jax.device_put(
            opt_state, sharding.opt_state_shardings(optimizer, params, mesh)
        )
        current = {"params": p, "opt_state": opt_state}
        sharded_step = sharding.make_train_step(config, optimizer, mesh)
        metrics = []
        for batch, key in zip(batches, keys, strict=True):
            current, m = sharded_step(current, batch, key, jnp.float32(0.5))
            metrics.append(m)
        axes = sharding.item_axes(current["params"])
        moments = current["opt_state"].inner_state[0]
        out[str(shape)] = {
            "state_diff": _max_diff(current, reference),
            "metrics_diff": _max_diff(metrics, reference_metrics),
            "compiles": sharded_step.jitted._cache_size(),
            "params_sharded": _item_shards_ok(
                current["params"], axes, config.model.n_outputs, shape[1]
            ),
            "moments_sharded": _item_shards_ok(
                moments.mu, axes, config.model.n_outputs, shape[1]
            )
            and _item_shards_ok(moments.nu, axes, config.model.n_outputs, shape[1]),
            "output_spec": str(
                current["params"]["params"]["output"]["kernel"].sharding.spec
            ),
            "bytes_per_device": sorted(
                set(sharding.bytes_per_device(current["params"]).values())
            ),
            "bytes_unsharded": sum(
                x.nbytes for x in jax.tree_util.tree_leaves(reference["params"])
            ),
        }
        state[shape] = current
    return out


def check_top_k(state: dict) -> dict:
    config = state["config"]
    x = RNG.integers(-1, N_SONGS, (13, 6)).astype(np.int32)
    x[0] = [0, 9, 10, 19, 20, 36]  # songs in every slice of every mesh
    out = {}
    for shape, probabilities in [((4, 2), None), ((2, 4), "sigmoid")]:
        mesh = sharding.make_mesh(*shape)
        expected = recommend.recommend(
            state["reference"]["params"], config, x, k=12, probabilities=probabilities
        )
        got = sharding.sharded_top_k(
            state[shape]["params"],
            config,
            x,
            12,
            mesh,
            batch_size=8,
            probabilities=probabilities,
        )
        seen = [
            set(row[row >= 0]) & set(top)
            for row, top in zip(x, got.indices, strict=True)
        ]
        unmasked = sharding.sharded_top_k(
            state[shape]["params"],
            config,
            x,
            12,
            mesh,
            exclude_seen=False,
            probabilities=probabilities,
        )
        out[str(shape)] = {
            "indices_equal": bool(np.array_equal(got.indices, expected.indices)),
            "score_diff": float(np.max(np.abs(got.scores - expected.scores))),
            "seen_recommended": sum(len(s) for s in seen),
            "seen_without_mask": sum(
                len(set(row[row >= 0]) & set(top))
                for row, top in zip(x, unmasked.indices, strict=True)
            ),
            "max_index": int(got.indices.max()),
        }
    state["x"] = x
    return out


def check_checkpoints(state: dict, directory: str) -> dict:
    config, x = state["config"], state["x"]
    saved = state[(4, 2)]
    checkpointing.save(
        directory + "/sharded",
        saved["params"],
        config,
        opt_state=saved["opt_state"],
        step=1,
        kind="latest",
    )
    mesh = sharding.make_mesh(2, 4)
    restored, restored_config = sharding.restore_sharded(
        directory + "/sharded", None, mesh
    )
    before = sharding.sharded_top_k(
        saved["params"], config, x, 12, sharding.make_mesh(4, 2)
    )
    after = sharding.sharded_top_k(restored["params"], restored_config, x, 12, mesh)
    axes = sharding.item_axes(restored["params"])
    out = {
        "same_config": restored_config == config,
        "state_diff": _max_diff(restored, saved),
        "on_new_mesh": restored["params"]["params"]["output"]["kernel"].sharding.mesh
        == mesh,
        "params_sharded": _item_shards_ok(
            restored["params"], axes, config.model.n_outputs, 4
        ),
        "indices_equal": bool(np.array_equal(before.indices, after.indices)),
        "score_diff": float(np.max(np.abs(before.scores - after.scores))),
    }
    # What resuming in `train` does: restore into concrete sharded arrays.
    resumed = checkpointing.restore_state(directory + "/sharded", saved)
    out["resume_keeps_sharding"] = all(
        a.sharding == b.sharding
        for a, b in zip(
            jax.tree_util.tree_leaves(resumed),
            jax.tree_util.tree_leaves(saved),
            strict=True,
        )
    )

    # A one-device checkpoint of 37 songs, restored onto 8 devices.
    unpadded = BASE
    optimizer = training.make_optimizer(unpadded)
    params = models.init(unpadded, key=jax.random.key(3))
    opt_state = optimizer.init(params)
    opt_state = jax.tree_util.tree_map(lambda a: a + 1, opt_state)  # nonzero
    checkpointing.save(
        directory + "/single",
        params,
        unpadded,
        opt_state=opt_state,
        step=1,
        kind="latest",
    )
    repadded, repadded_config = sharding.restore_sharded(
        directory + "/single", unpadded, mesh
    )
    kernel = np.asarray(repadded["params"]["params"]["output"]["kernel"])
    mu = np.asarray(
        repadded["opt_state"].inner_state[0].mu["params"]["bag"]["embedding"]
    )
    out["repad"] = {
        "n_outputs": repadded_config.model.n_outputs,
        "kernel_equal": bool(
            np.array_equal(
                kernel, np.pad(params["params"]["output"]["kernel"], ((0, 3), (0, 0)))
            )
        ),
        "moment_equal": bool(
            np.array_equal(
                mu,
                np.pad(
                    opt_state.inner_state[0].mu["params"]["bag"]["embedding"],
                    ((0, 3), (0, 0)),
                ),
            )
        ),
        "params_sharded": _item_shards_ok(
            repadded["params"], sharding.item_axes(repadded["params"]), 40, 4
        ),
        "count": int(repadded["opt_state"].count),
    }
    return out


def check_train(directory: str) -> dict:
    data = synthetic.generate(96, N_SONGS, 4, key=0)
    config = BASE.replace(
        train=TrainConfig(batch_size=16, epochs=1, seed=0, learning_rate=0.01)
    )
    mesh = sharding.make_mesh(4, 2)
    result = training.train(
        config, data, mesh=mesh, directory=directory, progress=False
    )
    kernel = result.params["params"]["output"]["kernel"]
    # The sharded validation loss equals the one-device evaluation.
    single = jax.device_put(result.params, jax.devices()[0])
    val = training.evaluate_split(
        single, result.config, result.splits.val, beta=config.loss.beta
    )
    recorded = result.history.records[-1]
    return {
        "n_outputs": result.config.model.n_outputs,
        "stored_n_outputs": checkpointing.load_config(
            directory, "latest"
        ).model.n_outputs,
        "kernel_spec": str(kernel.sharding.spec),
        "finite": all(
            np.isfinite(v) for part in ("train", "val") for v in recorded[part].values()
        ),
        "val_diff": max(abs(recorded["val"][name] - val[name]) for name in val),
    }


def check_lazy_batches() -> dict:
    """A batch with targets built by blocks equals the dense batch."""
    from songrec_jax import splits

    data = synthetic.generate(40, N_SONGS, 3, key=0)
    split = splits.input_target_split(data, np.arange(40), 6, key=0)
    mesh = sharding.make_mesh(2, 4)
    dense = next(splits.batches(split, 8, 40, key=1))
    lazy = next(splits.batches(split, 8, 40, key=1, lazy_targets=True))
    placed = sharding.shard_batch(lazy, mesh)["targets"]
    return {
        "equal": bool(np.array_equal(np.asarray(placed), dense["targets"])),
        "spec": str(placed.sharding.spec),
        "shard_shapes": sorted({s.data.shape for s in placed.addressable_shards}),
    }


def main(path: str) -> None:
    results = {"devices": jax.device_count()}
    state: dict = {}
    with tempfile.TemporaryDirectory() as directory:
        checks = [
            ("mesh", check_mesh),
            ("train_step", lambda: check_train_steps(state)),
            ("top_k", lambda: check_top_k(state)),
            ("checkpoint", lambda: check_checkpoints(state, directory)),
            ("train", lambda: check_train(directory + "/run")),
            ("lazy_batches", check_lazy_batches),
        ]
        for name, check in checks:
            start = time.perf_counter()
            try:
                results[name] = check()
            except Exception:  # noqa: BLE001 - reported to the test instead
                results[name] = {"error": traceback.format_exc()}
            results.setdefault("seconds", {})[name] = time.perf_counter() - start
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
