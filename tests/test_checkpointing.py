import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from songrec_jax import checkpointing, models
from songrec_jax.config import Config, ModelConfig
from songrec_jax.errors import CheckpointError
from songrec_jax.training import make_optimizer

CONFIG = Config(model=ModelConfig(kind="vae", n_songs=30, input_len=5, dims=(8, 3)))
X = jnp.array([[0, 4, 7, -1, -1]], jnp.int32)


def test_save_then_load_gives_bit_identical_logits(tmp_path):
    params = models.init(CONFIG, key=jax.random.key(0))
    checkpointing.save(tmp_path, params, CONFIG, step=1, kind="best")
    loaded, config = checkpointing.load_params(tmp_path)
    assert config == CONFIG
    np.testing.assert_array_equal(
        models.forward(params, CONFIG, X)[0], models.forward(loaded, config, X)[0]
    )


def test_optimizer_state_keeps_its_types(tmp_path):
    params = models.init(CONFIG, key=jax.random.key(0))
    opt_state = make_optimizer(CONFIG).init(params)
    checkpointing.save(
        tmp_path,
        params,
        CONFIG,
        opt_state=opt_state,
        step=2,
        loop={"epoch": 2},
        history={"runs": [[]]},
    )
    state = checkpointing.restore_state(
        tmp_path, {"params": params, "opt_state": opt_state}
    )
    assert type(state["opt_state"]) is type(opt_state)
    assert float(state["opt_state"].hyperparams["learning_rate"]) == pytest.approx(1e-3)
    assert checkpointing.load_meta(tmp_path, "latest")["loop"] == {"epoch": 2}
    # Parameters alone load from a checkpoint that also holds optimizer state.
    loaded, _ = checkpointing.load_params(tmp_path, kind="latest")
    np.testing.assert_array_equal(
        loaded["params"]["output"]["bias"], params["params"]["output"]["bias"]
    )


def test_only_one_checkpoint_of_each_kind_is_kept(tmp_path):
    params = models.init(CONFIG, key=jax.random.key(0))
    for step in (1, 2, 3):
        checkpointing.save(tmp_path, params, CONFIG, step=step)
    assert sorted(
        p.name for p in (tmp_path / "latest").iterdir() if p.name.isdigit()
    ) == ["3"]


def test_missing_and_mismatched_checkpoints_raise(tmp_path):
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        checkpointing.load_params(tmp_path)
    params = models.init(CONFIG, key=jax.random.key(0))
    checkpointing.save(tmp_path, params, CONFIG, step=1, kind="best")
    other = CONFIG.replace(model=dataclasses.replace(CONFIG.model, dims=(8, 4)))
    with pytest.raises(CheckpointError, match="differs from the requested"):
        checkpointing.load_params(tmp_path, config=other)
    with pytest.raises(CheckpointError, match="optimizer state"):
        checkpointing.restore_state(
            tmp_path, {"params": params, "opt_state": {}}, kind="best"
        )


def test_damaged_checkpoint_raises_checkpoint_error(tmp_path):
    params = models.init(CONFIG, key=jax.random.key(0))
    checkpointing.save(tmp_path, params, CONFIG, step=1, kind="best")
    for path in (tmp_path / "best" / "1" / "params").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
    with pytest.raises(CheckpointError, match="damaged or unreadable"):
        checkpointing.load_params(tmp_path)


def test_failed_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    params = models.init(CONFIG, key=jax.random.key(0))
    checkpointing.save(tmp_path, params, CONFIG, step=1, kind="best")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", full_disk)
    bigger = jax.tree_util.tree_map(lambda a: a + 1, params)
    with pytest.raises(CheckpointError, match="No space left"):
        checkpointing.save(tmp_path, bigger, CONFIG, step=2, kind="best")
    monkeypatch.undo()
    loaded, _ = checkpointing.load_params(tmp_path)
    np.testing.assert_array_equal(
        loaded["params"]["output"]["bias"], params["params"]["output"]["bias"]
    )


def test_unwritable_folder_raises_checkpoint_error(tmp_path):
    target = tmp_path / "file-not-folder"
    target.write_text("x")
    params = models.init(CONFIG, key=jax.random.key(0))
    with pytest.raises(CheckpointError, match="could not save"):
        checkpointing.save(target, params, CONFIG, step=1)
