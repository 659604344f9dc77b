"""Tests of notebooks/: stored clean, built on the library, and run top to bottom.

Running a notebook trains a small model, so the two execution tests take about
half a minute of CPU each; the other tests only read the files.
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ("01_quickstart.ipynb", "02_latent_space.ipynb")
FIGURES = {"01_quickstart.ipynb": 1, "02_latent_space.ipynb": 5}  # shown inline
MAX_STORED_BYTES = 64_000
CELL_TIMEOUT_S = 600  # generous: the test machines are small and shared
# A notebook calls the library to train; none of these belongs in its cells.
TRAINING_LOOP_MARKERS = ("value_and_grad", "optax", "jax.grad(", "apply_updates")


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def cells(nb: nbformat.NotebookNode, kind: str) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == kind]


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_stored_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert cells(nb, "code") and cells(nb, "markdown")
    for cell in cells(nb, "code"):
        assert cell.outputs == [], f"{name}, cell {cell.id}: clear the outputs"
        assert cell.execution_count is None, f"{name}, cell {cell.id}"
    assert (NOTEBOOK_DIR / name).stat().st_size < MAX_STORED_BYTES


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_imports_the_library_and_copies_no_training_loop(name):
    code = "\n".join(cell.source for cell in cells(read(name), "code"))
    assert "from songrec_jax import" in code
    assert "pipeline.train(" in code or "training.train(" in code
    for marker in TRAINING_LOOP_MARKERS:
        assert marker not in code, f"{name} holds {marker!r}: call the library"


def test_latent_notebook_states_the_equations():
    text = "\n".join(cell.source for cell in cells(read(NOTEBOOKS[1]), "markdown"))
    for fragment in (
        r"\tanh",  # the encoder
        r"\operatorname{diag}(\exp(\log\sigma^2_u))",  # q(z|x)
        r"\odot \varepsilon",  # the reparametrization
        r"\mathrm{KL}",  # the KL term, weighted by beta
        r"\beta",
        r"\operatorname{softmax}",  # the multinomial likelihood
        r"z' = z + \alpha",  # latent steering
        r"(1 + w_t)^{\alpha}",  # post-filtering
    ):
        assert fragment in text, f"the markdown lacks {fragment!r}"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """An environment where the kernel "python3" is this interpreter.

    The kernel spec goes into a temporary folder on JUPYTER_PATH, so the test
    needs nothing beyond the package's dev extras (no `ipykernel install`).
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))

    def prepend(variable: str, path: Path) -> str:
        return os.pathsep.join(filter(None, [str(path), os.environ.get(variable)]))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", prepend("JUPYTER_PATH", root))
        patch.setenv("PYTHONPATH", prepend("PYTHONPATH", ROOT))
        patch.setenv("JUPYTER_PLATFORM_DIRS", "1")
        patch.setenv("TQDM_DISABLE", "1")
        yield


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_env, tmp_path, monkeypatch):
    workdir, out = tmp_path / "cwd", tmp_path / "out"
    workdir.mkdir()
    monkeypatch.setenv("SONGREC_NOTEBOOK_OUT", str(out))
    stored = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    nb = read(name)

    NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    ).execute()  # raises CellExecutionError at the first failing cell

    code = cells(nb, "code")
    outputs = [output for cell in code for output in cell.outputs]
    assert all(cell.execution_count for cell in code)
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= FIGURES[name], "figures must be displayed inline"
    assert list(out.rglob("*.png")), "files must go under SONGREC_NOTEBOOK_OUT"
    assert list(workdir.iterdir()) == [], "nothing may be written to the cwd"
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == stored
