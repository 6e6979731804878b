"""Proximal operators of DEN's sparsity terms (applied after each optimizer update).

* :func:`prox_l1` — the prox of ``t * ||w||_1`` (soft threshold, Eq. 2-5's mu term):
  ``w <- sign(w) * max(|w| - t, 0)``, element-wise.
* :func:`prox_group_lasso_columns` — the prox of ``t * sum_g ||w_g||_2`` (Eq. 5's gamma
  term) where a group ``g`` is one column of a weight matrix ``[fan_in, units]``, i.e.
  one unit's incoming weights: ``w_g <- w_g * max(1 - t / ||w_g||, 0)``.

Both produce exact zeros, which the breadth-first search and the pruning of dead units
rely on. Thresholds are ``lr * lambda`` for proximal gradient descent; the official code
uses ``lambda`` alone (see :class:`~den_jax.den.config.DENConfig.prox_scale`).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

__all__ = [
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
