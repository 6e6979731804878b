"""Parameter masks of an :class:`~den_jax.network.ExpandableNet` and masked optimizer updates.

A *mask* is a pytree shaped like ``net.params`` (or broadcastable to it leaf by leaf)
with 1 on the entries that may change and 0 on the frozen ones.

* :func:`task_mask`: 1 on every entry a task's forward pass uses (its input head columns
  of its units, its units' biases and weight blocks, its output head).
* :func:`trainable_mask`: 1 on a task's own heads and, with ``shared=True``, on every
  shared layer (what a fine-tuning baseline trains).
* :func:`mask_updates`: an optax transformation that zeroes the updates where the mask
  is 0. Chain it *after* the optimizer::

      tx = optax.chain(optax.adamw(1e-3), dj.mask_updates(mask))

  Placed before, the optimizer would still move frozen weights (``adamw``'s weight
  decay, momentum left from earlier steps).

:func:`den_jax.den.subnetwork_masks` is a related but different mask: the weights of a
*selected subnetwork* (DEN Alg. 2); for a task's full set of units it equals
:func:`task_mask`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from den_jax.network import SHARED_INPUT, ExpandableNet, resolve_task, task_widths

__all__ = ["MaskUpdatesState", "mask_updates", "task_mask", "trainable_mask"]


def task_mask(net: ExpandableNet, task: int | str) -> Any:
    """0/1 mask of every entry ``task`` uses (timestamped inference: a prefix of each layer).

    Args:
      net: the network.
      task: task index or name.

    Returns:
      A pytree of float32 arrays shaped like ``net.params``: 1 on the task's input-head
      columns of its units, its units' biases, the ``[n_{l-1}, n_l]`` block of every hidden
      matrix and its whole output head; 0 elsewhere (other tasks' heads, later units).
    """
    spec = resolve_task(net.meta, task)
    n = task_widths(net, spec.name)
    ind = [(np.arange(w) < k).astype(np.float32) for w, k in zip(net.widths, n)]
    p = net.params
    mask: dict = {"input_heads": {}, "hidden": [], "output_heads": {}}
    for key, head in p["input_heads"].items():
        m = np.zeros(head["w"].shape, np.float32)
        if key == spec.input_key:
            m[:, :] = ind[0][None, :]
        mask["input_heads"][key] = {"w": jnp.asarray(m)}
    mask["hidden"].append({"b": jnp.asarray(ind[0])})
    for layer in range(1, net.num_layers):
        mask["hidden"].append(
            {"w": jnp.asarray(np.outer(ind[layer - 1], ind[layer])), "b": jnp.asarray(ind[layer])}
        )
    for name, head in p["output_heads"].items():
        on = name == spec.name
        w = np.repeat(ind[-1][:, None], head["w"].shape[1], axis=1) if on else None
        mask["output_heads"][name] = {
            "w": jnp.asarray(w if on else np.zeros(head["w"].shape, np.float32)),
            "b": jnp.full(head["b"].shape, 1.0 if on else 0.0, jnp.float32),
        }
    return mask


def trainable_mask(net: ExpandableNet, task: int | str, *, shared: bool = True) -> dict:
    """0/1 tree like ``net.params``: 1 on ``task``'s own heads (and shared layers if asked).

    Args:
      net: the network.
      task: task index or name.
      shared: also train the shared parameters (every hidden layer and, if the task uses
        it, the shared input layer).

    Returns:
      A pytree with one float32 *scalar* per parameter leaf (it broadcasts to the leaf),
      1.0 for trainable leaves and 0.0 for frozen ones. Other tasks' heads are 0.
    """
    spec = resolve_task(net.meta, task)

    def fill(tree, value):
        return jax.tree.map(lambda x: jnp.full((), value, jnp.float32), tree)

    p = net.params
    return {
        "input_heads": {
            k: fill(v, 1.0 if (k == spec.input_key and (shared or k != SHARED_INPUT)) else 0.0)
            for k, v in p["input_heads"].items()
        },
        "hidden": fill(p["hidden"], 1.0 if shared else 0.0),
        "output_heads": {
            k: fill(v, 1.0 if k == spec.name else 0.0) for k, v in p["output_heads"].items()
        },
    }


class MaskUpdatesState(NamedTuple):
    """:func:`mask_updates` keeps no state."""


def mask_updates(mask: Any) -> optax.GradientTransformation:
    """An optax transformation that zeroes every update where ``mask`` is 0.

    It must come *after* the optimizer in an ``optax.chain``
    (``optax.chain(optax.adamw(1e-3), mask_updates(mask))``): earlier, ``adamw``'s weight
    decay and the moments would still move the frozen entries. With it last, an entry
    whose mask is 0 gets an update of exactly 0, so it keeps its bits.

    Args:
      mask: a pytree like the parameters of 0/1 (or bool) arrays, each broadcastable to
        its parameter leaf (a scalar per leaf is fine).

    Returns:
      An ``optax.GradientTransformation`` with an empty state (:class:`MaskUpdatesState`).
    """

    def init_fn(params):
        try:
            jax.tree.map(
                lambda m, p: jnp.broadcast_shapes(jnp.shape(m), jnp.shape(p)), mask, params
            )
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"mask_updates: the mask must be a pytree shaped like the parameters: {err}"
            ) from err
        return MaskUpdatesState()

    def update_fn(updates, state, params=None):
        del params
        masked = jax.tree.map(
            lambda m, u: jnp.where(jnp.asarray(m) != 0, u, jnp.zeros_like(u)), mask, updates
        )
        return masked, state

    return optax.GradientTransformation(init_fn, update_fn)
