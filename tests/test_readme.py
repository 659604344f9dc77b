"""The README's commands and examples work as written."""

import re
import shlex
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


def readme_songrec_commands() -> list[str]:
    commands = []
    for block in code_blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("songrec "):
                commands.append(line)
    return commands


@pytest.mark.parametrize("command", readme_songrec_commands())
def test_every_songrec_command_in_the_readme_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def test_the_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in code_blocks("python"):
        exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["top"].indices) == 10 and len(scope["jazz"].indices) == 10
    assert float(scope["loss"]) > 0 and set(scope["parts"]) == {"recon", "kl", "total"}
