"""The README's commands and examples work as written."""

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from songrec_jax.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_first_lines_are_the_two_commands_and_ci_runs_the_second():
    first = code_blocks("bash")[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].endswith("songrec demo")
    assert first[1].endswith("python -m pytest")
    assert README.index(first[0]) < 200
    ci = (ROOT / ".ci" / "run").read_text()
    assert first[0] in ci and first[1] in ci


def readme_command_lines() -> list[list[str]]:
    """Each command of the README's bash blocks, as words, with launchers
    (`srun`, environment assignments, `.venv/bin/`) taken off the front."""
    commands = []
    for block in code_blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            while words and (words[0] == "srun" or "=" in words[0]):
                words = words[1:]
            if words:
                words[0] = words[0].removeprefix(".venv/bin/")
                commands.append(words)
    return commands


def readme_songrec_commands() -> list[str]:
    return [shlex.join(w) for w in readme_command_lines() if w[0] == "songrec"]


def readme_benchmark_commands() -> list[str]:
    return [
        shlex.join(words)
        for words in readme_command_lines()
        if words[0] == "python" and words[1:2] and words[1].startswith("benchmarks/")
    ]


@pytest.mark.parametrize("command", readme_songrec_commands())
def test_every_songrec_command_in_the_readme_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def test_the_readme_shows_the_benchmarks_and_the_cluster_launch():
    scripts = {shlex.split(c)[1] for c in readme_benchmark_commands()}
    assert {
        "benchmarks/train_step.py",
        "benchmarks/scoring.py",
        "benchmarks/latent.py",
        "benchmarks/quality_lastfm.py",
        "benchmarks/sharding_memory.py",
        "benchmarks/streaming_memory.py",
    } <= scripts
    launches = [c for c in readme_songrec_commands() if "--distributed" in c]
    assert len(launches) >= 2


@pytest.mark.parametrize("command", readme_benchmark_commands())
def test_every_benchmark_command_in_the_readme_parses(command):
    words = shlex.split(command)
    path = ROOT / words[1]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
        module.parse_args(words[2:])  # argparse exits on a bad option
    finally:
        sys.path.remove(str(path.parent))


def test_the_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in code_blocks("python"):
        exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["top"].indices) == 10 and len(scope["jazz"].indices) == 10
    assert float(scope["loss"]) > 0 and set(scope["parts"]) == {"recon", "kl", "total"}
