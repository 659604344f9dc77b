"""Speed of the per-tag latent statistics for many users.

Generates synthetic listening data (`--users` users, `--songs` songs,
`--tags` tags), then times the three stages of `latent.compute_tag_latents`
on every user: each user's dominant tag, the users' latent vectors (the
encoder, jit-compiled over chunks), and the per-tag means and standard
deviations. For scale, it also times the same statistics computed one
user at a time (a jitted encoder call per user, then NumPy), as a loop
over users would, on `--loop-users` users, and extrapolates.

Full size (about a minute on two CPU cores):

    python benchmarks/latent.py              # 100,000 users, 180,198 songs
    python benchmarks/latent.py --json

A quick smoke run:

    python benchmarks/latent.py --users 2000 --songs 3000 --tags 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--songs", type=int, default=180_198)
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--kind", default="vae", choices=["mlp", "vae"])
    parser.add_argument("--dims", type=int, nargs="+", default=[600, 200])
    parser.add_argument("--input-len", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--loop-users", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    from songrec_jax import latent, models, splits, synthetic
    from songrec_jax.config import ModelConfig

    started = time.perf_counter()
    data = synthetic.generate(args.users, args.songs, args.tags, key=0)
    generate_seconds = time.perf_counter() - started
    split = splits.input_target_split(
        data, np.arange(data.n_users), args.input_len, key=1
    )
    config = ModelConfig(
        kind=args.kind,
        n_songs=data.n_songs,
        input_len=args.input_len,
        dims=tuple(args.dims),
    )
    params = jax.block_until_ready(models.init(config, key=jax.random.key(0)))
    inputs = split.inputs
    b = args.batch_size
    latent.user_latents(params, config, inputs[:b], batch_size=b)  # compile

    def run_stages():
        times = {}
        started = time.perf_counter()
        dominant = latent.dominant_tags(data, inputs)
        times["dominant_tags"] = time.perf_counter() - started
        started = time.perf_counter()
        z = latent.user_latents(params, config, inputs, batch_size=b)
        times["user_latents"] = time.perf_counter() - started
        started = time.perf_counter()
        means, counts = latent.tag_latent_means(z, dominant, data.n_tags)
        stds = latent.tag_latent_stds(z, dominant, means)
        times["means_and_stds"] = time.perf_counter() - started
        return times, dominant, z, counts, stds

    cold, *_ = run_stages()  # includes compiling the statistics for this shape
    stages, dominant, z, counts, stds = run_stages()
    total = sum(stages.values())

    # One user at a time, as a loop over users would do it.
    n_loop = min(args.loop_users, len(inputs))
    encode = jax.jit(lambda p, x: models._encode(p, config, x)[0])
    encode(params, inputs[:1]).block_until_ready()
    started = time.perf_counter()
    loop_sums = np.zeros((data.n_tags, config.latent_dim))
    loop_counts = np.zeros(data.n_tags)
    for u in range(n_loop):
        tag = latent.dominant_tags(data, inputs[u : u + 1])[0]
        vector = np.asarray(encode(params, inputs[u : u + 1]))[0]
        if tag >= 0:
            loop_sums[tag] += vector
            loop_counts[tag] += 1
    loop_seconds_per_user = (time.perf_counter() - started) / n_loop
    loop_means, _ = latent.tag_latent_means(z[:n_loop], dominant[:n_loop], data.n_tags)
    used = loop_counts > 0
    agree = bool(
        np.allclose(
            loop_sums[used] / loop_counts[used, None],
            loop_means[used],
            rtol=1e-4,
            atol=1e-6,
        )
    )

    report = {
        "machine": roofline.machine(),
        "users": int(len(inputs)),
        "songs": data.n_songs,
        "tags": data.n_tags,
        "listens": int(data.n_listens),
        "kind": args.kind,
        "dims": args.dims,
        "batch_size": b,
        "generate_seconds": generate_seconds,
        "stages_seconds": stages,
        "total_seconds": total,
        "first_call_seconds": sum(cold.values()),
        "users_per_second": len(inputs) / total,
        "tags_with_users": int((counts > 0).sum()),
        "stds_finite": bool(np.isfinite(stds[counts > 1]).all()),
        "loop_seconds_per_user": loop_seconds_per_user,
        "loop_extrapolated_seconds": loop_seconds_per_user * len(inputs),
        "speedup_over_loop": loop_seconds_per_user * len(inputs) / total,
        "loop_agrees": agree,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(
        f"{report['users']} users, {data.n_songs} songs, {data.n_tags} tags "
        f"({report['tags_with_users']} dominant for someone); {args.kind} "
        f"{args.dims}; generated in {generate_seconds:.1f} s"
    )
    for name, seconds in stages.items():
        print(f"{name:>16}: {seconds:7.2f} s")
    print(f"{'(first call)':>16}: {report['first_call_seconds']:7.2f} s with compiling")
    print(
        f"{'total':>16}: {total:7.2f} s ({report['users_per_second']:.0f} users/s); "
        f"one user at a time: {loop_seconds_per_user * 1e3:.2f} ms/user, "
        f"{report['loop_extrapolated_seconds']:.0f} s for all "
        f"({report['speedup_over_loop']:.0f}x slower; same means: {agree})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
