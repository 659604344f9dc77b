"""Interruptions lose nothing, and crafted files cannot run code.

The interruption tests run `songrec train` in subprocesses and kill them
with SIGKILL in the middle of an epoch and in the middle of a checkpoint
save, or stop them with SIGINT, then resume and compare with an
uninterrupted run of the same seed.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from songrec_jax import checkpointing
from songrec_jax.data import load_data
from songrec_jax.errors import CheckpointError, DataFormatError

TINY = """
[model]
kind = "vae"
dims = [32, 8]
input_len = 32

[loss]
name = "ce"
beta = 0.2

[train]
learning_rate = 0.01
batch_size = 64
epochs = {epochs}
patience = 1
restarts = 1

[data]
source = "synthetic"
n_users = 400
n_songs = 200
n_tags = 6
"""

# Runs `songrec` after installing a fault: SIGKILL at a training step, or
# while the latest checkpoint of an epoch is being committed (its files are
# written, the rename that publishes them has not happened).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    mode, at = sys.argv[1], int(sys.argv[2])
    if mode == "step":
        from songrec_jax import training
        make = training.make_train_step
        count = [0]
        def make_killing(config, optimizer):
            step = make(config, optimizer)
            def killing(*args):
                count[0] += 1
                if count[0] == at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return step(*args)
            return killing
        training.make_train_step = make_killing
    elif mode == "save":
        from orbax.checkpoint._src.path import atomicity
        finalize = atomicity.AtomicRenameTemporaryPath.finalize
        async def killing_finalize(self):
            final = str(self._final_path)
            if final.endswith(os.path.join("latest", str(at))):
                os.kill(os.getpid(), signal.SIGKILL)
            return await finalize(self)
        atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
    from songrec_jax.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def songrec(tmp: Path, mode: str, at: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(tmp / "driver.py"), mode, str(at), *args],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )


def leaves(directory: Path, kind: str):
    params, _ = checkpointing.load_params(directory, kind=kind)
    return jax.tree_util.tree_leaves(params)


def test_sigkill_mid_epoch_and_mid_save_then_resume_equals_uninterrupted(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "tiny.toml").write_text(TINY.format(epochs=4))
    train = ("train", "--config", "tiny.toml", "--checkpoints")

    killed = songrec(tmp_path, "step", 8, *train, "a")  # 5 steps per epoch
    assert killed.returncode == -signal.SIGKILL
    (run,) = (tmp_path / "a").iterdir()
    assert checkpointing.load_meta(run, "latest")["loop"]["epoch"] == 1

    killed = songrec(tmp_path, "save", 3, *train, "a", "--resume")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Epoch 3 was computed, but its save never committed: epoch 2 is latest,
    # and both checkpoints still load.
    assert checkpointing.load_meta(run, "latest")["loop"]["epoch"] == 2
    leaves(run, "best")
    leaves(run, "latest")

    done = songrec(tmp_path, "none", 0, *train, "a", "--resume")
    assert done.returncode == 0, done.stderr
    straight = songrec(tmp_path, "none", 0, *train, "b")
    assert straight.returncode == 0, straight.stderr
    (reference,) = (tmp_path / "b").iterdir()
    for kind in ("latest", "best"):
        for x, y in zip(leaves(run, kind), leaves(reference, kind), strict=True):
            np.testing.assert_array_equal(x, y)
    history = checkpointing.load_meta(run, "latest")["history"]
    epochs = [r["epoch"] for group in history["runs"] for r in group]
    assert epochs == list(range(1, len(epochs) + 1))  # no epoch twice
    assert history == checkpointing.load_meta(reference, "latest")["history"]


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path):
    (tmp_path / "tiny.toml").write_text(
        TINY.format(epochs=500).replace("patience = 1", "patience = 500")
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "songrec_jax.cli", "train", "--config", "tiny.toml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        runs = list((tmp_path / "checkpoints").glob("*/latest/2"))
        if runs:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    (run,) = (tmp_path / "checkpoints").iterdir()
    assert checkpointing.load_meta(run, "latest")["loop"]["epoch"] >= 2
    leaves(run, "latest")


def test_failed_save_during_training_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from songrec_jax import synthetic, training
    from songrec_jax.config import load_config

    (tmp_path / "tiny.toml").write_text(TINY.format(epochs=3))
    config = load_config(tmp_path / "tiny.toml")
    data = synthetic.generate(400, 200, 6, key=0)
    config = training.config_for_data(config, data)
    save = checkpointing.save
    calls = {"n": 0}

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if kwargs.get("kind") == "latest" and kwargs.get("step") == 2:
            raise CheckpointError("could not save: [Errno 28] No space left on device")
        return save(*args, **kwargs)

    monkeypatch.setattr(checkpointing, "save", failing_save)
    with pytest.raises(CheckpointError, match="No space left"):
        training.train(config, data, directory=tmp_path / "run", progress=False)
    assert checkpointing.load_meta(tmp_path / "run", "latest")["loop"]["epoch"] == 1
    leaves(tmp_path / "run", "latest")


PAYLOAD = textwrap.dedent("""
    import os, pickle
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch {marker}",))
    payload = pickle.dumps(Boom())
