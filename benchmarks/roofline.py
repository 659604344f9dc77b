"""The matrix-multiply roofline that the other benchmarks measure against.

Absolute times drift on a shared machine; a ratio of two times taken in
the same process, minutes apart, does not drift much. Each benchmark
therefore times a plain `jnp.dot` of the shape that dominates its work
(the output layer: `[batch, hidden] x [hidden, n_songs]`) and reports
its own time as a fraction of what that matrix multiply would need for
the same number of floating-point operations:

    fraction = (flops / matmul_flops_per_second) / measured_seconds

A fraction of 1 means the work ran as fast as XLA multiplies matrices
of that shape on this machine; the rest of the work (softmax, top-k,
Adam, gathers) is what keeps it below.

Run alone, it prints the matmul rates of the full-size shapes:

    python benchmarks/roofline.py [--songs 180198] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

MIB = 2**20


def median_seconds(
    fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1
) -> float:
    """Median wall time of `fn()`, which must block until its result is ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(
    m: int, k: int, n: int, *, dtype: str = "float32", repeats: int = 5
) -> dict[str, float]:
    """Times `[m, k] @ [k, n]` in `dtype` (float32 accumulation for bf16).

    Returns:
      `{"seconds": median seconds, "flops": 2 m k n, "gflops": rate}`.
    """
    import jax
    import jax.numpy as jnp

    a_key, b_key = jax.random.split(jax.random.key(0))
    a = jax.random.normal(a_key, (m, k), jnp.float32).astype(dtype)
    b = jax.random.normal(b_key, (k, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    seconds = median_seconds(
        lambda: dot(a, b).block_until_ready(), repeats=repeats, warmup=2
    )
    flops = 2.0 * m * k * n
    return {"seconds": seconds, "flops": flops, "gflops": flops / seconds / 1e9}


def dense_flops(sizes: list[int] | tuple[int, ...]) -> float:
    """Multiply-add FLOPs of a chain of dense layers for one example."""
    return float(sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False)))


def peak_rss_bytes() -> int:
    """The high-water mark of this process's resident memory (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Resets the high-water mark to the current resident memory (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import jax

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=180_198)
    parser.add_argument("--hidden", type=int, default=600)
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for batch in args.batch:
        for dtype in ("float32", "bfloat16"):
            rate = matmul_rate(batch, args.hidden, args.songs, dtype=dtype)
            rows.append(
                {"shape": [batch, args.hidden, args.songs], "dtype": dtype, **rate}
            )
    report = {"machine": machine(), "matmuls": rows}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['machine']}")
    print(f"{'m x k x n':>22} {'dtype':>9} {'ms':>9} {'GFLOP/s':>9}")
    for row in rows:
        shape = " x ".join(str(s) for s in row["shape"])
        print(
            f"{shape:>22} {row['dtype']:>9} {row['seconds'] * 1e3:>9.1f} "
            f"{row['gflops']:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
