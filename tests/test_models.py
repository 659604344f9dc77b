import jax
import jax.numpy as jnp
import numpy as np
import pytest

from songrec_jax import models
from songrec_jax.config import ModelConfig
from songrec_jax.errors import InputError


def config(**changes):
    base = dict(kind="vae", n_songs=40, input_len=6, dims=(16, 4))
    return ModelConfig(**{**base, **changes})


X = jnp.array([[1, 2, 3, -1, -1, -1], [5, -1, -1, -1, -1, -1]], jnp.int32)


@pytest.mark.parametrize(
    "kind, dims, pooling",
    [
        ("mlp", (8,), "sum"),
        ("vae", (8,), "attention"),
        ("mlp", (16, 4), "mean"),
        ("vae", (16, 4), "sum"),
        ("mlp", (16, 8, 4), "attention"),
        ("vae", (16, 8, 4), "mean"),
    ],
)
def test_shapes_for_every_depth_and_pooling(kind, dims, pooling):
    c = config(kind=kind, dims=dims, pooling=pooling)
    params = models.init(c, key=jax.random.key(0))
    mean, logvar = models.encode(params, c, X)
    assert mean.shape == (2, dims[-1])
    assert (logvar is None) == (kind == "mlp")
    logits, aux = models.forward(params, c, X, key=jax.random.key(1))
    assert logits.shape == (2, 40) and aux["mean"].shape == (2, dims[-1])


@pytest.mark.parametrize("pooling", ["sum", "mean", "attention"])
def test_padding_contributes_nothing(pooling):
    c = config(pooling=pooling, input_len=6)
    params = models.init(c, key=jax.random.key(0))
    wide = config(pooling=pooling, input_len=9)
    a = models.encode(params, c, X)[0]
    b = models.encode(params, wide, jnp.pad(X, ((0, 0), (0, 3)), constant_values=-1))[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # The order of the songs does not matter either.
    c_ = models.encode(params, c, X[:, ::-1])[0]
    np.testing.assert_allclose(a, c_, rtol=1e-5, atol=1e-6)


def test_sum_pooling_is_the_sum_of_embeddings():
    c = config(kind="mlp", dims=(8,))
    params = models.init(c, key=jax.random.key(0))
    bag = params["params"]["bag"]
    z = models.encode(params, c, X)[0]
    expected = bag["embedding"][jnp.array([1, 2, 3])].sum(0) + bag["bias"]
    np.testing.assert_allclose(z[0], expected, rtol=1e-6)


def test_latent_and_reparametrize():
    c = config()
    params = models.init(c, key=jax.random.key(0))
    mean, logvar = models.encode(params, c, X)
    np.testing.assert_array_equal(models.latent(params, c, X), mean)
    z = models.latent(params, c, X, key=jax.random.key(3))
    expected = mean + jnp.exp(0.5 * logvar) * jax.random.normal(
        jax.random.key(3), mean.shape
    )
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    np.testing.assert_array_equal(
        models.decode(params, c, mean), models.forward(params, c, X)[0]
    )


def test_vae_sample_depends_on_key_and_is_reproducible():
    c = config()
    params = models.init(c, key=jax.random.key(0))
    a = models.forward(params, c, X, key=jax.random.key(1))[0]
    b = models.forward(params, c, X, key=jax.random.key(1))[0]
    d = models.forward(params, c, X, key=jax.random.key(2))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, d)


def test_input_dropout_only_when_training():
    c = config(input_dropout=0.5)
    params = models.init(c, key=jax.random.key(0))
    key = jax.random.key(1)
    eval_a = models.forward(params, c, X, key=key)[1]["mean"]
    np.testing.assert_array_equal(eval_a, models.encode(params, c, X)[0])
    train_means = {
        tuple(
            np.asarray(
                models.forward(params, c, X, key=jax.random.key(i), train=True)[1][
                    "mean"
                ][0]
            )
        )
        for i in range(6)
    }
    assert len(train_means) > 1


def test_padded_outputs_are_masked():
    c = config(song_multiple=16)
    assert c.n_outputs == 48
    params = models.init(c, key=jax.random.key(0))
    logits = models.forward(params, c, X)[0]
    assert logits.shape == (2, 48)
    assert np.all(np.asarray(logits[:, 40:]) <= models.MASKED_LOGIT)


def test_popularity_bias_initialises_the_output_bias():
    c = config(kind="mlp")
    popularity = np.linspace(0.01, 0.5, 40)
    params = models.init(c, key=jax.random.key(0), song_popularity=popularity)
    bias = np.asarray(params["params"]["output"]["bias"])
    np.testing.assert_allclose(bias, np.log(popularity / (1 - popularity)), rtol=1e-5)
    with pytest.raises(InputError, match="shape"):
        models.init(c, key=jax.random.key(0), song_popularity=np.ones(3))


def test_parameter_count_at_full_size():
    c = ModelConfig(kind="vae", n_songs=180_198, dims=(600, 200))
    shapes = jax.eval_shape(lambda: models.init(c, key=jax.random.key(0)))
    assert 216e6 < models.n_params(shapes) < 218e6


def test_each_function_compiles_once_per_shape():
    c = config(n_songs=41)  # a config no other test uses
    params = models.init(c, key=jax.random.key(0))
    before = models._encode._cache_size(), models._forward._cache_size()
    for seed in range(3):
        x = jax.random.randint(jax.random.key(seed), (2, 6), -1, 41)
        models.encode(params, c, x)
        models.forward(params, c, x, key=jax.random.key(seed))
    after = models._encode._cache_size(), models._forward._cache_size()
    assert after[0] - before[0] == 1 and after[1] - before[1] == 1


@pytest.mark.parametrize(
    "x, fragment",
    [
        (np.zeros((2, 5), np.int32), "shape"),
        (np.zeros((2, 6), np.float32), "dtype"),
        (np.full((2, 6), 40), "0..39"),
        (np.full((2, 6), -2), "-1 for padding"),
        (np.zeros(6, np.int32), "shape"),
    ],
)
def test_bad_inputs_raise(x, fragment):
    c = config()
    params = models.init(c, key=jax.random.key(0))
    with pytest.raises(InputError, match=fragment):
        models.encode(params, c, x)
    with pytest.raises(InputError):
        models.decode(params, c, jnp.zeros((2, 5)))
