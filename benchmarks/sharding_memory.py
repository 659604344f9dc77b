"""Memory per device of a sharded model, against the unsharded model.

For each mesh shape, reports the bytes one device holds of the parameters
and of Adam's state (computed from the shardings: nothing that large is
allocated), and with `--compile` the temporary memory XLA plans for one
training step on each device. `--materialize` also initialises the state
on the virtual devices and checks the measured buffers against the
computed numbers (small sizes only: a replicated mesh holds one copy per
device, all in this host's memory).

The devices are virtual CPU devices of one host
(`--xla_force_host_platform_device_count`): they show how memory divides,
not how fast real accelerators would run; no timing is reported.

    python benchmarks/sharding_memory.py                     # full size
    python benchmarks/sharding_memory.py --songs 1000 --dims 64 16 \\
        --materialize --compile --json                       # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys

MIB = 2**20
NOTE = (
    "virtual CPU devices on one host: memory per device is meaningful, speed "
    "is not (none is reported)"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument(
        "--meshes",
        nargs="+",
        default=None,
        help="DATAxMODEL shapes, e.g. 8x1 4x2; default: every "
        "factorisation of --devices",
    )
    parser.add_argument("--songs", type=int, default=180_198)
    parser.add_argument("--kind", default="vae", choices=["mlp", "vae"])
    parser.add_argument("--dims", type=int, nargs="+", default=[600, 200])
    parser.add_argument(
        "--pooling", default="sum", choices=["sum", "mean", "attention"]
    )
    parser.add_argument("--input-len", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also report XLA's temporary memory of a train step",
    )
    parser.add_argument(
        "--materialize",
        action="store_true",
        help="allocate the sharded state and measure its buffers",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from songrec_jax import models, sharding, training
    from songrec_jax.config import Config, ModelConfig, TrainConfig

    config = Config(
        model=ModelConfig(
            kind=args.kind,
            n_songs=args.songs,
            input_len=args.input_len,
            dims=tuple(args.dims),
            pooling=args.pooling,
        ),
        train=TrainConfig(batch_size=args.batch_size),
    )
    if args.meshes is None:
        shapes = [
            (args.devices // m, m)
            for m in range(1, args.devices + 1)
            if args.devices % m == 0
        ]
    else:
        shapes = [tuple(int(s) for s in shape.split("x")) for shape in args.meshes]

    def state_bytes(config, mesh):
        optimizer = training.make_optimizer(config)
        params = sharding.abstract_params(config)
        opt_state = jax.eval_shape(optimizer.init, params)
        return (
            sharding.shard_bytes(params, sharding.param_shardings(params, mesh)),
            sharding.shard_bytes(
                opt_state, sharding.opt_state_shardings(optimizer, params, mesh)
            ),
        )

    def step_memory(config, mesh):
        optimizer = training.make_optimizer(config)
        shardings = sharding.state_shardings(config, optimizer, mesh)
        params = sharding.abstract_params(config)
        state = {"params": params, "opt_state": jax.eval_shape(optimizer.init, params)}
        state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            state,
            shardings,
        )
        b, n = config.train.batch_size, config.model.n_outputs
        batch = {
            "inputs": ((b, config.model.input_len), jnp.int32),
            "targets": ((b, n), jnp.float32),
            "weights": ((b,), jnp.float32),
        }
        batch = {
            name: jax.ShapeDtypeStruct(shape, dtype, sharding=s)
            for (name, (shape, dtype)), s in zip(
                batch.items(), sharding.batch_shardings(mesh).values(), strict=True
            )
        }
        replicated = NamedSharding(mesh, P())
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
        beta = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
        step = sharding.make_train_step(config, optimizer, mesh).jitted
        stats = step.lower(state, batch, key, beta).compile().memory_analysis()
        return int(stats.temp_size_in_bytes)

    one = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    params_1, opt_1 = state_bytes(config, one)
    report = {
        "note": NOTE,
        "devices": args.devices,
        "songs": args.songs,
        "kind": args.kind,
        "dims": args.dims,
        "batch_size": args.batch_size,
        "n_params": models.n_params(sharding.abstract_params(config)),
        "unsharded": {"params_bytes": params_1, "opt_state_bytes": opt_1},
        "meshes": [],
    }
    if args.compile:
        report["unsharded"]["step_temp_bytes"] = step_memory(config, one)

    for data, model in shapes:
        mesh = sharding.make_mesh(data, model, devices=jax.devices()[: data * model])
        padded = sharding.padded_config(config, mesh)
        params_b, opt_b = state_bytes(padded, mesh)
        row = {
            "mesh": [data, model],
            "n_outputs": padded.model.n_outputs,
            "params_bytes": params_b,
            "opt_state_bytes": opt_b,
            "fraction": (params_b + opt_b) / (params_1 + opt_1),
        }
        if args.compile:
            row["step_temp_bytes"] = step_memory(padded, mesh)
        if args.materialize:
            optimizer = training.make_optimizer(padded)
            params = sharding.init_params(padded, mesh, key=jax.random.key(0))
            opt_state = sharding.init_opt_state(optimizer, params, mesh)
            measured = sharding.bytes_per_device({"p": params, "o": opt_state})
            row["measured_max_bytes"] = max(measured.values())
            row["measured_matches"] = row["measured_max_bytes"] == params_b + opt_b
            del params, opt_state
        report["meshes"].append(row)

    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(
        f"{args.kind} {args.dims}, {args.songs} songs, "
        f"{report['n_params'] / 1e6:.1f}M parameters; Adam state; "
        f"batch {args.batch_size}"
    )
    print(f"note: {NOTE}")
    header = (
        f"{'mesh':>8} {'n_outputs':>9} {'params MiB':>11} {'Adam MiB':>9} "
        f"{'total MiB':>10} {'of 1 dev':>8}"
    )
    if args.compile:
        header += f" {'step temp MiB':>14}"
    if args.materialize:
        header += f" {'measured':>9}"
    print(header)

    def line(name, n_outputs, p, o, fraction, temp=None, measured=None):
        text = (
            f"{name:>8} {n_outputs:>9} {p / MIB:>11.1f} {o / MIB:>9.1f} "
            f"{(p + o) / MIB:>10.1f} {fraction:>8.3f}"
        )
        if temp is not None:
            text += f" {temp / MIB:>14.1f}"
        if measured is not None:
            text += f" {'ok' if measured else 'MISMATCH':>9}"
        print(text)

    line(
        "1 device",
        args.songs,
        params_1,
        opt_1,
        1.0,
        report["unsharded"].get("step_temp_bytes"),
    )
    for row in report["meshes"]:
        line(
            "x".join(map(str, row["mesh"])),
            row["n_outputs"],
            row["params_bytes"],
            row["opt_state_bytes"],
            row["fraction"],
            row.get("step_temp_bytes"),
            row.get("measured_matches"),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
