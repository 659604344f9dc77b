"""Speed of one training step at full size, against the matmul roofline.

For each case (model kind, pooling, loss) and each step implementation,
a fresh subprocess builds the model and Adam's state, compiles the step,
runs a few warm-up steps and then times `--steps` steps on different
batches. It reports the median time per step, users per second, GFLOP/s,
the fraction of the in-run roofline (`roofline.py`: a float32 matmul of
the output layer's shape, timed before every step and before and after
them all, compiled both with XLA's default options and with those of the
step (`training.compiler_options`); the step's FLOPs at the fastest rate
of either, over the median step time), the compile time,
the peak resident memory, and whether the step compiled exactly once.

Step implementations (`TrainConfig.step`):

* `plain`: `jax.value_and_grad` and `optax.adam` (`training.make_train_step`);
* `fused`: `fused_step`, the same update without the dense gradients of
  the song-sized layers (the parameters agree to float32 rounding);
* `lazy`: `fused` with lazy Adam on the embedding table, an opt-in
  approximation (`TrainConfig.lazy_embedding_updates`).

Full size (minutes: each case compiles and runs a 217 M-parameter step):

    python benchmarks/train_step.py                       # VAE, sum, ce
    python benchmarks/train_step.py --cases all --json    # all eight cases

A quick smoke run:

    python benchmarks/train_step.py --songs 2000 --batch-size 32 --steps 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402

MIB = 2**20
DEFAULT_CASES = ("vae-sum-ce",)
ALL_CASES = tuple(
    f"{kind}-{pooling}-{loss}"
    for kind in ("vae", "mlp")
    for pooling in ("sum", "attention")
    for loss in ("ce", "bce")
)
STEPS = ("plain", "fused", "lazy")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        default=list(DEFAULT_CASES),
        help="KIND-POOLING-LOSS (e.g. vae-attention-bce), or 'all'",
    )
    parser.add_argument("--step", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--songs", type=int, default=180_198)
    parser.add_argument("--dims", type=int, nargs="+", default=[600, 200])
    parser.add_argument("--input-len", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cases == ["all"]:
        args.cases = list(ALL_CASES)
    for case in args.cases:
        parts = case.split("-")
        ok = (
            len(parts) == 3
            and parts[0] in ("mlp", "vae")
            and parts[1] in ("sum", "mean", "attention")
            and parts[2] in ("ce", "bce", "bce2", "focal", "focal2")
        )
        if not ok:
            parser.error(f"case {case!r} is not KIND-POOLING-LOSS, e.g. vae-sum-ce")
    return args


def step_flops(config) -> float:
    """FLOPs of one step: forward and backward (twice the forward) of every
    dense layer, plus the embedding bag's pooling of `input_len` songs."""
    m = config.model
    b = config.train.batch_size
    hidden, latent = list(m.dims[:-1]), m.dims[-1]
    heads = 2 if m.kind == "vae" else 1
    encoder = roofline.dense_flops(hidden) + (
        2 * hidden[-1] * latent * heads if hidden else 0
    )
    decoder = roofline.dense_flops([latent, *reversed(hidden), m.n_outputs])
    bag = 2.0 * m.input_len * (hidden[0] if hidden else latent * heads)
    return 3.0 * b * (encoder + decoder) + 2.0 * b * bag


def make_batches(config, n: int):
    """`n` batches of random histories (10..input_len songs) and targets."""
    import jax.numpy as jnp
    import numpy as np

    m, b = config.model, config.train.batch_size
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        inputs = rng.integers(0, m.n_songs, (b, m.input_len), dtype=np.int32)
        lengths = rng.integers(min(10, m.input_len), m.input_len + 1, b)
        inputs[np.arange(m.input_len) >= lengths[:, None]] = -1
        targets = np.zeros((b, m.n_outputs), np.float32)
        targets[np.arange(b)[:, None], rng.integers(0, m.n_songs, (b, 50))] = 1.0
        out.append(
            {
                "inputs": jnp.asarray(inputs),
                "targets": jnp.asarray(targets),
                "weights": jnp.ones((b,), jnp.float32),
            }
        )
    return out


