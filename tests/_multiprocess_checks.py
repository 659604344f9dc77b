"""One of two processes of a multi-host run on CPU, run by test_sharding.py.

`python tests/_multiprocess_checks.py PROCESS_ID PORT OUT.json`: each of
the two processes has 2 virtual CPU devices; together they form a
(data=2, model=2) mesh across both processes. The process trains one
sharded step and ranks songs with `sharded_top_k`, compares both with a
one-device run on its own first device, then trains with `training.train`
on the mesh (each process on its own share of the users), and writes
what it found as JSON.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from songrec_jax import sharding  # noqa: E402


def main(process_id: int, port: int, path: str) -> None:
    index, count = sharding.initialize_distributed(f"localhost:{port}", 2, process_id)

    import jax.numpy as jnp
    import numpy as np

    from songrec_jax import models, recommend, training
    from songrec_jax.config import Config, LossConfig, ModelConfig, TrainConfig

    mesh = sharding.make_mesh(2, 2)
    config = Config(
        model=ModelConfig(
            kind="vae", n_songs=37, input_len=6, dims=(8,), pooling="attention"
        ),
        loss=LossConfig(name="ce", beta=0.5),
        train=TrainConfig(batch_size=8),
    )
    config = sharding.padded_config(config, mesh)
    optimizer = training.make_optimizer(config)
    rng = np.random.default_rng(0)  # the same global batch in every process
    x = rng.integers(-1, 37, (8, 6)).astype(np.int32)
    targets = np.zeros((8, config.model.n_outputs), np.float32)
    targets[np.arange(8), rng.integers(0, 37, 8)] = 1.0
    batch = {"inputs": x, "targets": targets, "weights": np.ones(8, np.float32)}
    key, beta = jax.random.key(1), jnp.float32(0.5)

    params = sharding.init_params(config, mesh, key=jax.random.key(0))
    state = {
        "params": params,
        "opt_state": sharding.init_opt_state(optimizer, params, mesh),
    }
    state, metrics = sharding.make_train_step(config, optimizer, mesh)(
        state, batch, key, beta
    )
    top = sharding.sharded_top_k(state["params"], config, x, 12, mesh)

    with jax.default_device(jax.local_devices()[0]):
        params = models.init(config, key=jax.random.key(0))
        reference = {"params": params, "opt_state": optimizer.init(params)}
        reference, reference_metrics = training.make_train_step(config, optimizer)(
            reference, batch, key, beta
        )
        expected = recommend.recommend(reference["params"], config, x, k=12)

    kernel = np.asarray(reference["params"]["params"]["output"]["kernel"])
    shards = state["params"]["params"]["output"]["kernel"].addressable_shards
    result = {
        "process": [index, count],
        "devices": [jax.local_device_count(), jax.device_count()],
        "loss_diff": abs(float(metrics["total"]) - float(reference_metrics["total"])),
        "kernel_diff": max(
            float(np.max(np.abs(np.asarray(s.data) - kernel[s.index]))) for s in shards
        ),
        "shard_shapes": sorted({tuple(s.data.shape) for s in shards}),
        "top_k_equal": bool(np.array_equal(top.indices, expected.indices)),
    }
    result.update(train_on_own_users(mesh, count))
    with open(path, "w") as f:
        json.dump(result, f)


def train_on_own_users(mesh, count: int) -> dict:
    """`training.train` on the mesh: each process batches only its share of
    the training users (recorded here), and both end with the same model."""
    import hashlib

    import numpy as np

    from songrec_jax import splits, synthetic, training
    from songrec_jax.config import Config, LossConfig, ModelConfig, TrainConfig

    # 97 training users: shares of 48 and 49, so 6 and 7 batches of 8 rows;
    # the process with fewer takes part in the last step with a padding batch.
    data = synthetic.generate(n_users=121, n_songs=50, n_tags=4, key=3)
    config = Config(
        model=ModelConfig(kind="vae", n_songs=50, input_len=8, dims=(16, 4)),
        loss=LossConfig(name="ce", beta=0.2),
        train=TrainConfig(batch_size=16, epochs=2, learning_rate=0.01),
    )
    seen: list[int] = []
    batches = splits.batches

    def recording(split, batch_size, *args, **kwargs):
        if batch_size == config.train.batch_size // count:  # training batches
            seen.extend(split.users.tolist())
        return batches(split, batch_size, *args, **kwargs)

    splits.batches = recording
    try:
        result = training.train(config, data, mesh=mesh, progress=False)
    finally:
        splits.batches = batches
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(result.params):
        for shard in sorted(leaf.addressable_shards, key=lambda s: str(s.index)):
            digest.update(np.asarray(shard.data).tobytes())
    return {
        "own_users": sorted(set(seen)),
        "train_users": sorted(result.splits.train_users.tolist()),
        "epochs": len(result.history.to_dict()["runs"][0]),
        "params_sha256": digest.hexdigest(),
    }


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
