"""Tests of songrec_jax.losses: NumPy references, stability and invariants."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from songrec_jax import losses
from songrec_jax.config import LossConfig
from songrec_jax.errors import ConfigError, InputError

BATCH, N_SONGS, LATENT = 4, 7, 3
EXTREMES = (-1e9, -1e4, -30.0, 0.0, 30.0, 1e4, 1e9)
FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def strict_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def random_batch(seed: int = 0, counts: bool = False):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(BATCH, N_SONGS)).astype(np.float32)
    targets = (rng.random((BATCH, N_SONGS)) < 0.4).astype(np.float32)
    targets[0] = 0.0  # a user without positives
    if counts:
        targets *= rng.integers(1, 5, size=targets.shape)
    return logits, targets


# NumPy float64 references, written from the textbook formulas.


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bce_ref(logits, targets):
    p = sigmoid(logits.astype(np.float64))
    return -np.sum(targets * np.log(p) + (1 - targets) * np.log(1 - p), axis=-1)


def per_positive_ref(loss, targets):
    return loss / np.maximum((targets > 0).sum(axis=-1), 1)


def multinomial_ref(logits, targets):
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    log_softmax = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return -np.sum(targets * log_softmax, axis=-1)


def focal_ref(logits, targets, alpha=0.25, gamma=2.0):
    p = sigmoid(logits.astype(np.float64))
    positive = alpha * targets * (1 - p) ** gamma * np.log(p)
    negative = (1 - alpha) * (1 - targets) * p**gamma * np.log(1 - p)
    return -np.sum(positive + negative, axis=-1)


def kl_ref(mean, logvar):
    mean, logvar = mean.astype(np.float64), logvar.astype(np.float64)
    return 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=-1)


REFERENCES = {
    "bce": bce_ref,
    "bce2": lambda x, t: per_positive_ref(bce_ref(x, t), t),
    "ce": multinomial_ref,
    "focal": focal_ref,
    "focal2": lambda x, t: per_positive_ref(focal_ref(x, t), t),
}


def test_registry_covers_every_configurable_loss():
    from songrec_jax.config import LOSSES

    assert set(losses.RECONSTRUCTION) == set(LOSSES) == set(REFERENCES)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reconstruction_matches_numpy(name):
    logits, targets = random_batch()
    got = losses.RECONSTRUCTION[name](logits, targets)
    assert got.shape == (BATCH,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, REFERENCES[name](logits, targets), rtol=1e-5)


def test_multinomial_accepts_counts():
    logits, targets = random_batch(counts=True)
    assert targets.max() > 1
    got = losses.multinomial(logits, targets)
    np.testing.assert_allclose(got, multinomial_ref(logits, targets), rtol=1e-5)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.9, 0.5), (0.0, 3.0)])
def test_focal_parameters_match_numpy(alpha, gamma):
    logits, targets = random_batch(seed=1)
    got = losses.focal(logits, targets, alpha=alpha, gamma=gamma)
    expected = focal_ref(logits, targets, alpha, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    got2 = losses.focal_per_positive(logits, targets, alpha=alpha, gamma=gamma)
    np.testing.assert_allclose(got2, per_positive_ref(expected, targets), rtol=1e-5)


def test_focal_without_focusing_is_half_bce():
    logits, targets = random_batch(seed=2)
    half_bce = 0.5 * losses.bce(logits, targets)
    np.testing.assert_allclose(
        losses.focal(logits, targets, alpha=0.5, gamma=0.0), half_bce, rtol=1e-6
    )


def test_get_reconstruction_binds_focal_parameters():
    logits, targets = random_batch(seed=3)
    fn = losses.get_reconstruction("focal2", focal_alpha=0.7, focal_gamma=1.0)
    expected = per_positive_ref(focal_ref(logits, targets, 0.7, 1.0), targets)
    np.testing.assert_allclose(fn(logits, targets), expected, rtol=1e-5)
    assert losses.get_reconstruction("ce") is losses.multinomial


def test_unknown_loss_name_raises_config_error():
    with pytest.raises(ConfigError, match=r"'mse'.*'bce'.*'focal2'"):
        losses.get_reconstruction("mse")
    config = LossConfig()
    object.__setattr__(config, "name", "mse")  # bypasses validation on purpose
    logits, targets = random_batch()
    with pytest.raises(ConfigError, match="mse"):
        losses.loss_fn(config, logits, targets)


def summed_value_and_grad(fn):
    return jax.jit(
        jax.value_and_grad(lambda logits, targets: fn(logits, targets).sum())
    )


VALUE_AND_GRAD = {
    name: summed_value_and_grad(fn) for name, fn in losses.RECONSTRUCTION.items()
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_padded_songs_contribute_nothing(name):
    logits, targets = random_batch(seed=4)
    padded_logits = np.pad(logits, ((0, 0), (0, 5)), constant_values=-1e9)
    padded_targets = np.pad(targets, ((0, 0), (0, 5)))
    fn = losses.RECONSTRUCTION[name]
    np.testing.assert_allclose(
        fn(padded_logits, padded_targets), fn(logits, targets), rtol=1e-6, atol=1e-6
    )
    _, grad = VALUE_AND_GRAD[name](padded_logits, padded_targets)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, N_SONGS:], 0.0)


@FAST
@given(
    logits=hnp.arrays(np.float32, (2, 5), elements=st.sampled_from(EXTREMES)),
    targets=hnp.arrays(np.float32, (2, 5), elements=st.sampled_from([0.0, 1.0])),
)
def test_losses_and_gradients_finite_for_extreme_logits(logits, targets):
    for name, value_and_grad in VALUE_AND_GRAD.items():
        value, grad = value_and_grad(logits, targets)
        assert np.isfinite(value), name
        assert value >= 0, name
        assert np.all(np.isfinite(grad)), name


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_jit_matches_eager(name):
    logits, targets = random_batch(seed=5)
    fn = losses.RECONSTRUCTION[name]
    np.testing.assert_allclose(
        jax.jit(fn)(logits, targets), fn(logits, targets), rtol=1e-6
    )


# KL divergence.

latent_arrays = hnp.arrays(
    np.float32, (2, LATENT), elements=st.floats(-20, 20, width=32)
)


@FAST
@given(mean=latent_arrays, logvar=latent_arrays)
def test_kl_is_non_negative_and_matches_numpy(mean, logvar):
    kl = losses.kl_divergence(mean, logvar)
    assert kl.shape == (2,)
    assert np.all(kl >= 0)
    np.testing.assert_allclose(kl, kl_ref(mean, logvar), rtol=1e-5, atol=1e-6)


@FAST
@given(logvar=hnp.arrays(np.float32, (2, LATENT), elements=st.floats(-1e-3, 1e-3)))
def test_kl_near_the_prior_is_small_and_non_negative(logvar):
    kl = losses.kl_divergence(np.zeros_like(logvar), logvar)
    assert np.all(kl >= 0)
    np.testing.assert_allclose(kl, kl_ref(np.zeros_like(logvar), logvar), atol=1e-9)


def test_kl_is_zero_at_the_prior():
    zeros = np.zeros((BATCH, LATENT), np.float32)
    np.testing.assert_array_equal(losses.kl_divergence(zeros, zeros), 0.0)
    assert losses.kl_divergence(zeros + 0.1, zeros).min() > 0


# The KL weight.


@pytest.mark.parametrize(
    "beta, start, anneal, step, epoch, expected",
    [
        (0.5, 0, 0, 0, 0, 0.5),  # constant
        (0.5, 0, 0, 999, 9, 0.5),
        (0.5, 2, 0, 100, 1, 0.0),  # off before the start epoch
        (0.5, 2, 0, 100, 2, 0.5),
        (0.2, 0, 100, 0, 0, 0.0),  # linear rise
        (0.2, 0, 100, 25, 0, 0.05),
        (0.2, 0, 100, 100, 1, 0.2),
        (0.2, 0, 100, 5000, 3, 0.2),  # capped
        (0.2, 3, 100, 50, 2, 0.0),  # start epoch wins over annealing
        (0.2, 3, 100, 50, 3, 0.1),
        (0.0, 0, 10, 5, 0, 0.0),
    ],
)
def test_beta_schedule(beta, start, anneal, step, epoch, expected):
    config = LossConfig(beta=beta, beta_start_epoch=start, anneal_steps=anneal)
    value = losses.beta_at(config, step=step, epoch=epoch)
    assert isinstance(value, float)
    assert value == pytest.approx(expected)
    traced = jax.jit(lambda s, e: losses.beta_at(config, step=s, epoch=e))
    got = traced(jnp.int32(step), jnp.int32(epoch))
    assert got.dtype == jnp.float32 and got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-6)


# The combined loss.


def vae_batch(seed: int = 0):
    logits, targets = random_batch(seed)
    rng = np.random.default_rng(seed + 100)
    mean = rng.normal(size=(BATCH, LATENT)).astype(np.float32)
    logvar = rng.normal(scale=0.5, size=(BATCH, LATENT)).astype(np.float32)
    weights = np.array([1, 1, 1, 0], np.float32)
    return logits, targets, mean, logvar, weights


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_loss_fn_is_weighted_mean_of_parts(name):
    config = LossConfig(name=name, beta=0.3, focal_alpha=0.6, focal_gamma=1.5)
    logits, targets, mean, logvar, weights = vae_batch()
    loss, metrics = losses.loss_fn(
        config, logits, targets, mean=mean, logvar=logvar, weights=weights
    )
    reference = REFERENCES[name]
    if name.startswith("focal"):
        recon = focal_ref(logits, targets, 0.6, 1.5)
        recon = per_positive_ref(recon, targets) if name == "focal2" else recon
    else:
        recon = reference(logits, targets)
    expected_recon = np.sum(weights * recon) / weights.sum()
    expected_kl = np.sum(weights * kl_ref(mean, logvar)) / weights.sum()
    assert set(metrics) == {"recon", "kl", "total"}
    np.testing.assert_allclose(metrics["recon"], expected_recon, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], expected_kl, rtol=1e-5)
    np.testing.assert_allclose(loss, expected_recon + 0.3 * expected_kl, rtol=1e-5)
    assert metrics["total"] is loss


def test_loss_fn_beta_argument_overrides_config():
    config = LossConfig(beta=1.0)
    logits, targets, mean, logvar, _ = vae_batch()
    _, metrics = losses.loss_fn(config, logits, targets, mean=mean, logvar=logvar)
    loss, _ = losses.loss_fn(
        config, logits, targets, mean=mean, logvar=logvar, beta=jnp.float32(0.25)
    )
    np.testing.assert_allclose(loss, metrics["recon"] + 0.25 * metrics["kl"])


def test_loss_fn_without_latent_has_zero_kl():
    logits, targets = random_batch()
    loss, metrics = losses.loss_fn(LossConfig(name="bce"), logits, targets)
    assert float(metrics["kl"]) == 0.0
    np.testing.assert_allclose(loss, bce_ref(logits, targets).mean(), rtol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def loss_and_grads(config, logits, targets, mean, logvar, weights):
    def loss(logits, mean, logvar):
        kwargs = dict(mean=mean, logvar=logvar, weights=weights)
        return losses.loss_fn(config, logits, targets, **kwargs)[0]

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(logits, mean, logvar)


@FAST
@given(
    name=st.sampled_from(sorted(REFERENCES)),
    padded_logits=hnp.arrays(
        np.float32, (1, N_SONGS), elements=st.floats(-1e9, 1e9, width=32)
    ),
    padded_latent=hnp.arrays(np.float32, (1, LATENT), elements=st.floats(-5, 5)),
)
def test_loss_fn_ignores_padding_rows(name, padded_logits, padded_latent):
    config = LossConfig(name=name, beta=0.5)
    logits, targets, mean, logvar, weights = vae_batch()
    loss, grads = loss_and_grads(config, logits, targets, mean, logvar, weights)
    logits[3:], mean[3:], logvar[3:] = padded_logits, padded_latent, padded_latent
    loss2, grads2 = loss_and_grads(config, logits, targets, mean, logvar, weights)
    assert float(loss2) == float(loss)
    for g, g2 in zip(grads, grads2, strict=True):
        np.testing.assert_array_equal(g2[3:], 0.0)
        np.testing.assert_array_equal(g2[:3], g[:3])


def test_loss_fn_non_finite_padding_rows_do_not_leak():
    config = LossConfig(name="bce", beta=0.5)
    logits, targets, mean, logvar, weights = vae_batch()
    loss, _ = losses.loss_fn(
        config, logits, targets, mean=mean, logvar=logvar, weights=weights
    )
    logits[3], mean[3] = np.nan, np.inf
    loss2, _ = losses.loss_fn(
        config, logits, targets, mean=mean, logvar=logvar, weights=weights
    )
    assert float(loss2) == float(loss)


def test_loss_fn_all_padding_batch_is_zero():
    logits, targets, mean, logvar, _ = vae_batch()
    loss, _ = losses.loss_fn(
        LossConfig(), logits, targets, mean=mean, logvar=logvar, weights=np.zeros(4)
    )
    assert float(loss) == 0.0


def test_loss_fn_jit_matches_eager():
    config = LossConfig(name="focal2", beta=0.7)
    logits, targets, mean, logvar, weights = vae_batch(seed=6)
    kwargs = dict(mean=mean, logvar=logvar, weights=weights)
    eager = losses.loss_fn(config, logits, targets, **kwargs)
    jitted = jax.jit(losses.loss_fn, static_argnums=0)(
        config, logits, targets, **kwargs
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted
    )


def test_loss_fn_rejects_bad_shapes():
    config = LossConfig()
    logits, targets, mean, logvar, weights = vae_batch()
    with pytest.raises(InputError, match="targets"):
        losses.loss_fn(config, logits, targets[:, :-1])
    with pytest.raises(InputError, match="weights"):
        losses.loss_fn(config, logits, targets, weights=weights[:2])
    with pytest.raises(InputError, match="together"):
        losses.loss_fn(config, logits, targets, mean=mean)
    with pytest.raises(InputError, match="logvar"):
        losses.loss_fn(config, logits, targets, mean=mean, logvar=logvar[:, :1])
    with pytest.raises(InputError, match="mean"):
        losses.loss_fn(config, logits, targets, mean=mean[:2], logvar=logvar[:2])
    with pytest.raises(InputError, match="logits"):
        losses.loss_fn(config, logits[0], targets[0])
