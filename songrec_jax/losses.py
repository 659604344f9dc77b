"""Training objectives of the autoencoders.

A user's history is reconstructed from the decoder's logits over all songs.
Every reconstruction loss maps `logits [batch, n_songs]` and `targets
[batch, n_songs]` to one value per user, `[batch]`, and is computed from the
logits directly (softplus, log-sigmoid, log-softmax), so it stays finite for
any finite logit, including the large negative logits the model gives to
padded songs.

A variational autoencoder adds the KL divergence of its posterior from the
standard normal prior, weighted by `beta` (Higgins et al. 2017); `beta_at`
gives the weight at a training step, with the linear annealing of Mult-VAE
(Liang et al. 2018). `loss_fn` combines the two and returns the loss with its
parts as metrics.

References:
  D. Liang, R. G. Krishnan, M. D. Hoffman, T. Jebara. "Variational
  Autoencoders for Collaborative Filtering." WWW 2018.
  T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar. "Focal Loss for Dense
  Object Detection." ICCV 2017.
  D. P. Kingma, M. Welling. "Auto-Encoding Variational Bayes." ICLR 2014.
  I. Higgins et al. "beta-VAE: Learning Basic Visual Concepts with a
  Constrained Variational Framework." ICLR 2017.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from songrec_jax.config import LossConfig
from songrec_jax.errors import ConfigError, InputError

ReconstructionLoss = Callable[[ArrayLike, ArrayLike], jax.Array]


def _as_float32(logits: ArrayLike, targets: ArrayLike) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32)


def _per_positive(loss: jax.Array, targets: jax.Array) -> jax.Array:
    n_positive = jnp.sum(targets > 0, axis=-1).astype(jnp.float32)
    return loss / jnp.maximum(n_positive, 1.0)


def bce(logits: ArrayLike, targets: ArrayLike) -> jax.Array:
    """Binary cross-entropy of every song, summed over songs.

    Each song is an independent Bernoulli with probability
    `sigmoid(logits)`; the negative log-likelihood of a song is
    `softplus(logits) - targets * logits`, which never evaluates a
    logarithm of a probability.

    Args:
      logits: float `[batch, n_songs]`, the decoder's output.
      targets: float `[batch, n_songs]` in [0, 1], usually multi-hot.

    Returns:
      float32 `[batch]`, the loss of each user in nats.
    """
    logits, targets = _as_float32(logits, targets)
    return jnp.sum(jax.nn.softplus(logits) - targets * logits, axis=-1)


def bce_per_positive(logits: ArrayLike, targets: ArrayLike) -> jax.Array:
    """`bce` divided by the user's number of positive songs (at least 1).

    Users with long histories then weigh no more than users with short
    ones.

    Args:
      logits: float `[batch, n_songs]`.
      targets: float `[batch, n_songs]` in [0, 1].

    Returns:
      float32 `[batch]`.
    """
    targets = jnp.asarray(targets, jnp.float32)
    return _per_positive(bce(logits, targets), targets)


def multinomial(logits: ArrayLike, targets: ArrayLike) -> jax.Array:
    """Negative multinomial log-likelihood, `-sum(targets * log_softmax(logits))`.

    The objective of Mult-VAE (Liang et al. 2018): the songs of a user are
    draws from one softmax over all songs, so songs compete for
    probability mass. The multinomial coefficient, constant in the
    parameters, is dropped.

    Args:
      logits: float `[batch, n_songs]`.
      targets: float `[batch, n_songs]` >= 0, multi-hot or listen counts.

    Returns:
      float32 `[batch]`.
    """
    logits, targets = _as_float32(logits, targets)
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def focal(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jax.Array:
    """Focal loss (Lin et al. 2017), summed over songs.

    With `p = sigmoid(logits)`, a song costs
    `-alpha * t * (1 - p)**gamma * log(p)
    - (1 - alpha) * (1 - t) * p**gamma * log(1 - p)`,
    so songs the model already gets right contribute little. `log p` and
    `log(1 - p)` come from `log_sigmoid` and the powers from
    `exp(gamma * log p)`, which keeps the loss and its gradient finite for
    any finite logit. `gamma = 0` and `alpha = 0.5` give half of `bce`.

    Args:
      logits: float `[batch, n_songs]`.
      targets: float `[batch, n_songs]` in [0, 1].
      alpha: weight of the positive songs, in [0, 1]; negatives get
        `1 - alpha`.
      gamma: focusing exponent, >= 0.

    Returns:
      float32 `[batch]`.
    """
    logits, targets = _as_float32(logits, targets)
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    positive = alpha * targets * jnp.exp(gamma * log_not_p) * log_p
    negative = (1.0 - alpha) * (1.0 - targets) * jnp.exp(gamma * log_p) * log_not_p
    return -jnp.sum(positive + negative, axis=-1)


def focal_per_positive(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jax.Array:
    """`focal` divided by the user's number of positive songs (at least 1).

    Args:
      logits: float `[batch, n_songs]`.
      targets: float `[batch, n_songs]` in [0, 1].
      alpha: weight of the positive songs, in [0, 1].
      gamma: focusing exponent, >= 0.

    Returns:
      float32 `[batch]`.
    """
    targets = jnp.asarray(targets, jnp.float32)
    return _per_positive(focal(logits, targets, alpha=alpha, gamma=gamma), targets)


RECONSTRUCTION: dict[str, ReconstructionLoss] = {
    "bce": bce,
    "bce2": bce_per_positive,
    "ce": multinomial,
    "focal": focal,
    "focal2": focal_per_positive,
}
"""The reconstruction losses by their `LossConfig.name`."""

_FOCAL = ("focal", "focal2")


def get_reconstruction(
    name: str, *, focal_alpha: float = 0.25, focal_gamma: float = 2.0
) -> ReconstructionLoss:
    """The reconstruction loss called `name`, with its parameters bound.

    Args:
      name: a key of `RECONSTRUCTION`.
      focal_alpha: `alpha` of the focal losses; ignored by the others.
      focal_gamma: `gamma` of the focal losses; ignored by the others.

    Returns:
      A function `(logits, targets) -> [batch]`.

    Raises:
      ConfigError: `name` is not a known loss.
    """
    if name not in RECONSTRUCTION:
        raise ConfigError(
            f"unknown reconstruction loss {name!r}; accepted: {list(RECONSTRUCTION)}"
        )
    fn = RECONSTRUCTION[name]
    if name in _FOCAL:
        fn = functools.partial(fn, alpha=focal_alpha, gamma=focal_gamma)
    return fn


def kl_divergence(mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) of a diagonal Gaussian posterior.

    `0.5 * sum(mean**2 + exp(logvar) - 1 - logvar)` (Kingma & Welling 2014,
    appendix B), with `exp(logvar) - 1` computed as `expm1(logvar)` so the
    value is accurate near the prior.

    Args:
      mean: float `[batch, latent_dim]`.
      logvar: float `[batch, latent_dim]`, log of the posterior variances.

    Returns:
      float32 `[batch]`, >= 0 and 0 exactly at `mean = 0, logvar = 0`.
    """
    mean = jnp.asarray(mean, jnp.float32)
    logvar = jnp.asarray(logvar, jnp.float32)
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.expm1(logvar) - logvar, axis=-1)


