"""A training step that never builds the dense gradient of the embedding table.

The step of `training.plain_train_step` computes the gradient of every
parameter with `jax.grad` and hands it to Adam. The gradient of the
embedding table `[n_outputs, d]` is zero outside the rows of the songs in
the batch, yet `jax.grad` builds it whole: a fresh table-sized array,
zeroed, then scattered into, then read by Adam, every step.

This step computes the same update without it. The batch's distinct
songs (at most `batch * input_len`) are gathered into a small table of
rows, the model runs on those rows, and their gradient is `[rows, d]`.
Adam then scales every row's moments (a row without gradient only
decays, as in the dense update) and adds the gradient's share to the
rows present. Everything else, the output layer included, is updated by
Adam from its dense gradient, element by element as `optax.adam` does,
so the parameters agree with the plain step's to float32 rounding.

`lazy=True` gives the opt-in "lazy Adam" of
`TrainConfig.lazy_embedding_updates`: the rows of the embedding table (and
attention scores) that are not in the batch are left alone, moments
included, instead of decaying. It changes what is learned slightly (it is
not Adam for those rows) and removes the step's passes over the whole
table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from songrec_jax import losses, models
from songrec_jax.config import Config
from songrec_jax.errors import ConfigError

ROW_SPARSE = ("embedding", "attention")
"""Parameters of the embedding bag looked up by song, updated row-sparsely."""

AUTO_MIN_SONGS = 20_000
"""From this many songs on, `TrainConfig.step = "auto"` takes the fused step."""

Step = Callable[..., tuple[dict, dict]]


def make_step(config: Config, *, lazy: bool = False) -> Step:
    """The pure `step(state, batch, key, beta) -> (state, metrics)`.

    `BufferedStep` runs it jitted, with the output kernel's gradient in a
    buffer kept between steps.

    Same contract as `training.plain_train_step` (not jitted here); the
    optimizer state must be that of `training.make_optimizer`
    (`optax.inject_hyperparams(optax.adam)`).

    Args:
      config: the run's config.
      lazy: update only the embedding rows of the batch (lazy Adam).

    Returns:
      The step function.
    """
    step_with_gradient = _make_step(config, lazy)

    def step(state, batch, key, beta):
        new_state, parts, _ = step_with_gradient(state, batch, key, beta)
        return new_state, parts

    return step


def _make_step(config: Config, lazy: bool):
    """`make_step`'s step, also returning the output kernel's gradient."""
    c = config.model

    def step(state, batch, key, beta):
        params = state["params"]["params"]
        ids, x_local = _unique_rows(batch["inputs"], c.n_outputs)
        bag = params["bag"]
        sparse = {name: bag[name] for name in ROW_SPARSE if name in bag}
        rows = {
            name: table.at[ids].get(mode="fill", fill_value=0)
            for name, table in sparse.items()
        }
        dense = _without(params, sparse)

        def loss_of(dense, rows):
            variables = {"params": _with(dense, sparse), "rows": {"bag": rows}}
            logits, aux = models._forward(variables, c, x_local, key, True)
            posterior = {} if aux["logvar"] is None else aux
            return losses.loss_fn(
                config.loss,
                logits,
                batch["targets"],
                **posterior,
                beta=beta,
                weights=batch["weights"],
            )

        grad_fn = jax.grad(loss_of, argnums=(0, 1), has_aux=True)
        (grads, row_grads), parts = grad_fn(dense, rows)
        # Adam overwrites the output kernel in place, so every read of the
        # old kernel (the logits and `dlogits @ kernel`) must come first.
        # Nothing in the data flow says so (the kernel's update and
        # `dlogits @ kernel` both only follow the logits' gradient), and
        # XLA would copy the kernel (432 MB at full size) every step. A
        # zero computed from the embedding rows' gradient, which follows
        # `dlogits @ kernel`, makes the order explicit.
        after_backward = 0.0 * sum(
            g.reshape(-1)[0] for g in jax.tree_util.tree_leaves(row_grads)
        )

        adam = _Adam(state["opt_state"])
        mu, nu = adam.state.mu["params"], adam.state.nu["params"]
        triples = jax.tree_util.tree_map(
            lambda g, p, m, v: adam.dense(g, p + after_backward.astype(p.dtype), m, v),
            grads,
            dense,
            _like(mu, dense),
            _like(nu, dense),
        )
        new_params = jax.tree_util.tree_map(lambda t: t[0], triples, is_leaf=_triple)
        new_mu = jax.tree_util.tree_map(lambda t: t[1], triples, is_leaf=_triple)
        new_nu = jax.tree_util.tree_map(lambda t: t[2], triples, is_leaf=_triple)
        update_rows = adam.lazy_rows if lazy else adam.rows
        for name, table in sparse.items():
            new_params["bag"][name], new_mu["bag"][name], new_nu["bag"][name] = (
                update_rows(
                    ids, row_grads[name], table, mu["bag"][name], nu["bag"][name]
                )
            )
        new_state = {
            "params": {"params": new_params},
            "opt_state": adam.new_state({"params": new_mu}, {"params": new_nu}),
        }
        return new_state, parts, grads["output"]["kernel"]

    return step


class BufferedStep:
    """`make_step`'s step, jitted, donating `state` and a gradient buffer.

    The gradient of the output kernel (`[n_outputs, features]`, 432 MB at
    full size) is a temporary of every step. XLA on CPU allocates a step's
    temporaries afresh each time it runs, and the operating system hands
    out and zeroes their pages again: about 0.2 s a step at full size on
    a 2-core machine. Here the gradient is also returned, into a buffer
    donated back to the next step, so its memory stays mapped: the same
    update (bit for bit), with that buffer held between steps instead of
    allocated in each.

    Call it as `step(state, batch, key, beta) -> (state, metrics)`; `lower`
    and `_cache_size` are those of the jitted function.
    """

    def __init__(self, config: Config, *, lazy: bool = False, compiler_options=None):
        core = _make_step(config, lazy)

        def step(state, buffer, batch, key, beta):
            del buffer  # only its memory is used, for the new gradient
            return core(state, batch, key, beta)

        self._jitted = jax.jit(
            step,
            donate_argnums=(0, 1),
            keep_unused=True,
            compiler_options=compiler_options,
        )
        self._buffer = None

    def __call__(self, state, batch, key, beta):
        buffer, self._buffer = self._buffer, None  # donated: never reused
        if buffer is None:
            spec = _gradient_spec(state)
            buffer = jnp.zeros(spec.shape, spec.dtype)
        new_state, parts, self._buffer = self._jitted(state, buffer, batch, key, beta)
        return new_state, parts

    def lower(self, state, batch, key, beta):
        return self._jitted.lower(state, _gradient_spec(state), batch, key, beta)

    def _cache_size(self) -> int:
        return self._jitted._cache_size()


def _gradient_spec(state) -> jax.ShapeDtypeStruct:
    """Shape and dtype of the output kernel's gradient."""
    kernel = state["params"]["params"]["output"]["kernel"]
    return jax.ShapeDtypeStruct(kernel.shape, kernel.dtype)


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


