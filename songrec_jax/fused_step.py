"""A training step that never builds the dense gradients of the song-sized layers.

The step of `training.make_train_step` computes the gradient of every
parameter with `jax.grad` and hands it to Adam. With a large catalogue
two parameters dominate: the embedding table `[n_outputs, d]` and the
output kernel `[d, n_outputs]`. Their dense gradients are two temporary
arrays of the size of the tables, and Adam then reads and writes every
element of both several times. On a CPU each fresh temporary costs a page
fault per 4 KiB, so building them can take longer than the arithmetic.

This step computes the same update without them:

* Embedding table (and the attention scores): the batch looks up only
  the rows of the songs it contains. Those rows (at most `batch *
  input_len`, de-duplicated) are gathered once, the model runs on them,
  and the gradient is a small `[rows, d]` array. Adam then scales all
  moments in place and adds the gradient's share to the rows present,
  which is exactly the dense update (a row without gradient only decays).
* Output kernel: the gradient is `hidden.T @ dlogits`. It is computed a
  block of songs at a time inside the loop that applies Adam to that
  block, so each block is used while it is in cache and the full gradient
  never exists.

The arithmetic is that of `optax.adam`, element by element; only the
order of some float32 sums may differ (blocked matrix products), so the
parameters agree with the `jax.grad` step to float32 rounding.

`lazy=True` gives the opt-in "lazy Adam" of `TrainConfig.lazy_embedding_updates`:
the rows of the embedding table (and attention scores) that are not in the
batch are left alone, moments included, instead of decaying. It changes
what is learned slightly (it is not Adam for those rows) and removes the
last passes over the whole table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from songrec_jax import losses, models
from songrec_jax.config import Config

ROW_SPARSE = ("embedding", "attention")
"""Parameters of the embedding bag looked up by song, updated row-sparsely."""

OUTPUT_BLOCK = 2048
"""Songs per block of the output layer's fused gradient and Adam update."""

AUTO_MIN_SONGS = 20_000
"""From this many songs on, `TrainConfig.step = "auto"` takes the fused step."""

Step = Callable[..., tuple[dict, dict]]


def make_step(config: Config, *, lazy: bool = False, block: int = OUTPUT_BLOCK) -> Step:
    """The pure `step(state, batch, key, beta) -> (state, metrics)`.

    Same contract as `training.make_train_step` (not jitted here); the
    optimizer state must be that of `optax.inject_hyperparams(optax.adam)`.

    Args:
      config: the run's config.
      lazy: update only the embedding rows of the batch (lazy Adam).
      block: songs per block of the output layer's update.

    Returns:
      The step function.
    """
    c = config.model
    model = models.Autoencoder(c)

    def hidden(module, x, key):
        # `models._forward` with train=True, stopped before the output layer.
        dropout_key, z_key = jax.random.split(key)
        mean, logvar = module.encode(x, dropout_key)
        z = mean if logvar is None else models.reparametrize(mean, logvar, key=z_key)
        h = z
        for layer in module.decoder_layers:
            h = jnp.tanh(layer(h))
        return h, mean, logvar

    def step(state, batch, key, beta):
        params = state["params"]["params"]
        x = batch["inputs"]
        ids, x_local = _unique_rows(x, c.n_outputs)
        bag = params["bag"]
        sparse = {name: bag[name] for name in ROW_SPARSE if name in bag}
        rows = {
            name: table.at[ids].get(mode="fill", fill_value=0)
            for name, table in sparse.items()
        }
        kernel = params["output"]["kernel"]
        dense = _without(params, sparse, kernel)

        def body(dense, rows):
            full = _with(dense, sparse, kernel)
            variables = {"params": full, "rows": {"bag": rows}}
            return model.apply(variables, x_local, key, method=hidden)

        (h, mean, logvar), body_vjp = jax.vjp(body, dense, rows)
        logits = _output(h, kernel, dense["output"]["bias"], c)

        def loss_of(logits, mean, logvar):
            posterior = {} if logvar is None else {"mean": mean, "logvar": logvar}
            return losses.loss_fn(
                config.loss,
                logits,
                batch["targets"],
                **posterior,
                beta=beta,
                weights=batch["weights"],
            )

        _, loss_vjp, parts = jax.vjp(loss_of, logits, mean, logvar, has_aux=True)
        dlogits, dmean, dlogvar = loss_vjp(jnp.ones((), jnp.float32))
        if c.n_outputs > c.n_songs:
            dlogits = jnp.where(jnp.arange(c.n_outputs) < c.n_songs, dlogits, 0.0)
        opt_state = state["opt_state"]
        adam = _Adam(opt_state)
        mu, nu = adam.state.mu["params"], adam.state.nu["params"]
        # One pass over the output kernel: the gradient of `h` reads each
        # block before Adam overwrites it in place.
        new_kernel, kernel_mu, kernel_nu, dh = adam.output_kernel(
            h, dlogits, kernel, mu["output"]["kernel"], nu["output"]["kernel"], block
        )
        grads, row_grads = body_vjp((dh, dmean, dlogvar))
        grads["output"]["bias"] = jnp.sum(dlogits, axis=0)

        flat = jax.tree_util.tree_map(
            adam.dense, grads, dense, _sub(mu, dense), _sub(nu, dense)
        )
        new_dense = jax.tree_util.tree_map(lambda t: t[0], flat, is_leaf=_is_triple)
        new_mu = jax.tree_util.tree_map(lambda t: t[1], flat, is_leaf=_is_triple)
        new_nu = jax.tree_util.tree_map(lambda t: t[2], flat, is_leaf=_is_triple)
        new_dense["output"]["kernel"] = new_kernel
        new_mu["output"]["kernel"] = kernel_mu
        new_nu["output"]["kernel"] = kernel_nu
        update_rows = adam.lazy_rows if lazy else adam.rows
        for name, table in sparse.items():
            new_dense["bag"][name], new_mu["bag"][name], new_nu["bag"][name] = (
                update_rows(
                    ids, row_grads[name], table, mu["bag"][name], nu["bag"][name]
                )
            )

        new_state = {
            "params": {"params": new_dense},
            "opt_state": adam.new_state({"params": new_mu}, {"params": new_nu}),
        }
        return new_state, parts

    return step