def beta_at(
    loss_config: LossConfig, *, step: ArrayLike, epoch: ArrayLike
) -> float | jax.Array:
    """The weight of the KL term at a training step.

    0 while `epoch < loss_config.beta_start_epoch`. After that, with
    `anneal_steps > 0`, `min(beta, beta * step / anneal_steps)`: a linear
    rise from 0 to the cap `beta` over the first `anneal_steps` steps, as
    in Mult-VAE (Liang et al. 2018); otherwise `beta`. `step` counts from
    the start of training, not from `beta_start_epoch`.

    Args:
      loss_config: the objective.
      step: the global training step, a Python int or a (traced) array.
      epoch: the current epoch, a Python int or a (traced) array.

    Returns:
      A Python float when `step` and `epoch` are Python numbers, else a
      float32 scalar array (usable inside `jax.jit`).
    """
    beta = loss_config.beta
    anneal = loss_config.anneal_steps
    start = loss_config.beta_start_epoch
    if isinstance(step, numbers.Real) and isinstance(epoch, numbers.Real):
        if epoch < start:
            return 0.0
        return float(min(beta, beta * step / anneal)) if anneal > 0 else float(beta)
    step = jnp.asarray(step, jnp.float32)
    value = jnp.minimum(beta, beta * step / anneal) if anneal > 0 else beta
    return jnp.where(jnp.asarray(epoch) < start, 0.0, value).astype(jnp.float32)


