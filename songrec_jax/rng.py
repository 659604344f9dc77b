"""Turning explicit `key` arguments into random generators.

Functions that draw random numbers take a keyword-only `key`: a JAX PRNG
key (`jax.random.key(0)` or `jax.random.PRNGKey(0)`), or a plain integer
seed. NumPy-side work (data generation, splits, batching) derives a
`numpy.random.Generator` from it, so the same key always gives the same
result and no global random state is ever touched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from songrec_jax.errors import InputError

KeyLike = "jax.Array | int | np.random.Generator"


def numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key or an integer seed."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if key < 0:
            raise InputError(f"seed={key} must be >= 0")
        return np.random.default_rng(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        words = np.asarray(key).astype(np.uint32).ravel().tolist()
        return np.random.default_rng(words)
    raise InputError(f"key={key!r} must be a JAX PRNG key or an integer seed")


def jax_key(key) -> jax.Array:
    """A JAX key from a JAX key or an integer seed."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    raise InputError(f"key={key!r} must be a JAX PRNG key or an integer seed")
