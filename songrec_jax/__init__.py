"""songrec_jax: autoencoder music recommendation with tag steering, in JAX."""

__version__ = "0.1.0"
