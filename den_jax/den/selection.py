"""Breadth-first search for the subnetwork a task depends on (DEN Alg. 2) and its masks.

Starting from *all* output units of the task's head, a hidden unit of the top layer is
selected when any of its weights into the head is non-zero; going down, a unit of layer
``l - 1`` is selected when any of its weights into a selected unit of layer ``l`` is
non-zero. Only units the task may use (timestamp <= its index) are considered. All inputs
are kept. (The official code looks only at output column 0; we do not copy that.)

The element-wise masks mark the weights of the selected subnetwork (Eq. 4's ``W_S``):
the task's input head columns of selected layer-0 units, biases of selected units, the
block ``W_l[S_{l-1}, S_l]`` of each hidden matrix and the task's head rows of selected
top-layer units plus its bias. Everything else is 0 (frozen).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.network import ExpandableNet, resolve_task, task_widths

__all__ = [
    "Selection",
    "bfs_units",
    "select_subnetwork",
    "subnetwork_masks",
]


class Selection(NamedTuple):
    """Result of :func:`select_subnetwork`.

    Attributes:
      units: per hidden layer, a sorted ``int`` array of selected unit indices.
      masks: a pytree shaped like ``net.params`` with 1.0 on the subnetwork's weights.
    """

    units: list[np.ndarray]
    masks: Any


def bfs_units(head_w: np.ndarray, hidden_ws: list[np.ndarray]) -> list[np.ndarray]:
    """Breadth-first search from all outputs down through non-zero weights (Alg. 2).

    Args:
      head_w: ``[n_{L-1}, d_out]`` output head of the task.
      hidden_ws: ``[W_1, ..., W_{L-1}]`` with ``W_l`` of shape ``[n_{l-1}, n_l]`` (the
        task's slice of each hidden matrix); empty for a single hidden layer.

    Returns:
      Per hidden layer ``0..L-1``, the sorted indices of selected units.
    """
    selected = [None] * (len(hidden_ws) + 1)
    top = np.flatnonzero(np.any(np.asarray(head_w) != 0, axis=1))
    selected[-1] = top
    for layer in range(len(hidden_ws), 0, -1):
        w = np.asarray(hidden_ws[layer - 1])
        above = selected[layer]
        if above.size == 0:
            selected[layer - 1] = np.zeros((0,), np.int64)
            continue
        selected[layer - 1] = np.flatnonzero(np.any(w[:, above] != 0, axis=1))
    return [np.asarray(s, np.int64) for s in selected]


def _indicator(size: int, idx: np.ndarray) -> np.ndarray:
    v = np.zeros((size,), np.float32)
    v[idx] = 1.0
    return v


def subnetwork_masks(net: ExpandableNet, task: int | str, units: list[np.ndarray]) -> Any:
    """Element-wise 0/1 masks (like ``net.params``) of the subnetwork spanned by ``units``.

    A *selected subnetwork* (Eq. 4's ``W_S``): only the chosen units' weights. With every
    unit the task may use (``units = [arange(n) for n in task_widths(net, task)]``) it is
    :func:`den_jax.masks.task_mask`; use that for "everything the task uses".

    Args:
      net: the network.
      task: the task whose input and output heads are trainable.
      units: per hidden layer, indices of the selected units.

    Returns:
      A pytree of float32 arrays shaped like ``net.params``.
    """
    spec = resolve_task(net.meta, task)
    if len(units) != net.num_layers:
        raise ValueError(
            f"units must list one index array per hidden layer ({net.num_layers}), got {len(units)}"
        )
    ind = [_indicator(w, np.asarray(u, np.int64)) for w, u in zip(net.widths, units)]
    p = net.params
    masks: dict = {"input_heads": {}, "hidden": [], "output_heads": {}}
    for key, head in p["input_heads"].items():
        m = np.zeros(head["w"].shape, np.float32)
        if key == spec.input_key:
            m[:, :] = ind[0][None, :]
        masks["input_heads"][key] = {"w": jnp.asarray(m)}
    masks["hidden"].append({"b": jnp.asarray(ind[0])})
    for layer in range(1, net.num_layers):
        masks["hidden"].append(
            {
                "w": jnp.asarray(np.outer(ind[layer - 1], ind[layer])),
                "b": jnp.asarray(ind[layer]),
            }
        )
    for name, head in p["output_heads"].items():
        if name == spec.name:
            w = np.repeat(ind[-1][:, None], head["w"].shape[1], axis=1)
            b = np.ones(head["b"].shape, np.float32)
        else:
            w = np.zeros(head["w"].shape, np.float32)
            b = np.zeros(head["b"].shape, np.float32)
        masks["output_heads"][name] = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    return masks


def select_subnetwork(net: ExpandableNet, task: int | str) -> Selection:
    """Selects the units ``task`` depends on via non-zero weights and builds their masks.

    Args:
      net: the network (the task's head already trained with L1, so it has zeros).
      task: task index or name.

    Returns:
      A :class:`Selection` (unit indices per layer, element-wise masks).
    """
    spec = resolve_task(net.meta, task)
    n = task_widths(net, spec.name)
    host = jax.device_get(net.params)
    head_w = host["output_heads"][spec.name]["w"][: n[-1]]
    hidden_ws = [
        host["hidden"][layer]["w"][: n[layer - 1], : n[layer]] for layer in range(1, len(n))
    ]
    units = bfs_units(head_w, hidden_ws)
    return Selection(units=units, masks=subnetwork_masks(net, spec.name, units))