""")


def _pickle_payload(marker: Path) -> bytes:
    scope: dict = {}
    exec(PAYLOAD.format(marker=marker), scope)
    return scope["payload"]


def test_crafted_data_file_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = _pickle_payload(marker)
    import io
    import zipfile

    buffer = io.BytesIO()
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header = header.ljust(117) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    with zipfile.ZipFile(buffer, "w") as z:
        for name in (
            "format_version",
            "indptr",
            "indices",
            "counts",
            "tag_indptr",
            "tag_indices",
            "user_ids",
            "song_ids",
            "song_names",
            "tag_names",
        ):
            z.writestr(f"{name}.npy", npy + payload)
    (tmp_path / "evil.npz").write_bytes(buffer.getvalue())
    with pytest.raises(DataFormatError):
        load_data(tmp_path / "evil.npz")
    assert not marker.exists()


def test_crafted_checkpoint_cannot_run_code(tmp_path):
    from songrec_jax import models
    from songrec_jax.config import Config, ModelConfig

    config = Config(model=ModelConfig(n_songs=20, input_len=4, dims=(8, 2)))
    params = models.init(config, key=jax.random.key(0))
    checkpointing.save(tmp_path, params, config, step=1, kind="best")
    marker = tmp_path / "pwned"
    for path in (tmp_path / "best").rglob("*"):
        if path.is_file():
            path.write_bytes(_pickle_payload(marker))
    with pytest.raises(CheckpointError):
        checkpointing.load_params(tmp_path)
    assert not marker.exists()


def test_library_never_unpickles():
    source = Path(__file__).resolve().parent.parent / "songrec_jax"
    for path in source.glob("*.py"):
        text = path.read_text()
        words = text.replace(" ", "")
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill)\b", text, re.M), path
        assert "allow_pickle=" + "True" not in words, path
        for line in text.splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path}: {line.strip()}"


def test_same_seed_gives_identical_parameters_across_processes(tmp_path):
    script = textwrap.dedent("""
        import hashlib, sys
        import jax, numpy as np
        from songrec_jax import recommend, synthetic, training
        from songrec_jax.config import load_config
        config = load_config(sys.argv[1])
        data = synthetic.generate(400, 200, 6, key=0)
        config = training.config_for_data(config, data)
        result = training.train(config, data, progress=False)
        digest = hashlib.sha256()
        for leaf in jax.tree_util.tree_leaves(result.params):
            digest.update(np.asarray(leaf).tobytes())
        recs = recommend.recommend(result.params, config, result.splits.val.inputs,
                                   k=20)
        digest.update(np.asarray(recs.indices).tobytes())
        print(digest.hexdigest())
    """)
    (tmp_path / "tiny.toml").write_text(TINY.format(epochs=2))
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    digests = [
        subprocess.run(
            [sys.executable, "run.py", "tiny.toml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert digests[0] == digests[1] and len(digests[0]) == 64
