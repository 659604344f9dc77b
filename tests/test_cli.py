"""The `songrec` command line, run in-process on tiny synthetic data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from songrec_jax.cli import main

TINY = """
[model]
kind = "vae"
dims = [32, 8]
input_len = 32

[loss]
name = "ce"
beta = 0.2

[train]
learning_rate = 0.003
batch_size = 64
epochs = 2
patience = 2
restarts = 0

[data]
source = "synthetic"
n_users = 400
n_songs = 200
n_tags = 6
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a tiny config and a model trained by `songrec train`."""
    path = tmp_path_factory.mktemp("cli")
    (path / "tiny.toml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        assert main(["train", "--config", "tiny.toml"]) == 0
    return path


def run_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_data_summary_json(capsys):
    out = run_json(capsys, "data")
    assert {"users", "songs", "listens", "tags"} <= set(out)
    assert out["users"] == 3000 and out["songs"] == 1500 and out["tags"] == 12


def test_data_on_real_lastfm(capsys, lastfm_dir):
    out = run_json(capsys, "data", "--data", "lastfm-hetrec", str(lastfm_dir))
    assert (out["users"], out["songs"], out["listens"], out["tags"]) == (
        1892,
        17632,
        92834,
        9749,
    )


def test_train_writes_checkpoints_and_history(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    runs = list((workdir / "checkpoints").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "best").is_dir() and (runs[0] / "latest").is_dir()
    assert (runs[0] / "history.png").stat().st_size > 0
    out = run_json(capsys, "train", "--config", "tiny.toml", "--resume")
    assert out["epochs"] == 2  # already finished: resuming trains no more


def test_evaluate_prints_both_protocols(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    out = run_json(capsys, "evaluate", "--config", "tiny.toml")
    for protocol in ("input_target", "strong"):
        rows = out[protocol]["rows"]
        assert {"VAE", "popularity", "ease"} <= set(rows)
        assert 0 <= rows["VAE"]["NDCG@100"]["mean"] <= 1
    assert (
        main(["evaluate", "--config", "tiny.toml", "--protocol", "strong", "--no-ease"])
        == 0
    )
    assert "NDCG@100" in capsys.readouterr().out


def test_recommend_for_user_history_and_tags(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    out = run_json(
        capsys,
        "recommend",
        "--config",
        "tiny.toml",
        "--user",
        "user_000003",
        "--k",
        "5",
    )
    assert len(out["songs"]) == 5 and all("tags" in s for s in out["songs"])
    tag = out["songs"][0]["tags"][0]
    steered = run_json(
        capsys,
        "recommend",
        "--config",
        "tiny.toml",
        "--history",
        "song_000001,song_000002",
        "--tag",
        f"{tag}=1",
        "--alpha",
        "4",
        "--k",
        "5",
    )
    assert all(tag in s["tags"] for s in steered["songs"])


def test_analyze_then_latent_steering_and_sweep(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    out = run_json(capsys, "analyze", "--config", "tiny.toml", "--clusters", "3")
    assert sum(out["tag_users"].values()) > 0
    for name in ("tag_latents.npz", "z_rand.png", "z_users.png", "clusters.png"):
        assert any(f.endswith(name) for f in out["files"])
    tag = max(out["tag_users"], key=out["tag_users"].get)
    steered = run_json(
        capsys,
        "recommend",
        "--config",
        "tiny.toml",
        "--user",
        "user_000003",
        "--tag",
        tag,
        "--method",
        "latent",
    )
    assert steered["method"] == "latent"
    sweep = run_json(
        capsys, "sweep", "--config", "tiny.toml", "--alphas", "0,1", "--min-users", "2"
    )
    assert set(sweep["headline"]) == {"postfilter", "latent", "both"}
    assert sweep["target"] == "dominant"
    assert all(Path(f).stat().st_size > 0 for f in sweep["files"])
    other = run_json(
        capsys,
        "sweep",
        "--config",
        "tiny.toml",
        "--alphas",
        "0,1",
        "--min-users",
        "1",
        "--target",
        "random",
    )
    assert other["target"] == "random"
    assert all(Path(f).name.startswith("steering_random") for f in other["files"])
    assert all(Path(f).stat().st_size > 0 for f in other["files"])


def test_recommend_users_file_streams_results(workdir, capsys, monkeypatch):
    from songrec_jax.streaming import read_recommendations

    monkeypatch.chdir(workdir)
    (workdir / "users.txt").write_text("user_000001\nuser_000002\nuser_000005\n")
    out = run_json(
        capsys,
        "recommend",
        "--config",
        "tiny.toml",
        "--users-file",
        "users.txt",
        "--out",
        "recs",
        "--k",
        "4",
        "--chunk-size",
        "2",
    )
    assert out["users"] == 3
    recs = read_recommendations(workdir / "recs")
    assert recs.indices.shape == (3, 4)
    single = run_json(
        capsys,
        "recommend",
        "--config",
        "tiny.toml",
        "--user",
        "user_000002",
        "--k",
        "4",
    )
    assert [s["song"] for s in single["songs"]] == [
        f"song_{i:06d}" for i in recs.indices[1]
    ]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--config", "missing.toml"], "does not exist"),
        (["recommend", "--config", "tiny.toml", "--user", "nobody"], "'nobody'"),
        (
            [
                "recommend",
                "--config",
                "tiny.toml",
                "--user",
                "user_000001",
                "--tag",
                "no-such-tag",
            ],
            "no-such-tag",
        ),
        (["data", "--data", "lastfm-hetrec", "/no/such/dir"], "/no/such/dir"),
        (
            ["evaluate", "--config", "tiny.toml", "--checkpoints", "empty"],
            "no best checkpoint",
        ),
    ],
)
def test_user_mistakes_give_one_line_and_status_2(
    workdir, capsys, monkeypatch, argv, fragment
):
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]


def test_debug_shows_the_traceback(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    from songrec_jax.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", "missing.toml"])


def test_quick_demo_on_real_data(tmp_path, capsys, monkeypatch, lastfm_dir):
    monkeypatch.chdir(tmp_path)
    out = run_json(
        capsys,
        "demo",
        "--quick",
        "--data",
        "lastfm-hetrec",
        str(lastfm_dir),
        "--out",
        "demo",
    )
    assert out["data"]["users"] > 1000
    assert {"input_target", "strong"} == set(out["tables"])
    for row in ("VAE", "MLP", "popularity"):
        assert row in out["tables"]["strong"]["rows"]
    assert len(out["sample"]["lists"]) == 3
    assert all(Path(f).stat().st_size > 0 for f in out["files"])


def test_a_closed_pipe_ends_quietly():
    # As `songrec data | head -c 10` would, with more output than a pipe holds.
    code = (
        "import sys\n"
        "from songrec_jax import cli\n"
        "cli.cmd_data = lambda args: [print('x' * 1000) for _ in range(1000)]\n"
        "sys.exit(cli.main(['data']))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141
    assert b"Traceback" not in err and b"BrokenPipe" not in err