def _without(params: dict, sparse: dict) -> dict:
    """A copy of the parameter dict without the row-sparse leaves."""
    dense = {name: dict(layer) for name, layer in params.items()}
    for name in sparse:
        del dense["bag"][name]
    return dense


def _with(dense: dict, sparse: dict) -> dict:
    full = {name: dict(layer) for name, layer in dense.items()}
    full["bag"].update(sparse)
    return full


def _like(tree: dict, like: dict) -> dict:
    """The leaves of `tree` at the paths of `like`."""
    return {
        name: {leaf: tree[name][leaf] for leaf in layer} for name, layer in like.items()
    }


def _triple(t: Any) -> bool:
    return isinstance(t, tuple) and len(t) == 3


# ----------------------------------------------------------------------------
# Adam, element by element as `optax.inject_hyperparams(optax.adam)`.


class _Adam:
    """The update of one step, given the optimizer state before it."""

    def __init__(self, opt_state):
        try:
            self.state = opt_state.inner_state[0]
            hyper = opt_state.hyperparams
            self.lr = jnp.asarray(hyper["learning_rate"], jnp.float32)
            self.b1 = jnp.asarray(hyper["b1"], jnp.float32)
            self.b2 = jnp.asarray(hyper["b2"], jnp.float32)
            self.eps = jnp.asarray(hyper["eps"], jnp.float32)
            self.eps_root = jnp.asarray(hyper["eps_root"], jnp.float32)
            self.state.mu, self.state.nu  # noqa: B018 (Adam's moments)
        except (AttributeError, KeyError, IndexError, TypeError):
            raise ConfigError(
                "the fused training step needs the optimizer state of "
                "training.make_optimizer (optax.inject_hyperparams(optax.adam)); "
                "use train.step='plain' with another optimizer"
            ) from None
        self.opt_state = opt_state
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

        def take(a):
            return a.at[ids].get(mode="fill", fill_value=0)

        def put(a, b):
            return a.at[ids].set(b, mode="drop")

        m_rows = self.first(g, take(m))
        v_rows = self.second(g, take(v))
        p_rows = self.apply(take(p), m_rows, v_rows)
        return put(p, p_rows), put(m, m_rows), put(v, v_rows)

    def new_state(self, mu, nu):
        adam_state = self.state._replace(count=self.count, mu=mu, nu=nu)
        inner = (adam_state, *self.opt_state.inner_state[1:])
        return self.opt_state._replace(
            count=optax.safe_increment(self.opt_state.count), inner_state=inner
        )