# ----------------------------------------------------------------------------
# Parameters.


def _unique_rows(x: jax.Array, n_rows: int) -> tuple[jax.Array, jax.Array]:
    """The distinct songs of a batch and the inputs re-indexed to them.

    Returns `(ids int32 [B * L], x_local int32 [B, L])`: `ids` sorted, with
    `n_rows` (out of range) in the unused slots; `x_local[b, l]` indexes
    `ids`, -1 where `x` is padding.
    """
    present = x >= 0
    flat = jnp.where(present, x, n_rows).reshape(-1)
    ids, inverse = jnp.unique(
        flat, size=flat.size, fill_value=n_rows, return_inverse=True
    )
    x_local = jnp.where(present, inverse.reshape(x.shape), -1)
    return ids.astype(jnp.int32), x_local.astype(jnp.int32)


def _without(params: dict, sparse: dict, kernel: jax.Array) -> dict:
    """A copy of the parameter dict without the row-sparse leaves and kernel."""
    dense = {name: dict(layer) for name, layer in params.items()}
    for name in sparse:
        del dense["bag"][name]
    del dense["output"]["kernel"]
    return dense


def _with(dense: dict, sparse: dict, kernel: jax.Array) -> dict:
    full = {name: dict(layer) for name, layer in dense.items()}
    full["bag"].update(sparse)
    full["output"]["kernel"] = kernel
    return full


def _sub(tree: dict, like: dict) -> dict:
    """The leaves of `tree` at the paths of `like`."""
    return {
        name: {leaf: tree[name][leaf] for leaf in layer} for name, layer in like.items()
    }


def _is_triple(t: Any) -> bool:
    return isinstance(t, tuple) and len(t) == 3


def _output(h: jax.Array, kernel: jax.Array, bias: jax.Array, c) -> jax.Array:
    """The output layer of `models.Autoencoder.decode` (padded songs masked)."""
    logits = lax.dot_general(h, kernel, (((1,), (0,)), ((), ())))
    logits = logits + bias.reshape(1, -1)
    if c.n_outputs > c.n_songs:
        real = jnp.arange(c.n_outputs) < c.n_songs
        logits = jnp.where(real, logits, models.MASKED_LOGIT)
    return logits


# ----------------------------------------------------------------------------
# Adam, element by element as `optax.inject_hyperparams(optax.adam)`.


