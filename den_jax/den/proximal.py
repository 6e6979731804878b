"""Proximal operators of DEN's sparsity terms (applied after each optimizer update).

* :func:`prox_l1` — the prox of ``t * ||w||_1`` (soft threshold, Eq. 2-5's mu term):
  ``w <- sign(w) * max(|w| - t, 0)``, element-wise.
* :func:`prox_group_lasso_columns` — the prox of ``t * sum_g ||w_g||_2`` (Eq. 5's gamma
  term) where a group ``g`` is one column of a weight matrix ``[fan_in, units]``, i.e.
  one unit's incoming weights: ``w_g <- w_g * max(1 - t / ||w_g||, 0)``.

Both produce exact zeros, which the breadth-first search and the pruning of dead units
rely on. Thresholds are ``lr * lambda`` for proximal gradient descent; the official code
uses ``lambda`` alone (see :class:`~den_jax.den.config.DENConfig.prox_scale`).

* :func:`adam_l1_prox` — Adam with the L1 prox in Adam's own metric (``prox_scale="adam"``).
  Adam's step on coordinate ``i`` is ``lr / (sqrt(v_hat_i) + eps)`` times the (averaged)
  gradient, so the proximal step that belongs to it is a soft threshold of
  ``lr * mu / (sqrt(v_hat_i) + eps)`` on that coordinate (the prox of ``lr * mu * |w|_1``
  in the diagonal metric ``D = diag(sqrt(v_hat) + eps)``). With a scalar ``lr * mu``
  (about 1e-5) against Adam's moves of about ``lr`` (1e-3) per step, zeros appear and vanish
  again; in Adam's metric a weight at zero stays zero while ``|m_hat_i| < mu`` roughly (the
  L1 optimality condition ``|dL/dw_i| <= mu``), whatever the gradient's scale.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

__all__ = [
    "adam_l1_prox",
    "prox_group_lasso_columns",
    "prox_l1",
    "soft_threshold",
]


def soft_threshold(x: jax.Array, threshold: jax.Array | float) -> jax.Array:
    """``sign(x) * max(|x| - threshold, 0)`` element-wise (the prox of ``threshold*|x|``)."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0).astype(x.dtype)


def prox_l1(tree: Any, threshold: jax.Array | float, mask: Any | None = None) -> Any:
    """Soft-thresholds every leaf of ``tree`` (or only entries where ``mask`` is non-zero).

    Args:
      tree: a pytree of float arrays.
      threshold: scalar threshold ``t >= 0`` (e.g. ``lr * mu``).
      mask: optional pytree like ``tree`` (or with ``None`` leaves) of 0/1 arrays; entries
        with 0 are left unchanged. A leaf of ``mask`` that is ``None`` leaves the whole
        leaf unchanged.

    Returns:
      A pytree like ``tree``.
    """
    if mask is None:
        return jax.tree.map(lambda v: soft_threshold(v, threshold), tree)

    def one(m, v):
        if m is None:
            return v
        return jnp.where(m != 0, soft_threshold(v, threshold), v)

    return jax.tree.map(one, mask, tree, is_leaf=lambda m: m is None)


def prox_group_lasso_columns(
    w: jax.Array, threshold: jax.Array | float, columns: jax.Array | None = None
) -> jax.Array:
    """Group soft threshold on the columns of ``w`` (one group = one unit's incoming weights).

    Args:
      w: ``[fan_in, units]`` weight matrix.
      threshold: scalar ``t >= 0``.
      columns: optional ``[units]`` 0/1 vector: only columns with 1 form groups (DEN: the
        units added by the expansion); the others are returned unchanged.

    Returns:
      ``[fan_in, units]``: column ``j`` (if selected) scaled by ``max(1 - t/||w_j||, 0)``;
      a column with norm <= t becomes exactly zero.
    """
    chex.assert_rank(w, 2)
    norms = jnp.sqrt(jnp.sum(w * w, axis=0))
    scale = jnp.maximum(1.0 - threshold / jnp.maximum(norms, 1e-30), 0.0)
    scale = jnp.where(norms > threshold, scale, 0.0)
    if columns is not None:
        chex.assert_shape(columns, (w.shape[1],))
        scale = jnp.where(columns != 0, scale, 1.0)
    return (w * scale[None, :]).astype(w.dtype)


def _is_weight(path) -> bool:
    return getattr(path[-1], "key", None) == "w"


def adam_l1_prox(
    learning_rate: optax.ScalarOrSchedule,
    l1_lambda: float,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam whose update ends with the L1 prox in Adam's metric (weights ``"w"`` only).

    ``z = w - lr * m_hat / (sqrt(v_hat) + eps)``, then
    ``w' = sign(z) * max(|z| - lr * mu / (sqrt(v_hat) + eps), 0)`` on every leaf whose key is
    ``"w"``; biases get the plain Adam step. The state is ``(ScaleByAdamState,
    ScaleByScheduleState)`` like ``optax.adam``'s, so moment growth by unit id and the
    schedule's step count work as for Adam.

    Args:
      learning_rate: a float or a schedule ``step -> lr``.
      l1_lambda: mu (>= 0).
      b1, b2, eps: Adam's constants (optax defaults).

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.
    """
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    sched = optax.scale_by_schedule(
        learning_rate if callable(learning_rate) else (lambda _: learning_rate)
    )

    def init(params):
        return adam.init(params), sched.init(params)

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("adam_l1_prox needs params in update()")
        a_state, s_state = state
        direction, a_state = adam.update(grads, a_state, params)
        lr = learning_rate(s_state.count) if callable(learning_rate) else learning_rate
        count = a_state.count.astype(jnp.float32)
        bias2 = 1.0 - b2**count

        def one(path, w, d, nu):
            z = w - lr * d
            if not _is_weight(path) or l1_lambda == 0:
                return z - w
            scale = jnp.sqrt(nu / bias2) + eps
            return soft_threshold(z, lr * l1_lambda / scale).astype(w.dtype) - w

        updates = jax.tree_util.tree_map_with_path(one, params, direction, a_state.nu)
        s_state = optax.ScaleByScheduleState(count=optax.safe_increment(s_state.count))
        return updates, (a_state, s_state)

    return optax.GradientTransformation(init, update)
