"""Speed of top-k scoring at full size, against the matmul roofline.

Scores `--users` synthetic users with `recommend.recommend` (top 100,
seen songs excluded; with log-probabilities and, `normalize=False`,
without the softmax normaliser) and with a plain reference written the obvious way
(`log_softmax` over every song, seen songs set to `-inf`, `lax.top_k`),
both in float32 and in chunks of `--batch-size` users. Reports users per
second, the fraction of the in-run roofline (`roofline.py`: a float32
matmul of the output layer's shape `[batch, 600] x [600, n_songs]`, timed
in the same process, for the same FLOPs per user), the peak resident
memory above the model, and how many of the reference's top 100 the
library's top 100 shares (overlap@100).

The model is untrained but its output bias follows a power-law song
popularity, so that scores are spread as a trained model's are rather
than all tied.

Full size (a few minutes on two CPU cores):

    python benchmarks/scoring.py                 # 8,192 users, 180,198 songs
    python benchmarks/scoring.py --json

A quick smoke run:

    python benchmarks/scoring.py --songs 3000 --users 512 --batch-size 128
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402

MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=180_198)
    parser.add_argument("--users", type=int, default=8192)
    parser.add_argument("--kind", default="vae", choices=["mlp", "vae"])
    parser.add_argument("--dims", type=int, nargs="+", default=[600, 200])
    parser.add_argument("--input-len", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512, help="users per call")
    parser.add_argument(
        "--loss", default="ce", choices=["ce", "bce"], help="softmax or sigmoid scores"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def make_users(n_users: int, n_songs: int, input_len: int, seed: int = 0):
    """Padded histories of 10..input_len songs, drawn by power-law popularity."""
    import numpy as np

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_songs + 1) ** 0.8
    popularity /= popularity.sum()
    inputs = np.full((n_users, input_len), -1, np.int32)
    lengths = rng.integers(min(10, input_len), input_len + 1, n_users)
    for u, n in enumerate(lengths):
        songs = rng.choice(n_songs, size=min(n, n_songs), replace=False, p=popularity)
        inputs[u, : len(songs)] = np.sort(songs)
    return inputs, popularity


def scoring_flops(config) -> float:
    """FLOPs of scoring one user: every dense layer once, plus the pooling."""
    m = config.model
    hidden, latent = list(m.dims[:-1]), m.dims[-1]
    heads = 2 if m.kind == "vae" else 1
    encoder = roofline.dense_flops(hidden) + (
        2 * hidden[-1] * latent * heads if hidden else 0
    )
    decoder = roofline.dense_flops([latent, *reversed(hidden), m.n_outputs])
    bag = 2.0 * m.input_len * (hidden[0] if hidden else latent * heads)
    return encoder + decoder + bag


@functools.cache
def _reference_kernel(config, k: int, sigmoid: bool):
    import jax
    import jax.numpy as jnp

    from songrec_jax import models

    @jax.jit
    def rank(params, x):
        logits, _ = models._forward(params, config.model, x, None, False)
        logits = logits[:, : config.model.n_songs]
        scores = (jax.nn.log_sigmoid if sigmoid else jax.nn.log_softmax)(logits)
        rows = jnp.arange(x.shape[0])[:, None]
        songs = jnp.where(x >= 0, x, scores.shape[1])
        scores = scores.at[rows, songs].set(-jnp.inf, mode="drop")
        values, indices = jax.lax.top_k(scores, k)
        return indices, values

    return rank


def reference_top_k(params, config, inputs, k, batch_size, sigmoid):
    """The obvious float32 ranking: every song's log-probability, seen songs
    masked, `lax.top_k`; chunked like the library."""
    import numpy as np

    rank = _reference_kernel(config, k, sigmoid)
    out = np.empty((len(inputs), k), np.int32)
    values = np.empty((len(inputs), k), np.float32)
    for start in range(0, len(inputs), batch_size):
        block = inputs[start : start + batch_size]
        size = len(block)
        if size < batch_size:
            block = np.concatenate(
                [block, np.full((batch_size - size, block.shape[1]), -1, np.int32)]
            )
        indices, scores = rank(params, block)
        out[start : start + size] = np.asarray(indices)[:size]
        values[start : start + size] = np.asarray(scores)[:size]
    return out, values


def overlap(a, b) -> float:
    """Mean share of the rows of `a` found in the same rows of `b`."""
    import numpy as np

    k = a.shape[1]
    return float(
        np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b, strict=True)])
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from songrec_jax import models, recommend
    from songrec_jax.config import Config, LossConfig, ModelConfig

    config = Config(
        model=ModelConfig(
            kind=args.kind,
            n_songs=args.songs,
            input_len=args.input_len,
            dims=tuple(args.dims),
        ),
        loss=LossConfig(name=args.loss),
    )
    inputs, popularity = make_users(args.users, args.songs, args.input_len)
    params = models.init(config, key=jax.random.key(0), song_popularity=popularity * 50)
    jax.block_until_ready(params)
    model_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
    sigmoid = args.loss != "ce"
    b = args.batch_size

    # Chunk by chunk, the roofline matmul of the chunk's shape is timed
    # right before the paths that score the chunk, and each path's fraction
    # of the roofline is the median over chunks of the two times' ratio:
    # a slow moment of a shared machine then weighs on both sides alike.
    a_key, w_key = jax.random.split(jax.random.key(1))
    hidden = jax.random.normal(a_key, (b, args.dims[0]), jnp.float32)
    weights = jax.random.normal(w_key, (args.dims[0], config.model.n_outputs))
    dot = jax.jit(jnp.dot)
    dot(hidden, weights).block_until_ready()
    flops = scoring_flops(config)
    matmul_flops = 2.0 * b * args.dims[0] * config.model.n_outputs
    paths = {
        "library": lambda x: recommend.recommend(params, config, x, k=args.k,
                                                 batch_size=b),
        "library_unnormalized": lambda x: recommend.recommend(
            params, config, x, k=args.k, batch_size=b, normalize=False),
        "reference": lambda x: reference_top_k(params, config, x, args.k, b,
                                               sigmoid),
    }  # fmt: skip
    for run in paths.values():  # compile each on one chunk
        run(inputs[:b])
    seconds = {name: [] for name in ("roofline", *paths)}
    results = {name: [] for name in paths}
    roofline.reset_peak_rss()
    base_rss = roofline.peak_rss_bytes()
    for start in range(0, args.users, b):
        chunk = inputs[start : start + b]
        started = time.perf_counter()
        dot(hidden, weights).block_until_ready()
        seconds["roofline"].append(time.perf_counter() - started)
        for name, run in paths.items():
            started = time.perf_counter()
            results[name].append(run(chunk))
            seconds[name].append(time.perf_counter() - started)
    fast_peak = roofline.peak_rss_bytes() - base_rss
    fast = recommend.Recommendations(
        *(np.concatenate(parts) for parts in zip(*results["library"], strict=True))
    )
    raw = recommend.Recommendations(
        *(
            np.concatenate(parts)
            for parts in zip(*results["library_unnormalized"], strict=True)
        )
    )
    exact = np.concatenate([r[0] for r in results["reference"]])
    exact_scores = np.concatenate([r[1] for r in results["reference"]])
    matmul_seconds = np.asarray(seconds["roofline"])
    rate = {"gflops": float(np.median(matmul_flops / matmul_seconds / 1e9))}
    roofline_users = rate["gflops"] * 1e9 / flops

    def row(name):
        times = np.asarray(seconds[name])
        # The roofline time of a chunk's users, over the path's time.
        fraction = matmul_seconds * (flops / matmul_flops) * b / times
        return {
            "seconds": float(times.sum()),
            "users_per_second": args.users / float(times.sum()),
            "roofline_fraction": float(np.median(fraction)),
            "roofline_fraction_chunks": fraction.round(4).tolist(),
        }

    seen_ok = all(
        not set(top.tolist()) & set(x[x >= 0].tolist())
        for top, x in zip(fast.indices, inputs, strict=True)
    )
    report = {
        "machine": roofline.machine(),
        "songs": args.songs,
        "users": args.users,
        "kind": args.kind,
        "dims": args.dims,
        "loss": args.loss,
        "k": args.k,
        "batch_size": b,
        "flops_per_user": flops,
        "roofline_gflops": rate["gflops"],
        "roofline_users_per_second": roofline_users,
        "library": row("library"),
        "library_unnormalized": row("library_unnormalized"),
        "reference": row("reference"),
        "speedup": sum(seconds["reference"]) / sum(seconds["library"]),
        "overlap_at_k": overlap(fast.indices, exact),
        "identical": bool(np.array_equal(fast.indices, exact)),
        "same_position": float(np.mean(fast.indices == exact)),
        # Where the two orders differ, the scores are equal to rounding:
        # songs whose log-probabilities tie in float32, ranked by logit.
        "differ_only_in_ties": bool(
            np.allclose(
                fast.scores[fast.indices != exact],
                exact_scores[fast.indices != exact],
                rtol=1e-6,
                atol=1e-6,
            )
        ),
        "unnormalized_identical": bool(np.array_equal(raw.indices, fast.indices)),
        "seen_songs_excluded": seen_ok,
        "model_bytes": model_bytes,
        "peak_above_start_bytes": fast_peak,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(
        f"{args.users} users, {args.songs} songs, {args.kind} {args.dims}, top "
        f"{args.k}, chunks of {b}; roofline {rate['gflops']:.1f} GFLOP/s = "
        f"{roofline_users:.0f} users/s"
    )
    print(f"{'path':>22} {'seconds':>8} {'users/s':>8} {'of roofline':>11}")
    for name in ("library", "library_unnormalized", "reference"):
        r = report[name]
        print(
            f"{name:>22} {r['seconds']:>8.2f} {r['users_per_second']:>8.0f} "
            f"{r['roofline_fraction']:>11.1%}"
        )
    print(
        f"speed-up {report['speedup']:.2f}x; overlap@{args.k} with the reference "
        f"{report['overlap_at_k']:.4f} (same position: "
        f"{report['same_position']:.4f}, differing only among equal scores: "
        f"{report['differ_only_in_ties']}); seen "
        f"songs excluded: {seen_ok}; peak memory while scoring "
        f"{fast_peak / MIB:.0f} MiB above the {model_bytes / MIB:.0f} MiB model"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
