"""The autoencoders: an MLP and a variational autoencoder over song histories.

A user's history is a padded vector of song indices `x` (int32
`[batch, input_len]`, padding `-1`). The encoder embeds each song, pools
the embeddings into one vector (an "embedding bag": sum, mean, or
attention with a learned score per song), and applies the hidden layers
of `ModelConfig.dims`. The last size of `dims` is the latent size:

* MLP: the encoder output is the latent vector `z` itself;
* VAE: two heads give the `mean` and `logvar` of a diagonal Gaussian
  `q(z | x)`, and `z = mean + exp(logvar / 2) * eps` (Kingma & Welling,
  2014, "Auto-Encoding Variational Bayes").

The decoder mirrors the hidden layers and ends with one logit per song.
Activations are tanh, as in Mult-VAE (Liang et al., 2018, "Variational
Autoencoders for Collaborative Filtering"). With `dims = (600, 200)` the
embedding table is the first 600-wide layer; with a single size the
embedding bag produces the latent vector (or, for the VAE, the mean and
log-variance side by side) directly.

Everything is exposed as pure, jit-compiled functions, parameters first:
`init`, `encode`, `reparametrize`, `decode`, `latent` and `forward`. The
config is a static argument: a new config compiles anew, a new batch of
the same shape does not.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from songrec_jax.config import Config, ModelConfig
from songrec_jax.errors import InputError

Params = dict[str, Any]
MASKED_LOGIT = -1e9  # logit given to padding songs beyond `n_songs`


def model_config(config: Config | ModelConfig) -> ModelConfig:
    """The ModelConfig of a full Config, or the argument itself."""
    return config.model if isinstance(config, Config) else config


class EmbeddingBag(nn.Module):
    """Pools the embeddings of the songs of each history into one vector.

    Attributes:
      n_songs: rows of the embedding table (the model gives it
        `n_outputs` rows, so that it shards like the output layer; rows
        beyond the real songs are never looked up).
      features: embedding width.
      pooling: "sum", "mean" or "attention".
    """

    n_songs: int
    features: int
    pooling: str

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Args: x int32 [B, L]; mask bool [B, L]. Returns [B, features].

        When the variables hold a "rows" collection (`{"embedding": [R,
        features]}`, plus `"attention": [R]` for attention pooling), `x`
        indexes those rows instead of the whole tables: the training step
        passes only the rows of the songs in its batch, so that their
        gradient is `[R, features]` rather than the size of the table.
        """
        table = self.param(
            "embedding", nn.initializers.normal(0.02), (self.n_songs, self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        scores = None
        if self.pooling == "attention":
            scores = self.param("attention", nn.initializers.zeros, (self.n_songs,))
        if self.has_variable("rows", "embedding"):
            table = self.get_variable("rows", "embedding")
            if scores is not None:
                scores = self.get_variable("rows", "attention")
        safe = jnp.where(mask, x, 0)
        if scores is not None:
            s = jnp.where(mask, jnp.take(scores, safe), -jnp.inf)
            weights = jax.nn.softmax(s, axis=-1, where=mask)
            weights = jnp.where(mask, weights, 0.0)
        else:
            weights = mask.astype(table.dtype)
            if self.pooling == "mean":
                weights = weights / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)
        return weighted_rows(table, safe, weights) + bias


def weighted_rows(table: jax.Array, rows: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_l weights[b, l] * table[rows[b, l]]`, `[B, features]`.

    A loop over the `L` positions, each gathering one `[B, features]` slab:
    the same sum as gathering all `[B, L, features]` rows at once and
    contracting them, without that large temporary (several times faster
    on a CPU at 100 positions and 600 features).
    """

    rows, weights = jnp.asarray(rows), jnp.asarray(weights)

    def add_position(position, total):
        vectors = jnp.take(table, rows[:, position], axis=0)
        return total + weights[:, position, None] * vectors

    total = jnp.zeros((rows.shape[0], table.shape[1]), table.dtype)
    return jax.lax.fori_loop(0, rows.shape[1], add_position, total)


class SongOutput(nn.Module):
    """The output layer: one logit per song, `h @ kernel.T + bias`.

    The kernel is stored song-major, `[n_songs, features]` (one row per
    song, like the embedding table), rather than Flax `Dense`'s
    `[features, n_songs]`: a block of songs is then a contiguous block of
    rows, and the gradient `dlogits.T @ h` and `dlogits @ kernel` have the
    shapes a CPU multiplies fastest at this size.

    Attributes:
      n_songs: number of logits.
    """

    n_songs: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """Args: h [B, features]. Returns logits [B, n_songs]."""
        init = nn.initializers.lecun_normal(in_axis=1, out_axis=0)
        kernel = self.param("kernel", init, (self.n_songs, h.shape[-1]))
        bias = self.param("bias", nn.initializers.zeros, (self.n_songs,))
        logits = jax.lax.dot_general(h, kernel, (((1,), (1,)), ((), ())))
        return add_bias(logits, bias)


@jax.custom_vjp
def add_bias(logits: jax.Array, bias: jax.Array) -> jax.Array:
    """`logits + bias` for logits `[B, n]`, whose bias gradient, the sum of
    the logits' gradient over the batch, is taken as `ones @ g`: XLA on CPU
    sums a `[B, n]` array over its first axis tens of times slower than it
    multiplies it by a vector."""
    return logits + bias


def _add_bias_forward(logits, bias):
    return logits + bias, logits.shape[0]


def _add_bias_backward(batch, g):
    ones = jnp.ones((1, batch), g.dtype)
    return g, (ones @ g).reshape(g.shape[1:])


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


class Autoencoder(nn.Module):
    """MLP or VAE autoencoder; see the module docstring.

    Attributes:
      config: the architecture.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        hidden, latent_dim = c.dims[:-1], c.dims[-1]
        if hidden:
            bag_width = hidden[0]
        else:
            bag_width = latent_dim * (2 if c.kind == "vae" else 1)
        self.bag = EmbeddingBag(c.n_outputs, bag_width, c.pooling)
        self.encoder_layers = [
            nn.Dense(h, name=f"encoder_{i}") for i, h in enumerate(hidden[1:])
        ]
        if hidden:
            self.mean_head = nn.Dense(latent_dim, name="mean")
            if c.kind == "vae":
                self.logvar_head = nn.Dense(latent_dim, name="logvar")
        self.decoder_layers = [
            nn.Dense(h, name=f"decoder_{i}") for i, h in enumerate(reversed(hidden))
        ]
        self.output = SongOutput(c.n_outputs, name="output")

    def encode(self, x: jax.Array, dropout_key: jax.Array | None = None):
        """Args: x int32 [B, L]. Returns (mean [B, d], logvar [B, d] or None)."""
        c = self.config
        mask = x >= 0
        if dropout_key is not None and c.input_dropout > 0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - c.input_dropout, x.shape)
            mask = mask & keep
        h = self.bag(x, mask)
        if dropout_key is not None and c.input_dropout > 0 and c.pooling == "sum":
            h = h / (1.0 - c.input_dropout)
        if not c.dims[:-1]:
            if c.kind == "vae":
                mean, logvar = jnp.split(h, 2, axis=-1)
                return mean, logvar
            return h, None
        h = jnp.tanh(h)
        for layer in self.encoder_layers:
            h = jnp.tanh(layer(h))
        mean = self.mean_head(h)
        logvar = self.logvar_head(h) if c.kind == "vae" else None
        return mean, logvar

    def decode(self, z: jax.Array) -> jax.Array:
        """Args: z [B, d]. Returns logits [B, n_outputs]."""
        h = z
        for layer in self.decoder_layers:
            h = jnp.tanh(layer(h))
        logits = self.output(h)
        c = self.config
        if c.n_outputs > c.n_songs:
            real = jnp.arange(c.n_outputs) < c.n_songs
            logits = jnp.where(real, logits, MASKED_LOGIT)
        return logits

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, _ = self.encode(x)
        return self.decode(mean)


def init(
    config: Config | ModelConfig,
    *,
    key: jax.Array,
    song_popularity: np.ndarray | None = None,
) -> Params:
    """Initial parameters (the replacement of building an untrained model).

    Args:
      config: the architecture.
      key: PRNG key for the weights.
      song_popularity: optional float [n_songs], the share of users who
        listened to each song. When given and `popularity_bias` is set,
        the output bias starts at its logit, so the untrained model already
        ranks by popularity (a head start; training moves away from it).

    Returns:
      The parameter tree `{"params": {...}}`.
    """
    c = model_config(config)
    x = jnp.full((1, c.input_len), -1, jnp.int32)
    params = jax.jit(Autoencoder(c).init)(key, x)
    if song_popularity is not None and c.popularity_bias:
        p = np.asarray(song_popularity, np.float64)
        if p.shape != (c.n_songs,):
            raise InputError(
                f"song_popularity has shape {p.shape}; expected ({c.n_songs},)"
            )
        p = np.clip(p, 1e-6, 1 - 1e-6)
        bias = np.zeros(c.n_outputs, np.float32)
        bias[: c.n_songs] = np.log(p) - np.log1p(-p)
        params["params"]["output"]["bias"] = jnp.asarray(bias)
    return params


@functools.partial(jax.jit, static_argnums=1)
def _encode(params, config, x, dropout_key=None):
    return Autoencoder(config).apply(params, x, dropout_key, method="encode")


def encode(params: Params, config: Config | ModelConfig, x: jax.Array):
    """Encodes histories.

    Args:
      params: model parameters.
      config: the architecture.
      x: int32 [B, input_len] song indices, -1 for padding.

    Returns:
      `(mean, logvar)`, each [B, latent_dim]; `logvar` is None for the MLP,
      whose `mean` is its latent vector.
    """
    c = model_config(config)
    return _encode(params, c, check_inputs(x, c))


@jax.jit
def reparametrize(mean: jax.Array, logvar: jax.Array, *, key: jax.Array) -> jax.Array:
    """Samples `z = mean + exp(logvar / 2) * eps`, `eps ~ N(0, I)`."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


@functools.partial(jax.jit, static_argnums=1)
def _decode(params, config, z):
    return Autoencoder(config).apply(params, z, method="decode")


def decode(params: Params, config: Config | ModelConfig, z: jax.Array) -> jax.Array:
    """Decodes latent vectors z [B, latent_dim] to logits [B, n_outputs]."""
    c = model_config(config)
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[-1] != c.latent_dim:
        raise InputError(f"z has shape {z.shape}; expected [batch, {c.latent_dim}]")
    return _decode(params, c, z)


def latent(
    params: Params,
    config: Config | ModelConfig,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
) -> jax.Array:
    """The latent vector of each history: MLP output; VAE mean, or a sample."""
    mean, logvar = encode(params, config, x)
    if key is None or logvar is None:
        return mean
    return reparametrize(mean, logvar, key=key)


@functools.partial(jax.jit, static_argnums=(1, 4))
def _forward(params, config, x, key, train):
    model = Autoencoder(config)
    dropout_key = z_key = None
    if key is not None:
        dropout_key, z_key = jax.random.split(key)
    mean, logvar = model.apply(
        params, x, dropout_key if train else None, method="encode"
    )
    z = mean
    if logvar is not None and z_key is not None:
        z = reparametrize(mean, logvar, key=z_key)
    logits = model.apply(params, z, method="decode")
    return logits, {"mean": mean, "logvar": logvar}


def forward(
    params: Params,
    config: Config | ModelConfig,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    train: bool = False,
):
    """Encodes, samples (VAE, when a key is given) and decodes.

    Args:
      params: model parameters.
      config: the architecture.
      x: int32 [B, input_len] song indices, -1 for padding.
      key: PRNG key for the VAE sample and input dropout; without it the
        VAE decodes its mean (deterministic scoring).
      train: apply input dropout (needs `key`).

    Returns:
      `(logits [B, n_outputs], {"mean": ..., "logvar": ...})`.
    """
    c = model_config(config)
    return _forward(params, c, check_inputs(x, c), key, train)


def apply_train(params, config: ModelConfig, x, key):
    """`forward` for use inside an already jitted training step (no checks)."""
    return _forward.__wrapped__(params, config, x, key, True)


def check_inputs(x, config: ModelConfig) -> jax.Array:
    """Validates a batch of padded song-index inputs (shape, dtype, range)."""
    if isinstance(x, jax.core.Tracer):
        return x
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != config.input_len:
        raise InputError(
            f"inputs have shape {arr.shape}; expected [batch, "
            f"{config.input_len}] (use to_input to pad histories)"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"inputs have dtype {arr.dtype}; expected integer song indices"
        )
    if arr.size and (arr.min() < -1 or arr.max() >= config.n_songs):
        raise InputError(
            f"inputs hold song indices in [{arr.min()}, {arr.max()}]; "
            f"accepted: 0..{config.n_songs - 1}, or -1 for padding"
        )
    return jnp.asarray(arr, jnp.int32)


def n_params(params: Params) -> int:
    """Total number of parameters."""
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


@functools.lru_cache(maxsize=32)
def _param_shapes(config: ModelConfig):
    shapes = jax.eval_shape(lambda: init(config, key=jax.random.key(0)))
    return jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes)


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    """bool `[n_leaves]`: whether each array holds only finite numbers."""
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])


# Arrays already found finite, by id, with a weak reference that tells
# whether the id still names the same array (ids are reused once freed).
_finite_arrays: dict[int, weakref.ref] = {}


def _known_finite(leaves: list) -> bool:
    return all(
        (ref := _finite_arrays.get(id(leaf))) is not None and ref() is leaf
        for leaf in leaves
    )


def _remember_finite(leaves: list) -> None:
    for leaf in leaves:
        if isinstance(leaf, jax.Array):  # immutable, unlike a NumPy array
            key = id(leaf)
            forget = functools.partial(_forget_finite, key)
            _finite_arrays[key] = weakref.ref(leaf, forget)


def _forget_finite(key: int, _ref: weakref.ref) -> None:
    _finite_arrays.pop(key, None)


def check_params(params: Params, config: Config | ModelConfig) -> None:
    """Checks that parameters fit the config and hold only finite numbers.

    Raises:
      InputError: a missing, extra or misshapen parameter (parameters of
        another config), or a NaN or infinite value (a diverged model).
    """
    c = model_config(config)
    expected = _param_shapes(c)
    try:
        got = jax.tree_util.tree_map(lambda a: (tuple(a.shape), a.dtype), params)
        same = (
            jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
            and got == expected
        )
    except (AttributeError, TypeError):
        same = False
    if not same:
        raise InputError(
            f"the parameters do not match the model config (kind={c.kind}, "
            f"n_songs={c.n_songs}, dims={c.dims}, pooling={c.pooling}); pass the "
            "config they were trained with (checkpointing.load_params returns it)"
        )
    leaves = jax.tree_util.tree_leaves(params)
    if _known_finite(leaves):  # checked before: immutable arrays stay finite
        return
    finite = np.asarray(_all_finite(leaves))
    if finite.all():
        _remember_finite(leaves)
        return
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    bad = [
        jax.tree_util.keystr(p) for p, ok in zip(paths, finite, strict=True) if not ok
    ]
    if bad:
        raise InputError(
            f"the parameters hold NaN or infinite values in {bad}; "
            "the model diverged or the checkpoint is damaged"
        )
