"""Tests of songrec_jax.sharding.

The checks that need several devices run once, on 8 virtual CPU devices,
in a subprocess (`_sharded_checks.py`: JAX fixes its device count when it
starts); the tests below assert on the JSON it reports. The rest runs
here, on one device.
"""

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from jax.sharding import AbstractMesh

from songrec_jax import checkpointing, losses, models, sharding
from songrec_jax.config import Config, LossConfig, ModelConfig
from songrec_jax.errors import CheckpointError, ConfigError, InputError

CHECKS = Path(__file__).with_name("_sharded_checks.py")
MULTIPROCESS = Path(__file__).with_name("_multiprocess_checks.py")
MESHES = ["(8, 1)", "(4, 2)", "(2, 4)", "(1, 8)"]
TOLERANCE = 1e-5  # float32 sums in another order


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sharding") / "checks.json"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    proc = subprocess.run(
        [sys.executable, str(CHECKS), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"{CHECKS.name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def result(checks: dict, name: str) -> dict:
    value = checks[name]
    if "error" in value:
        pytest.fail(f"check {name!r} raised:\n{value['error']}")
    return value


# ----------------------------------------------------------------------------
# On 8 virtual devices.


def test_the_checks_ran_on_eight_devices(checks):
    assert checks["devices"] == 8


def test_make_mesh_shapes_and_errors(checks):
    mesh = result(checks, "mesh")
    assert mesh["default"] == [8, 1] and mesh["model2"] == [4, 2]
    assert mesh["subset"] == 4 and mesh["axes"] == ["data", "model"]
    assert all(error is not None for error in mesh["errors"])
    assert "data * model == 8" in mesh["errors"][0]


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_step_equals_the_one_device_step(checks, mesh):
    step = result(checks, "train_step")[mesh]
    assert step["state_diff"] < TOLERANCE
    assert step["metrics_diff"] < TOLERANCE
    assert step["compiles"] == 1


def test_lazy_targets_are_built_block_by_block_and_equal_dense_ones(checks):
    lazy = result(checks, "lazy_batches")
    assert lazy["equal"] and lazy["spec"] == "P('data', 'model')"
    assert lazy["shard_shapes"] == [[4, 10]]  # 8 users over 2, 40 songs over 4


def test_sharded_init_equals_models_init(checks):
    assert result(checks, "train_step")["init_equal"]


@pytest.mark.parametrize("mesh", MESHES)
def test_song_arrays_are_split_over_model(checks, mesh):
    step = result(checks, "train_step")[mesh]
    model = int(mesh.strip("()").split(",")[1])
    assert step["params_sharded"] and step["moments_sharded"]
    assert step["output_spec"] == "P('model', None)"
    # With model > 1 no device holds the whole output layer.
    (per_device,) = step["bytes_per_device"]
    assert (per_device < step["bytes_unsharded"]) == (model > 1)


@pytest.mark.parametrize("mesh", ["(4, 2)", "(2, 4)"])
def test_sharded_top_k_equals_recommend(checks, mesh):
    top = result(checks, "top_k")[mesh]
    assert top["indices_equal"]
    assert top["score_diff"] < TOLERANCE
    assert top["seen_recommended"] == 0 and top["seen_without_mask"] > 0
    assert top["max_index"] < 37  # padded songs are never recommended


def test_checkpoint_saved_on_one_mesh_restores_on_another(checks):
    restored = result(checks, "checkpoint")
    assert restored["same_config"] and restored["on_new_mesh"]
    assert restored["state_diff"] == 0.0 and restored["params_sharded"]
    assert restored["indices_equal"] and restored["score_diff"] < TOLERANCE
    assert restored["resume_keeps_sharding"]


def test_one_device_checkpoint_is_padded_for_the_mesh(checks):
    repad = result(checks, "checkpoint")["repad"]
    assert repad["n_outputs"] == 40
    assert repad["kernel_equal"] and repad["moment_equal"]
    assert repad["params_sharded"] and repad["count"] == 1


def test_train_on_a_mesh(checks):
    run = result(checks, "train")
    assert run["n_outputs"] == run["stored_n_outputs"] == 40
    assert run["kernel_spec"] == "P('model', None)"
    assert run["finite"] and run["val_diff"] < 1e-4


@pytest.mark.slow
def test_two_processes_train_and_rank_on_one_mesh(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(MULTIPROCESS), str(i), str(port), str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    try:
        errors = [proc.communicate(timeout=600)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, error in zip(procs, errors, strict=True):
        assert proc.returncode == 0, error[-4000:]
    found = [json.loads(out.read_text()) for out in outs]
    for i, f in enumerate(found):
        assert f["process"] == [i, 2] and f["devices"] == [2, 4]
        assert f["loss_diff"] < TOLERANCE and f["kernel_diff"] < TOLERANCE
        assert f["shard_shapes"] == [[20, 8]]  # half of the 40 songs
        assert f["top_k_equal"]
        assert f["epochs"] == 2
    # Training: each process batched only its own half of the training users,
    # and both hold the same trained model.
    own = [set(f["own_users"]) for f in found]
    train_users = set(found[0]["train_users"])
    assert own[0] and own[1] and not own[0] & own[1]
    assert own[0] | own[1] == train_users
    assert sorted(map(len, own)) == [48, 49]  # 97 users, one padding batch
    assert found[0]["params_sha256"] == found[1]["params_sha256"]


# ----------------------------------------------------------------------------
# On one device.


def abstract_mesh(data: int, model: int) -> AbstractMesh:
    return AbstractMesh((data, model), sharding.AXES)


@given(
    n_songs=st.integers(2, 500),
    multiple=st.integers(1, 6),
    data=st.sampled_from([1, 2, 4]),
    model=st.sampled_from([1, 2, 3, 8]),
)
def test_padded_config_divides_over_any_mesh_of_that_size(
    n_songs, multiple, data, model
):
    config = ModelConfig(n_songs=n_songs, song_multiple=multiple)
    padded = sharding.padded_config(config, abstract_mesh(data, model))
    assert padded.n_songs == n_songs
    assert padded.n_outputs % (data * model) == 0
    assert padded.song_multiple % multiple == 0
    assert padded.n_outputs - n_songs < padded.song_multiple
    if config.n_outputs % (data * model) == 0:
        assert padded == config
    sharding.check_config(padded, abstract_mesh(data, model))


def test_padded_config_keeps_the_config_type():
    config = Config(model=ModelConfig(n_songs=37))
    padded = sharding.padded_config(config, abstract_mesh(4, 2))
    assert isinstance(padded, Config) and padded.model.n_outputs == 40
    assert padded.loss == config.loss and padded.train == config.train


def test_unpadded_config_and_odd_batch_raise():
    with pytest.raises(ConfigError, match="padded_config"):
        sharding.check_config(ModelConfig(n_songs=37), abstract_mesh(1, 2))
    with pytest.raises(ConfigError, match="multiple of 4"):
        sharding.check_batch_size(10, abstract_mesh(4, 2))


def test_make_mesh_rejects_more_devices_than_exist():
    assert sharding.make_mesh().devices.shape == (jax.device_count(), 1)
    with pytest.raises(ConfigError, match="data \\* model"):
        sharding.make_mesh(jax.device_count() + 1)
    with pytest.raises(ConfigError, match="model=0"):
        sharding.make_mesh(model=0)


@functools.partial(jax.jit, static_argnums=0)
def every_loss(config, params, x, targets):
    """Logits, every loss (with the KL term), and the focal loss's gradient."""

    def loss(params, name):
        logits, aux = models.forward(params, config, x)
        return losses.loss_fn(LossConfig(name=name), logits, targets, **aux)[0]

    values = {name: loss(params, name) for name in losses.RECONSTRUCTION}
    grads = jax.grad(loss)(params, "focal")
    return models.forward(params, config, x)[0], values, grads


def test_padded_outputs_change_no_loss_and_get_no_gradient():
    config = ModelConfig(
        kind="vae", n_songs=37, input_len=6, dims=(8,), pooling="attention"
    )
    padded = sharding.padded_config(config, abstract_mesh(4, 2))
    params = models.init(padded, key=jax.random.key(0))
    real = jax.tree_util.tree_map(
        lambda a, axis: a if axis < 0 else jnp.take(a, jnp.arange(37), axis=axis),
        params,
        sharding.item_axes(params),
    )
    x = jnp.array([[0, 5, 36, -1, -1, -1], [2, 3, -1, -1, -1, -1]], jnp.int32)
    targets = jnp.zeros((2, 37)).at[0, 7].set(1.0).at[1, 30].set(1.0)
    wide_targets = jnp.pad(targets, ((0, 0), (0, 3)))

    logits, expected, _ = every_loss(config, real, x, targets)
    wide_logits, got, grads = every_loss(padded, params, x, wide_targets)
    np.testing.assert_allclose(wide_logits[:, :37], logits, rtol=1e-6)
    assert np.all(np.asarray(wide_logits[:, 37:]) <= models.MASKED_LOGIT)
    for name in losses.RECONSTRUCTION:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, err_msg=name)

    output = grads["params"]["output"]
    assert np.all(np.asarray(output["kernel"][37:]) == 0)
    assert np.all(np.asarray(output["bias"][37:]) == 0)


def test_item_axes_name_the_song_parameters():
    config = ModelConfig(
        kind="mlp", n_songs=40, input_len=4, dims=(8, 4), pooling="attention"
    )
    axes = sharding.item_axes(sharding.abstract_params(config))["params"]
    assert axes["output"] == {"kernel": 0, "bias": 0}
    assert axes["bag"] == {
        "embedding": 0,
        "attention": 0,
        "bias": sharding.NO_ITEM_AXIS,
    }
    assert axes["decoder_0"]["kernel"] == sharding.NO_ITEM_AXIS


def test_sharded_top_k_rejects_bad_k():
    config = ModelConfig(kind="mlp", n_songs=40, input_len=4, dims=(8,))
    params = models.init(config, key=jax.random.key(0))
    x = np.full((2, 4), -1, np.int32)
    for k in (0, 41, 2.5):
        with pytest.raises(InputError, match="k="):
            sharding.sharded_top_k(params, config, x, k, sharding.make_mesh())


def test_restore_sharded_checks_the_model(tmp_path):
    config = Config(model=ModelConfig(kind="mlp", n_songs=40, input_len=4, dims=(8,)))
    params = models.init(config, key=jax.random.key(0))
    checkpointing.save(tmp_path, params, config, kind="best")
    mesh = sharding.make_mesh()
    state, restored = sharding.restore_sharded(tmp_path, config, mesh, kind="best")
    assert restored == config and set(state) == {"params"}
    np.testing.assert_array_equal(
        state["params"]["params"]["output"]["kernel"],
        params["params"]["output"]["kernel"],
    )
    other = config.replace(
        model=ModelConfig(kind="mlp", n_songs=41, input_len=4, dims=(8,))
    )
    with pytest.raises(CheckpointError, match="differs"):
        sharding.restore_sharded(tmp_path, other, mesh, kind="best")
    with pytest.raises(CheckpointError, match="no latest checkpoint"):
        sharding.restore_sharded(tmp_path, config, mesh, kind="latest")


@given(n_users=st.integers(0, 1000), count=st.integers(1, 17))
def test_process_users_cover_every_user_once(n_users, count):
    shares = [
        sharding.process_users(n_users, process_index=i, process_count=count)
        for i in range(count)
    ]
    covered = np.concatenate([np.arange(n_users)[s] for s in shares])
    np.testing.assert_array_equal(covered, np.arange(n_users))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_process_users_defaults_to_this_process():
    assert sharding.process_users(10) == slice(0, 10)
    with pytest.raises(InputError, match="process_index"):
        sharding.process_users(10, process_index=2, process_count=2)


@pytest.fixture
def fake_initialize(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs)
    )
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_initialize_distributed_reads_flags_then_environment(
    fake_initialize, monkeypatch
):
    assert sharding.initialize_distributed("host:1234", 4, 3) == (0, 1)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node0:9999")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    sharding.initialize_distributed()
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.delenv("JAX_PROCESS_ID")
    sharding.initialize_distributed()  # a cluster JAX detects by itself
    assert fake_initialize == [
        {"coordinator_address": "host:1234", "num_processes": 4, "process_id": 3},
        {"coordinator_address": "node0:9999", "num_processes": 2, "process_id": 1},
        {},
    ]


def test_initialize_distributed_errors(fake_initialize, monkeypatch):
    with pytest.raises(ConfigError, match="process_id=2"):
        sharding.initialize_distributed("host:1", 2, 2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two'"):
        sharding.initialize_distributed()
    monkeypatch.delenv("JAX_NUM_PROCESSES")

    def refuse(**kwargs):
        raise RuntimeError("connection refused")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    with pytest.raises(ConfigError, match="connection refused"):
        sharding.initialize_distributed("host:1", 2, 0)
    assert fake_initialize == []
