"""Peak memory of `streaming.stream_recommend` against the number of users.

Scores synthetic users with an untrained model, one subprocess per user
count, and reports each process's peak resident memory while scoring: the
most of its resident memory sampled every 5 ms by a thread, from the
moment the model is built until the last chunk is written (so model
initialisation does not count), next to the kernel's high-water mark
(`resource.getrusage`, reset when scoring starts where Linux allows it,
which begins at whatever was resident then). Streaming keeps only the
model and one chunk in memory, so the peak must stay within the model's
size plus 2 GiB and must not grow with the number of users.

Full size (minutes on a small CPU; one process per size):

    python benchmarks/streaming_memory.py --users 20000 200000 --songs 180198

A quick check:

    python benchmarks/streaming_memory.py --users 2000 20000 --songs 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402

GIB = 2**30
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users",
        type=int,
        nargs="+",
        default=[20_000, 200_000],
        help="user counts to score, one subprocess each",
    )
    parser.add_argument("--songs", type=int, default=180_198)
    parser.add_argument("--kind", default="vae", choices=["mlp", "vae"])
    parser.add_argument("--dims", type=int, nargs="+", default=[600, 200])
    parser.add_argument("--input-len", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--chunk-size", type=int, default=20_000, help="users per written chunk"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="users per compiled call"
    )
    parser.add_argument(
        "--slack-gb",
        type=float,
        default=2.0,
        help="allowed peak above the model's size, GiB",
    )
    parser.add_argument(
        "--growth-mb",
        type=float,
        default=64.0,
        help="allowed growth of the peak from the smallest to the "
        "largest user count, MiB (allocator noise)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_users(path: Path, n_users: int, n_songs: int, input_len: int) -> None:
    """A `.npy` of random padded histories, written in pieces (little memory)."""
    rng = np.random.default_rng(n_users)
    with open(path, "wb") as f:
        header = {"descr": "<i4", "fortran_order": False, "shape": (n_users, input_len)}
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, n_users, 10_000):
            rows = min(10_000, n_users - start)
            songs = rng.integers(0, n_songs, (rows, input_len), dtype=np.int32)
            lengths = rng.integers(1, input_len + 1, rows)
            songs[np.arange(input_len) >= lengths[:, None]] = -1
            songs.tofile(f)


def current_rss() -> int:
    """This process's resident memory now, in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RssSampler(threading.Thread):
    """Samples the resident memory every `interval` seconds until stopped.

    Each chunk's arrays live for as long as a compiled call runs (tenths of
    a second), so a few milliseconds between samples do not miss them.
    """

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = current_rss()
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, current_rss())
            self.samples += 1

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, current_rss())
        return self.peak


def child(args: argparse.Namespace) -> dict:
    """Builds the model, scores the users file, and reports its memory."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from songrec_jax import models, streaming
    from songrec_jax.config import ModelConfig

    config = ModelConfig(
        kind=args.kind,
        n_songs=args.songs,
        input_len=args.input_len,
        dims=tuple(args.dims),
    )
    params = jax.block_until_ready(models.init(config, key=jax.random.key(0)))
    model_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
    init_peak = roofline.peak_rss_bytes()
    before = current_rss()
    was_reset = roofline.reset_peak_rss()
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        manifest = streaming.stream_recommend(
            params,
            config,
            args.child,
            out,
            k=args.k,
            chunk_size=args.chunk_size,
            batch_size=args.batch_size,
        )
    seconds = time.perf_counter() - start
    return {
        "users": manifest["n_users"],
        "model_bytes": model_bytes,
        "init_peak_rss": init_peak,
        "rss_before": before,
        "peak_rss": sampler.stop(),
        "samples": sampler.samples,
        "high_water_rss": roofline.peak_rss_bytes(),
        "peak_was_reset": was_reset,
        "seconds": seconds,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return 0

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_users in sorted(args.users):
            path = Path(tmp) / f"users-{n_users}.npy"
            write_users(path, n_users, args.songs, args.input_len)
            command = [
                sys.executable,
                __file__,
                "--child",
                str(path),
                *[
                    a
                    for a in (argv if argv is not None else sys.argv[1:])
                    if a != "--json"
                ],
            ]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                return proc.returncode
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            path.unlink()

    limit = runs[0]["model_bytes"] + args.slack_gb * GIB
    growth = runs[-1]["peak_rss"] - runs[0]["peak_rss"]
    report = {
        "songs": args.songs,
        "kind": args.kind,
        "dims": args.dims,
        "k": args.k,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "runs": runs,
        "limit_bytes": limit,
        "growth_bytes": growth,
        "within_limit": all(r["peak_rss"] <= limit for r in runs),
        "flat": growth <= args.growth_mb * MIB,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"model: {args.kind} {args.dims}, {args.songs} songs, "
            f"{runs[0]['model_bytes'] / MIB:.0f} MiB of parameters; "
            f"k={args.k}, chunks of {args.chunk_size}, batches of "
            f"{args.batch_size}"
        )
        print(
            f"{'users':>10} {'before MiB':>11} {'peak MiB':>9} "
            f"{'high-water MiB':>15} {'init peak MiB':>14} {'seconds':>8} "
            f"{'users/s':>8}"
        )
        for r in runs:
            print(
                f"{r['users']:>10} {r['rss_before'] / MIB:>11.0f} "
                f"{r['peak_rss'] / MIB:>9.0f} {r['high_water_rss'] / MIB:>15.0f} "
                f"{r['init_peak_rss'] / MIB:>14.0f} {r['seconds']:>8.1f} "
                f"{r['users'] / r['seconds']:>8.0f}"
            )
        print(
            "peak: the most resident memory sampled every 5 ms while scoring; "
            "high-water: the kernel's mark since it was reset after building "
            "the model (it starts at what was resident then)"
        )
        print(
            f"limit (model + {args.slack_gb:g} GiB): {limit / MIB:.0f} MiB -> "
            f"{'within' if report['within_limit'] else 'EXCEEDED'}"
        )
        print(
            f"peak growth from {runs[0]['users']} to {runs[-1]['users']} users: "
            f"{growth / MIB:+.0f} MiB -> "
            f"{'flat' if report['flat'] else 'GROWS'} (allowed "
            f"{args.growth_mb:g} MiB)"
        )
        if not all(r["peak_was_reset"] for r in runs):
            print("note: the peak could not be reset; it includes initialisation")
    return 0 if report["within_limit"] and report["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