def child(case: str, step_name: str, args: argparse.Namespace) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from songrec_jax import models, training
    from songrec_jax.config import Config, LossConfig, ModelConfig, TrainConfig

    kind, pooling, loss = case.split("-")
    config = Config(
        model=ModelConfig(
            kind=kind,
            n_songs=args.songs,
            input_len=args.input_len,
            dims=tuple(args.dims),
            pooling=pooling,
        ),
        loss=LossConfig(name=loss, beta=0.2),
        train=TrainConfig(batch_size=args.batch_size),
    )
    config = config.replace(
        train=dataclasses.replace(
            config.train,
            step="plain" if step_name == "plain" else "fused",
            lazy_embedding_updates=step_name == "lazy",
        )
    )
    optimizer = training.make_optimizer(config)
    params = models.init(config, key=jax.random.key(0))
    state = {"params": params, "opt_state": optimizer.init(params)}
    jax.block_until_ready(state)
    batches = make_batches(config, args.warmup + args.steps)
    roofline.reset_peak_rss()
    base_rss = roofline.peak_rss_bytes()

    step = training.make_train_step(config, optimizer)
    beta = jnp.float32(0.2)
    started = time.perf_counter()
    compiled = step.lower(state, batches[0], jax.random.key(0), beta).compile()
    compile_seconds = time.perf_counter() - started

    # The roofline matmul (the output layer's shape, `[batch, hidden] x
    # [hidden, n_songs]`) is timed before every step and a few times before
    # and after them all; its fastest rate counts, so the fraction is a
    # lower bound that a slow moment of a shared machine cannot inflate.
    b, d, n = args.batch_size, args.dims[0], config.model.n_outputs
    a_key, w_key = jax.random.split(jax.random.key(1))
    hidden = jax.random.normal(a_key, (b, d), jnp.float32)
    weights = jax.random.normal(w_key, (d, n), jnp.float32)
    options = training.compiler_options(config)
    dots = [jax.jit(jnp.dot)]
    if options:
        dots.append(jax.jit(jnp.dot, compiler_options=options))
    flops = step_flops(config)
    matmul_flops = 2.0 * b * d * n

    def time_matmul():
        fastest = math.inf
        for dot in dots:
            started = time.perf_counter()
            dot(hidden, weights).block_until_ready()
            fastest = min(fastest, time.perf_counter() - started)
        return fastest

    time_matmul()  # compiles
    matmul_times = [time_matmul() for _ in range(4)]
    times = []
    for i, batch in enumerate(batches):
        matmul_times.append(time_matmul())
        started = time.perf_counter()
        state, parts = step(state, batch, jax.random.key(i), beta)
        jax.block_until_ready((state, parts))
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    matmul_times += [time_matmul() for _ in range(3)]
    rate = matmul_flops / min(matmul_times) / 1e9
    del compiled
    loss_value = float(parts["total"])
    seconds = statistics.median(times)
    peak = roofline.peak_rss_bytes()
    return {
        "case": case,
        "step": step_name,
        "n_params": models.n_params(params),
        "seconds_per_step": seconds,
        "users_per_second": b / seconds,
        "gflops": flops / seconds / 1e9,
        "step_flops": flops,
        "roofline_gflops": rate,
        "roofline_fraction": flops / (rate * 1e9) / seconds,
        "roofline_fraction_steps": [round(flops / (rate * 1e9) / t, 4) for t in times],
        "compile_seconds": compile_seconds,
        "compiles": step._cache_size(),
        "compiler_options": options,
        "peak_rss_bytes": peak,
        "peak_above_state_bytes": peak - base_rss,
        "last_loss": loss_value,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return 0
    passthrough = [
        a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--json",)
    ]
    rows = []
    for case in args.cases:
        for step_name in args.step:
            command = [
                sys.executable,
                __file__,
                *passthrough,
                "--child",
                case,
                step_name,
            ]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                return proc.returncode
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if not args.json:
                print_row(rows[-1], header=len(rows) == 1, args=args)
    report = {
        "machine": machine_of_children(),
        "songs": args.songs,
        "dims": args.dims,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


def machine_of_children() -> dict:
    import jax  # noqa: F401  (the parent only imports JAX for this line)

    return roofline.machine()


def print_row(row: dict, *, header: bool, args) -> None:
    if header:
        print(
            f"{args.songs} songs, dims {args.dims}, batch {args.batch_size}; median "
            f"of {args.steps} steps after {args.warmup} warm-up steps"
        )
        print(
            f"{'case':>20} {'step':>6} {'ms/step':>8} {'users/s':>8} "
            f"{'GFLOP/s':>8} {'roof GF/s':>9} {'of roof':>7} {'compile s':>9} "
            f"{'peak MiB':>9} {'compiles':>8}"
        )
    print(
        f"{row['case']:>20} {row['step']:>6} {row['seconds_per_step'] * 1e3:>8.0f} "
        f"{row['users_per_second']:>8.0f} {row['gflops']:>8.1f} "
        f"{row['roofline_gflops']:>9.1f} {row['roofline_fraction']:>7.1%} "
        f"{row['compile_seconds']:>9.1f} {row['peak_rss_bytes'] / MIB:>9.0f} "
        f"{row['compiles']:>8}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
