"""The benchmark scripts run at small sizes and report what they promise.

Their figures (speed, memory) are not checked here: they are measured by
running the scripts at full size. These runs check that each script
works, prints one JSON object with its documented fields, and that the
invariants it reports (exact rankings, one compilation, agreeing
results) hold.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_roofline_times_matmuls():
    report = run("roofline.py", "--songs", "2000", "--hidden", "64", "--batch", "32")
    assert [r["dtype"] for r in report["matmuls"]] == ["float32", "bfloat16"]
    for row in report["matmuls"]:
        assert row["flops"] == 2 * 32 * 64 * 2000 and row["gflops"] > 0
    assert report["machine"]["platform"] == "cpu"


def test_train_step_reports_compiles_and_agreeing_steps():
    report = run(
        "train_step.py",
        "--songs", "1500", "--dims", "64", "16", "--input-len", "20",
        "--batch-size", "16", "--steps", "2", "--warmup", "1",
        "--cases", "vae-attention-ce", "--step", "plain", "fused",
    )  # fmt: skip
    plain, fused = report["rows"]
    assert (plain["step"], fused["step"]) == ("plain", "fused")
    for row in (plain, fused):
        assert row["case"] == "vae-attention-ce" and row["compiles"] == 1
        assert 0 < row["roofline_fraction"] and row["seconds_per_step"] > 0
        assert row["peak_rss_bytes"] > 0
    # The same batches and keys: both exact steps end at the same loss.
    assert fused["last_loss"] == pytest.approx(plain["last_loss"], rel=1e-4)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_scoring_is_exact_against_the_reference(loss):
    report = run(
        "scoring.py", "--songs", "2500", "--users", "300", "--batch-size", "64",
        "--dims", "64", "16", "--input-len", "30", "--loss", loss,
    )  # fmt: skip
    # The same songs; an order differs only where log-probabilities tie.
    assert report["overlap_at_k"] == 1.0 and report["differ_only_in_ties"]
    assert report["same_position"] > 0.99 and report["unnormalized_identical"]
    assert report["seen_songs_excluded"]
    assert report["library"]["users_per_second"] > 0


def test_latent_statistics_agree_with_a_loop_over_users():
    report = run(
        "latent.py", "--users", "1500", "--songs", "2000", "--tags", "15",
        "--dims", "64", "16", "--input-len", "30", "--loop-users", "50",
    )  # fmt: skip
    assert report["users"] == 1500 and report["loop_agrees"]
    assert report["tags_with_users"] > 1 and report["stds_finite"]
    assert set(report["stages_seconds"]) == {
        "dominant_tags",
        "user_latents",
        "means_and_stds",
    }


def test_streaming_memory_stays_flat_with_more_users():
    report = run(
        "streaming_memory.py",
        *("--users", "500", "3000", "--songs", "2000", "--dims", "32", "8"),
        *("--chunk-size", "1000"),
    )
    assert [r["users"] for r in report["runs"]] == [500, 3000]
    for r in report["runs"]:
        assert r["samples"] > 0 and r["peak_rss"] >= r["rss_before"] > 0
    assert report["within_limit"] and report["flat"]


def test_sharding_memory_divides_the_song_arrays():
    report = run(
        "sharding_memory.py",
        *("--songs", "1000", "--dims", "64", "16", "--meshes", "2x4"),
        *("--materialize", "--compile"),
    )
    (mesh,) = report["meshes"]
    assert mesh["mesh"] == [2, 4] and mesh["measured_matches"]
    assert mesh["params_bytes"] < 0.3 * report["unsharded"]["params_bytes"]
    assert mesh["step_temp_bytes"] > 0
