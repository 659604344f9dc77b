"""The fused training step computes the plain step's Adam update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from songrec_jax import fused_step, models, training
from songrec_jax.config import Config, ConfigError, LossConfig, ModelConfig, TrainConfig

N_SONGS = 300
BATCH = 16


def make_config(step="plain", lazy=False, **model):
    model = {"kind": "vae", "dims": (48, 8), "input_len": 12, **model}
    loss = model.pop("loss", "ce")
    return Config(
        model=ModelConfig(n_songs=N_SONGS, **model),
        loss=LossConfig(name=loss, beta=0.5),
        train=TrainConfig(batch_size=BATCH, step=step, lazy_embedding_updates=lazy),
    )


def make_batch(seed, config):
    rng = np.random.default_rng(seed)
    m = config.model
    inputs = rng.integers(0, 60, (BATCH, m.input_len)).astype(np.int32)
    inputs[:, m.input_len // 2 :] = -1
    inputs[-1] = -1  # a padding row
    targets = np.zeros((BATCH, m.n_outputs), np.float32)
    targets[np.arange(BATCH)[:, None], rng.integers(0, N_SONGS, (BATCH, 5))] = 1.0
    weights = np.ones(BATCH, np.float32)
    weights[-1] = 0.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


def run(config, steps=4):
    optimizer = training.make_optimizer(config)
    params = models.init(config, key=jax.random.key(0))
    state = {"params": params, "opt_state": optimizer.init(params)}
    step = training.make_train_step(config, optimizer)
    for i in range(steps):
        state, parts = step(
            state, make_batch(i, config), jax.random.key(i), jnp.float32(0.5)
        )
    return state, parts, step


CASES = [
    {},
    {"pooling": "attention", "input_dropout": 0.3, "loss": "focal"},
    {"kind": "mlp", "dims": (40, 24, 8), "pooling": "mean", "loss": "bce"},
    {"dims": (8,), "song_multiple": 64},  # one layer, padded output songs
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c) or "vae")
def test_fused_step_matches_the_plain_step(case):
    plain, plain_parts, _ = run(make_config("plain", **case))
    fused, fused_parts, step = run(make_config("fused", **case))
    assert step._cache_size() == 1
    for name in plain_parts:
        np.testing.assert_allclose(
            fused_parts[name], plain_parts[name], rtol=1e-5, atol=1e-6
        )
    assert jax.tree_util.tree_structure(fused) == jax.tree_util.tree_structure(plain)
    for got, want in zip(
        jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(plain), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_fused_step_needs_adams_state():
    config = make_config("fused")
    params = models.init(config, key=jax.random.key(0))
    state = {"params": params, "opt_state": optax.sgd(0.1).init(params)}
    step = fused_step.make_step(config)
    with pytest.raises(ConfigError, match="train.step='plain'"):
        step(state, make_batch(0, config), jax.random.key(0), jnp.float32(0.5))


def test_lazy_updates_leave_rows_outside_the_batch_alone():
    config = make_config("fused", lazy=True, pooling="attention")
    optimizer = training.make_optimizer(config)
    params = models.init(config, key=jax.random.key(0))
    state = {"params": params, "opt_state": optimizer.init(params)}
    before = jax.tree_util.tree_map(np.asarray, state)
    batch = make_batch(0, config)
    step = training.make_train_step(config, optimizer)
    after, _ = step(state, batch, jax.random.key(0), jnp.float32(0.5))
    seen = np.unique(batch["inputs"][batch["inputs"] >= 0])
    unseen = np.setdiff1d(np.arange(N_SONGS), seen)
    for name in ("embedding", "attention"):
        old = before["params"]["params"]["bag"][name]
        new = np.asarray(after["params"]["params"]["bag"][name])
        np.testing.assert_array_equal(new[unseen], old[unseen])
        assert not np.allclose(new[seen], old[seen])
    # The rest of the model is updated as by the exact step.
    exact, _ = jax.jit(fused_step.make_step(config))(
        jax.tree_util.tree_map(jnp.asarray, before),
        batch,
        jax.random.key(0),
        jnp.float32(0.5),
    )
    np.testing.assert_allclose(
        after["params"]["params"]["output"]["kernel"],
        exact["params"]["params"]["output"]["kernel"],
        rtol=1e-6,
    )


def test_auto_takes_the_fused_step_for_large_catalogues():
    small = make_config("auto")
    large = small.replace(
        model=dataclasses.replace(small.model, n_songs=fused_step.AUTO_MIN_SONGS)
    )
    assert not training.uses_fused_step(small)
    assert training.uses_fused_step(large)
    assert training.uses_fused_step(make_config("auto", lazy=True))
    assert not training.uses_fused_step(
        large.replace(train=dataclasses.replace(large.train, step="plain"))
    )


def test_lazy_updates_need_a_step_that_can_do_them():
    with pytest.raises(ConfigError, match="lazy_embedding_updates"):
        TrainConfig(step="plain", lazy_embedding_updates=True)
    with pytest.raises(ConfigError, match="train.step='slow'"):
        TrainConfig(step="slow")


def kernel_copies(config, step):
    """The copies of the output kernel in the compiled step."""
    optimizer = training.make_optimizer(config)
    params = models.init(config, key=jax.random.key(0))
    state = {"params": params, "opt_state": optimizer.init(params)}
    args = (state, make_batch(0, config), jax.random.key(0), jnp.float32(0.5))
    hlo = jax.jit(step, donate_argnums=0).lower(*args).compile().as_text()
    shape = f"f32[{config.model.n_outputs},{config.model.dims[0]}]"
    return [
        line for line in hlo.splitlines() if f"= {shape}" in line and " copy(" in line
    ]


@pytest.mark.parametrize("lazy", [False, True])
def test_fused_step_updates_the_output_kernel_in_place(lazy):
    config = make_config("fused", lazy=lazy)
    assert kernel_copies(config, fused_step.make_step(config, lazy=lazy)) == []


def test_cpu_gemm_options_only_for_large_multinomial_steps(monkeypatch):
    large = make_config("fused").replace(
        model=ModelConfig(n_songs=fused_step.AUTO_MIN_SONGS, dims=(8,))
    )
    assert jax.default_backend() == "cpu"
    assert training.compiler_options(large) == training.CPU_GEMM_OPTIONS
    assert training.compiler_options(make_config("fused")) is None  # small
    bce = large.replace(loss=LossConfig(name="bce"))
    assert training.compiler_options(bce) is None
    monkeypatch.setattr(training, "_accepts_cpu_gemm_options", lambda: False)
    assert training.compiler_options(large) is None


def test_cpu_gemm_options_compute_the_same_step():
    config = Config(
        model=ModelConfig(
            kind="vae", n_songs=fused_step.AUTO_MIN_SONGS, dims=(16, 4), input_len=12
        ),
        loss=LossConfig(name="ce", beta=0.5),
        train=TrainConfig(batch_size=BATCH),
    )
    assert training.compiler_options(config)
    optimizer = training.make_optimizer(config)
    raw = fused_step.make_step(config)
    results = []
    for options in (None, training.compiler_options(config)):
        params = models.init(config, key=jax.random.key(0))
        state = {"params": params, "opt_state": optimizer.init(params)}
        step = jax.jit(raw, donate_argnums=0, compiler_options=options)
        for i in range(2):
            batch = make_batch(i, config)
            state, parts = step(state, batch, jax.random.key(i), jnp.float32(0.5))
        results.append((state, parts))
    (state, parts), (tuned_state, tuned_parts) = results
    np.testing.assert_allclose(tuned_parts["total"], parts["total"], rtol=1e-5)
    for got, want in zip(
        jax.tree_util.tree_leaves(tuned_state),
        jax.tree_util.tree_leaves(state),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_buffered_step_keeps_the_kernel_gradient_out_of_the_temporaries():
    config = make_config("fused", dims=(64, 8))
    # A catalogue large enough for the kernel's gradient to be the largest
    # temporary (XLA shares the memory of small ones).
    config = config.replace(model=dataclasses.replace(config.model, n_songs=20_000))
    optimizer = training.make_optimizer(config)
    params = models.init(config, key=jax.random.key(0))
    state = {"params": params, "opt_state": optimizer.init(params)}
    args = (state, make_batch(0, config), jax.random.key(0), jnp.float32(0.5))
    kernel = params["params"]["output"]["kernel"]

    def memory(step):
        return step.lower(*args).compile().memory_analysis()

    unbuffered = memory(jax.jit(fused_step.make_step(config), donate_argnums=0))
    buffered = memory(fused_step.BufferedStep(config))
    assert buffered.temp_size_in_bytes <= unbuffered.temp_size_in_bytes - kernel.nbytes
    # The gradient is written into the donated buffer, not into fresh memory.
    assert (
        buffered.alias_size_in_bytes >= unbuffered.alias_size_in_bytes + kernel.nbytes
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_buffered_step_gives_the_unbuffered_result_bit_for_bit(lazy):
    config = make_config("fused", lazy=lazy)
    optimizer = training.make_optimizer(config)
    results = []
    for step in (
        jax.jit(fused_step.make_step(config, lazy=lazy), donate_argnums=0),
        fused_step.BufferedStep(config, lazy=lazy),
    ):
        params = models.init(config, key=jax.random.key(0))
        state = {"params": params, "opt_state": optimizer.init(params)}
        for i in range(3):
            batch = make_batch(i, config)
            state, parts = step(state, batch, jax.random.key(i), jnp.float32(0.5))
        results.append((state, parts))
    assert step._cache_size() == 1
    (want, want_parts), (got, got_parts) = results
    for a, b in zip(
        jax.tree_util.tree_leaves((got, got_parts)),
        jax.tree_util.tree_leaves((want, want_parts)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