class _Adam:
    """The update of one step, given the optimizer state before it."""

    def __init__(self, opt_state):
        self.opt_state = opt_state
        self.state = opt_state.inner_state[0]
        hyper = opt_state.hyperparams
        self.lr = jnp.asarray(hyper["learning_rate"], jnp.float32)
        self.b1 = jnp.asarray(hyper["b1"], jnp.float32)
        self.b2 = jnp.asarray(hyper["b2"], jnp.float32)
        self.eps = jnp.asarray(hyper["eps"], jnp.float32)
        self.eps_root = jnp.asarray(hyper["eps_root"], jnp.float32)
        self.count = optax.safe_increment(self.state.count)
        self.bias1 = 1 - self.b1**self.count
        self.bias2 = 1 - self.b2**self.count

    def first(self, g, m):
        return (1 - self.b1) * g + self.b1 * m

    def second(self, g, v):
        return (1 - self.b2) * (g**2) + self.b2 * v

    def apply(self, p, m, v):
        """`p` moved by the update of the (already updated) moments."""
        m_hat = m / self.bias1.astype(m.dtype)
        v_hat = v / self.bias2.astype(v.dtype)
        update = (-1 * self.lr) * (m_hat / (jnp.sqrt(v_hat + self.eps_root) + self.eps))
        return jnp.asarray(p + update).astype(p.dtype)

    def dense(self, g, p, m, v):
        m = self.first(g, m)
        v = self.second(g, v)
        return self.apply(p, m, v), m, v

    def output_kernel(self, h, dlogits, p, m, v, block):
        """Adam on the output kernel `p [d, n]`.

        One loop over blocks of songs computes each block's gradient
        `h.T @ dlogits[:, block]`, updates the moments of the block in
        place, and accumulates the gradient of the layer's input, `dlogits
        @ p.T`, from the same blocks; one pass then moves `p`. Only the loop
        reads `p`, and the pass depends on the loop, so XLA updates `p`, `m`
        and `v` in place (a read of `p` it could not order before the
        overwrite would make it copy the whole kernel).

        Returns:
          `(p, m, v, dh [batch, d])`.
        """
        n = p.shape[1]
        block = min(block, n)

        def update(i, carry):
            m, v, dh = carry
            # The last block ends at `n` and overlaps the one before it;
            # `fresh` marks the songs no earlier block has covered.
            start = jnp.minimum(i * block, n - block)
            fresh = start + jnp.arange(block) >= i * block
            piece = lambda a: lax.dynamic_slice_in_dim(a, start, block, axis=1)  # noqa: E731
            put = lambda a, b: lax.dynamic_update_slice_in_dim(a, b, start, axis=1)  # noqa: E731
            dl = jnp.where(fresh, piece(dlogits), 0.0)
            dh = dh + lax.dot_general(dl, piece(p), (((1,), (1,)), ((), ())))
            g = lax.dot_general(h, dl, (((0,), (0,)), ((), ())))
            # Each moment is read and written at the same block in one
            # expression, so XLA updates it in place.
            m = put(m, jnp.where(fresh, self.first(g, piece(m)), piece(m)))
            v = put(v, jnp.where(fresh, self.second(g, piece(v)), piece(v)))
            return m, v, dh

        dh = jnp.zeros(h.shape, h.dtype)
        m, v, dh = lax.fori_loop(0, -(-n // block), update, (m, v, dh))
        return self.apply(p, m, v), m, v, dh

    def rows(self, ids, g, p, m, v):
        """Exact Adam on a table whose gradient is zero outside the rows `ids`
        (sorted, distinct; out-of-range ids are ignored)."""
        m = self.b1 * m
        m = m.at[ids].add((1 - self.b1) * g, mode="drop")
        v = self.b2 * v
        v = v.at[ids].add((1 - self.b2) * (g**2), mode="drop")
        return self.apply(p, m, v), m, v

    def lazy_rows(self, ids, g, p, m, v):
        """Adam on the rows `ids` only; every other row, moments included,
        stays as it is."""
        take = lambda a: a.at[ids].get(mode="fill", fill_value=0)  # noqa: E731
        m_rows = self.first(g, take(m))
        v_rows = self.second(g, take(v))
        p_rows = self.apply(take(p), m_rows, v_rows)
        put = lambda a, b: a.at[ids].set(b, mode="drop")  # noqa: E731
        return put(p, p_rows), put(m, m_rows), put(v, v_rows)

    def new_state(self, mu, nu):
        adam_state = self.state._replace(count=self.count, mu=mu, nu=nu)
        inner = (adam_state, *self.opt_state.inner_state[1:])
        return self.opt_state._replace(
            count=optax.safe_increment(self.opt_state.count), inner_state=inner
        )