def _check_batch(name: str, array: jax.Array, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}; expected {shape}")


def loss_fn(
    loss_config: LossConfig,
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    mean: ArrayLike | None = None,
    logvar: ArrayLike | None = None,
    beta: float | ArrayLike | None = None,
    weights: ArrayLike | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a batch: reconstruction plus `beta` times KL.

    Each term is the weighted mean over users,
    `sum(weights * per_user) / max(sum(weights), 1)`; rows of weight 0
    (padding) do not affect the value or its gradient, whatever their
    logits. Each part is computed once and returned as a metric.

    Args:
      loss_config: the objective; `name` picks the reconstruction loss.
      logits: float `[batch, n_songs]`, the decoder's output.
      targets: float `[batch, n_songs]`, the songs to reconstruct.
      mean: float `[batch, latent_dim]`, the posterior mean of a VAE; None
        for a deterministic autoencoder (no KL term).
      logvar: float `[batch, latent_dim]`, the posterior log-variance;
        given exactly when `mean` is.
      beta: weight of the KL term, a float or a traced scalar (see
        `beta_at`); None uses `loss_config.beta`.
      weights: float `[batch]`, 1 for a real user and 0 for a padding row;
        None weighs every row 1.

    Returns:
      `(loss, metrics)`: the float32 scalar loss and a dict of float32
      scalars `"recon"`, `"kl"` (0 without `mean`) and `"total"` (the loss).

    Raises:
      InputError: the shapes do not match, or only one of `mean` and
        `logvar` is given.
      ConfigError: `loss_config.name` is not a known loss.
    """
    recon_fn = get_reconstruction(
        loss_config.name,
        focal_alpha=loss_config.focal_alpha,
        focal_gamma=loss_config.focal_gamma,
    )
    logits, targets = _as_float32(logits, targets)
    if logits.ndim != 2:
        raise InputError(f"logits must be [batch, n_songs], got shape {logits.shape}")
    _check_batch("targets", targets, logits.shape)
    batch = logits.shape[0]
    if weights is None:
        weights = jnp.ones((batch,), jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    _check_batch("weights", weights, (batch,))
    if (mean is None) != (logvar is None):
        raise InputError("mean and logvar must be given together (VAE) or not at all")

    real = weights > 0
    total_weight = jnp.maximum(jnp.sum(weights), 1.0)

    def weighted_mean(per_user: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(real, weights * per_user, 0.0)) / total_weight

    recon = weighted_mean(recon_fn(logits, targets))
    if mean is None:
        kl = jnp.zeros((), jnp.float32)
    else:
        mean = jnp.asarray(mean, jnp.float32)
        logvar = jnp.asarray(logvar, jnp.float32)
        if mean.ndim != 2 or mean.shape[0] != batch:
            raise InputError(
                f"mean must be [batch={batch}, latent_dim], got shape {mean.shape}"
            )
        _check_batch("logvar", logvar, mean.shape)
        kl = weighted_mean(kl_divergence(mean, logvar))

    beta = loss_config.beta if beta is None else jnp.asarray(beta, jnp.float32)
    loss = recon + beta * kl
    return loss, {"recon": recon, "kl": kl, "total": loss}
