"""Batch losses ``(outputs [B, C], targets) -> scalar``: one definition of each.

Every function returns the *mean* over the batch (and, for the element-wise losses, over
the output columns), so a loss value does not depend on the batch size or on the number
of classes:

* :func:`softmax_ce`: softmax cross-entropy; ``targets`` integer labels ``[B]`` or a
  distribution ``[B, C]``.
* :func:`sigmoid_ce`: one-vs-rest sigmoid cross-entropy, mean over batch *and* classes
  (the reduction of the official DEN code); integer labels are one-hot encoded.
* :func:`mse`: mean squared error; ``targets`` must have the shape of ``outputs``.
* :func:`huber`: Huber loss with threshold ``delta``; same shape rule as :func:`mse`.

The regression losses refuse targets whose shape differs from the outputs' (instead of
broadcasting ``[B]`` against ``[B, 1]`` into a ``[B, B]`` matrix, which silently trains
on the wrong objective). :func:`get_loss` maps a name to its function.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

__all__ = ["LOSSES", "Loss", "get_loss", "huber", "mse", "sigmoid_ce", "softmax_ce"]

Loss = Callable[[jax.Array, jax.Array], jax.Array]


def _labels_or_targets(logits: jax.Array, y: jax.Array, name: str) -> bool:
    """True if ``y`` holds integer labels ``[B]``; checks the shapes either way."""
    if logits.ndim < 1:
        raise ValueError(f"{name}: outputs must be [B, C], got a scalar")
    if y.ndim == logits.ndim:
        if y.shape != logits.shape:
            raise ValueError(
                f"{name}: targets {tuple(y.shape)} must have the outputs' shape "
                f"{tuple(logits.shape)} (or be integer labels {tuple(logits.shape[:-1])})"
            )
        return False
    if y.shape != logits.shape[:-1]:
        raise ValueError(
            f"{name}: integer labels must have shape {tuple(logits.shape[:-1])} for outputs "
            f"{tuple(logits.shape)}, got {tuple(y.shape)}"
        )
    return True


def softmax_ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy.

    Args:
      logits: ``[B, C]``.
      y: integer labels ``[B]`` or target distributions ``[B, C]``.

    Returns:
      The mean over the batch (a scalar).
    """
    if _labels_or_targets(logits, y, "softmax_ce"):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32)).mean()
    return optax.softmax_cross_entropy(logits, y).mean()


def sigmoid_ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean one-vs-rest sigmoid cross-entropy over batch *and* classes (official DEN).

    Args:
      logits: ``[B, C]``.
      y: integer labels ``[B]`` (one-hot encoded here) or 0/1 targets ``[B, C]``.

    Returns:
      ``mean_{b, c} BCE(logits[b, c], y[b, c])`` (a scalar).
    """
    if _labels_or_targets(logits, y, "sigmoid_ce"):
        y = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).mean()


def _same_shape(out: jax.Array, y: jax.Array, name: str) -> None:
    if jnp.shape(out) != jnp.shape(y):
        raise ValueError(
            f"{name}: outputs {tuple(jnp.shape(out))} and targets {tuple(jnp.shape(y))} must "
            "have the same shape (no broadcasting: [B] against [B, 1] would give [B, B])"
        )


def mse(out: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over batch and output columns.

    Args:
      out: outputs ``[B, d]``.
      y: targets of the same shape.

    Returns:
      ``mean((out - y) ** 2)`` (a scalar).
    """
    _same_shape(out, y, "mse")
    return jnp.mean((out - y) ** 2)


def huber(out: jax.Array, y: jax.Array, delta: float = 1.0) -> jax.Array:
    """Mean Huber loss (quadratic within ``delta``, linear outside).

    Args:
      out: outputs ``[B, d]``.
      y: targets of the same shape.
      delta: the threshold between the quadratic and the linear part.

    Returns:
      The mean over batch and output columns (a scalar).
    """
    _same_shape(out, y, "huber")
    return optax.huber_loss(out, y, delta=delta).mean()


LOSSES: dict[str, Loss] = {
    "softmax_ce": softmax_ce,
    "sigmoid_ce": sigmoid_ce,
    "mse": mse,
    "huber": huber,
}


def get_loss(name: str) -> Loss:
    """The loss called ``name``: ``"softmax_ce"``, ``"sigmoid_ce"``, ``"mse"`` or ``"huber"``.

    Raises:
      ValueError: for any other name (the message lists the known ones).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]
