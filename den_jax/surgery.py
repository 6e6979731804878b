"""Pure surgery on an :class:`~den_jax.network.ExpandableNet`: add, duplicate, remove units.

Each function returns a new network (``equinox.tree_at`` style) and leaves its input
untouched. New and duplicated units are appended at the end of their layer and stamped
with the newest task, so every earlier task keeps its outputs bit for bit.

Weight layout reminder (see :mod:`den_jax.network`): the incoming weights of layer 0 are
the columns of every input head; those of layer ``l >= 1`` are ``hidden[l]["w"]``'s
columns; the outgoing weights of layer ``l`` are the rows of ``hidden[l + 1]["w"]`` or,
for the last layer, the rows of every output head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.network import (
    ExpandableNet,
    Initializer,
    LayerUnits,
    check_layer,
    check_positive,
    default_kernel_init,
    shallow_copy,
)

__all__ = [
    "DUPLICATE_OUTGOING_MODES",
    "OUTGOING_MODES",
    "add_units",
    "add_units_all",
    "duplicate_units",
    "remove_units",
    "units_per_layer",
]

OUTGOING_MODES = ("zero", "init")
DUPLICATE_OUTGOING_MODES = ("copy", "split", "zero")


def _map_incoming(net: ExpandableNet, params: dict, layer: int, fn: Callable) -> None:
    """Applies ``fn(w) -> w'`` to every matrix whose columns are ``layer``'s incoming weights."""
    if layer == 0:
        for key, head in params["input_heads"].items():
            params["input_heads"][key] = {**head, "w": fn(head["w"])}
    else:
        hp = params["hidden"][layer]
        params["hidden"][layer] = {**hp, "w": fn(hp["w"])}


def _map_outgoing(net: ExpandableNet, params: dict, layer: int, fn: Callable) -> None:
    """Applies ``fn(name, w) -> w'`` to every matrix whose rows are ``layer``'s outgoing weights.

    ``name`` is the output head's task name, or ``None`` for a hidden matrix.
    """
    if layer + 1 < net.num_layers:
        hp = params["hidden"][layer + 1]
        params["hidden"][layer + 1] = {**hp, "w": fn(None, hp["w"])}
    else:
        for name, head in params["output_heads"].items():
            params["output_heads"][name] = {**head, "w": fn(name, head["w"])}


def _check_units(net: ExpandableNet, layer: int, units: Sequence[int], what: str) -> np.ndarray:
    width = net.widths[layer]
    idx = np.asarray(list(units), dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{what}: no unit index given for layer {layer}")
    for u in idx:
        if not 0 <= u < width:
            raise ValueError(
                f"{what}: unit {int(u)} does not exist in layer {layer}, which has {width} units "
                f"(valid indices 0..{width - 1})"
            )
    if len(set(idx.tolist())) != idx.size:
        raise ValueError(f"{what}: unit indices for layer {layer} repeat: {idx.tolist()}")
    return idx


def _append_units(meta_layer: LayerUnits, stamp: int, first_id: int, parents) -> LayerUnits:
    k = len(parents)
    return LayerUnits(
        stamps=meta_layer.stamps + (stamp,) * k,
        ids=meta_layer.ids + tuple(range(first_id, first_id + k)),
        parents=meta_layer.parents + tuple(int(p) for p in parents),
    )


def _with_layer_meta(net: ExpandableNet, layer: int, units: LayerUnits, used_ids: int):
    layers = list(net.meta.layers)
    layers[layer] = units
    return dataclasses.replace(
        net.meta, layers=tuple(layers), next_unit_id=net.meta.next_unit_id + used_ids
    )


def add_units(
    net: ExpandableNet,
    key: jax.Array,
    layer: int,
    k: int,
    *,
    outgoing: str = "zero",
    kernel_init: Initializer = default_kernel_init,
) -> ExpandableNet:
    """Appends ``k`` units to hidden layer ``layer`` (DEN Alg. 3, one layer).

    Args:
      net: the network.
      key: PRNG key for the new weights.
      layer: hidden-layer index.
      k: number of units, > 0.
      outgoing: ``"zero"`` (new units' outgoing weights are 0, so the newest task's function
        is unchanged too) or ``"init"`` (drawn from ``kernel_init``; for output heads only
        the newest task's head is initialised, older heads get zero rows they never use).
      kernel_init: initializer of the new incoming (and, with ``"init"``, outgoing) weights.

    Returns:
      A network whose layer ``layer`` is ``k`` units wider; the new units' biases are 0 and
      they are stamped with the newest task.
    """
    layer = check_layer(net.meta, layer)
    k = check_positive("k (number of units to add)", k)
    if outgoing not in OUTGOING_MODES:
        raise ValueError(f"outgoing must be one of {OUTGOING_MODES}, got {outgoing!r}")
    k_in, k_out = jax.random.split(key)
    params = shallow_copy(net.params)
    in_keys = iter(jax.random.split(k_in, max(len(params["input_heads"]), 1)))

    def grow_in(w):
        return jnp.concatenate([w, kernel_init(next(in_keys), (w.shape[0], k), w.dtype)], axis=1)

    newest = net.meta.tasks[-1].name if net.meta.tasks else None

    def grow_out(name, w):
        init_here = outgoing == "init" and (name is None or name == newest)
        rows = kernel_init(k_out, (k, w.shape[1]), w.dtype) if init_here else None
        rows = jnp.zeros((k, w.shape[1]), w.dtype) if rows is None else rows
        return jnp.concatenate([w, rows], axis=0)

    _map_incoming(net, params, layer, grow_in)
    hp = params["hidden"][layer]
    params["hidden"][layer] = {
        **hp,
        "b": jnp.concatenate([hp["b"], jnp.zeros((k,), hp["b"].dtype)]),
    }
    _map_outgoing(net, params, layer, grow_out)
    units = _append_units(
        net.meta.layers[layer], net.meta.newest_task, net.meta.next_unit_id, [-1] * k
    )
    return ExpandableNet(params=params, meta=_with_layer_meta(net, layer, units, k))


def add_units_all(
    net: ExpandableNet,
    key: jax.Array,
    k: int | Sequence[int],
    *,
    outgoing: str = "zero",
    kernel_init: Initializer = default_kernel_init,
) -> ExpandableNet:
    """Appends units to every hidden layer (DEN Alg. 3); see :func:`add_units`.

    Args:
      net: the network.
      key: PRNG key; layer ``l`` draws from the ``l``-th split of it.
      k: units per layer: one integer > 0 for every layer (the paper's k), or one integer
        >= 0 per hidden layer, at least one of them > 0 (a layer given 0 is left as it is).
      outgoing: see :func:`add_units`.
      kernel_init: see :func:`add_units`.

    The new units of consecutive layers are connected to each other: the rows of layer
    ``l + 1``'s matrix that leave layer ``l``'s new units follow ``outgoing``.
    """
    per_layer = units_per_layer(k, net.num_layers)
    for layer, layer_key in enumerate(jax.random.split(key, net.num_layers)):
        if per_layer[layer]:
            net = add_units(
                net, layer_key, layer, per_layer[layer], outgoing=outgoing, kernel_init=kernel_init
            )
    return net


def units_per_layer(k: int | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """``k`` as one count per hidden layer; raises ``ValueError`` naming a bad value.

    Args:
      k: one integer > 0 (the same for every layer) or a sequence of ``num_layers``
        integers >= 0, at least one of them > 0.
      num_layers: number of hidden layers.

    Returns:
      A tuple of ``num_layers`` non-negative integers.
    """
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        return (check_positive("k (number of units to add)", k),) * num_layers
    if not isinstance(k, Sequence) or isinstance(k, str):
        raise ValueError(f"k (units to add) must be an integer or one per layer, got {k!r}")
    counts = tuple(k)
    if len(counts) != num_layers:
        raise ValueError(
            f"k (units to add) has {len(counts)} entries {list(counts)}; expected one per "
            f"hidden layer ({num_layers})"
        )
    bad = [c for c in counts if not isinstance(c, (int, np.integer)) or isinstance(c, bool)]
    if bad or any(c < 0 for c in counts) or not any(counts):
        raise ValueError(
            f"k (units to add) per layer must be integers >= 0, at least one > 0; got "
            f"{list(counts)}"
        )
    return tuple(int(c) for c in counts)


def duplicate_units(
    net: ExpandableNet,
    layer: int,
    units: Sequence[int],
    *,
    outgoing: str = "copy",
) -> ExpandableNet:
    """Duplicates units of one layer (DEN Alg. 4, the split step).

    Each copy is appended with the same incoming weights and bias as its original, stamped
    with the newest task, and records its original's id as parent.

    Args:
      net: the network.
      layer: hidden-layer index.
      units: indices of the units to copy (distinct, existing).
      outgoing: ``"copy"`` (the copy gets the original's outgoing weights; DEN),
        ``"split"`` (original and copy each carry half of the original's outgoing weights,
        Net2Net-style, so the newest task's function is unchanged) or ``"zero"`` (the copy's
        outgoing weights are 0, so the newest task's function is unchanged too).

    Note:
      ``"split"`` halves the *original's* outgoing weights, which older tasks also use: it
      preserves every task's function only while there is a single task. ``"copy"`` and
      ``"zero"`` never change older tasks' outputs.

    Returns:
      A network whose layer ``layer`` is ``len(units)`` units wider.
    """
    layer = check_layer(net.meta, layer)
    idx = _check_units(net, layer, units, "duplicate_units")
    if outgoing not in DUPLICATE_OUTGOING_MODES:
        raise ValueError(f"outgoing must be one of {DUPLICATE_OUTGOING_MODES}, got {outgoing!r}")
    params = shallow_copy(net.params)
    _map_incoming(net, params, layer, lambda w: jnp.concatenate([w, w[:, idx]], axis=1))
    hp = params["hidden"][layer]
    params["hidden"][layer] = {**hp, "b": jnp.concatenate([hp["b"], hp["b"][idx]])}

    def dup_out(name, w):
        rows = w[idx]
        if outgoing == "zero":
            return jnp.concatenate([w, jnp.zeros_like(rows)], axis=0)
        if outgoing == "split":
            w = w.at[idx].multiply(0.5)
            rows = w[idx]
        return jnp.concatenate([w, rows], axis=0)

    _map_outgoing(net, params, layer, dup_out)
    old = net.meta.layers[layer]
    parents = [old.ids[int(i)] for i in idx]
    new_units = _append_units(old, net.meta.newest_task, net.meta.next_unit_id, parents)
    return ExpandableNet(params=params, meta=_with_layer_meta(net, layer, new_units, len(idx)))


def remove_units(net: ExpandableNet, layer: int, units: Sequence[int]) -> ExpandableNet:
    """Removes units from one layer (pruning, DEN Alg. 3 last step).

    The units' incoming columns, biases and outgoing rows are deleted. Removing a unit
    that an earlier task uses changes that task's outputs; DEN only removes units added
    for the newest task.

    Args:
      net: the network.
      layer: hidden-layer index.
      units: indices of the units to remove (distinct, existing; at least one unit must stay).

    Returns:
      A network whose layer ``layer`` is narrower; the other units keep their order.
    """
    layer = check_layer(net.meta, layer)
    idx = _check_units(net, layer, units, "remove_units")
    width = net.widths[layer]
    if idx.size >= width:
        raise ValueError(
            f"remove_units: removing {idx.size} of the {width} units of layer {layer} would "
            "leave it empty; at least one unit must stay"
        )
    keep = np.setdiff1d(np.arange(width), idx)
    params = shallow_copy(net.params)
    _map_incoming(net, params, layer, lambda w: w[:, keep])
    hp = params["hidden"][layer]
    params["hidden"][layer] = {**hp, "b": hp["b"][keep]}
    _map_outgoing(net, params, layer, lambda name, w: w[keep])
    old = net.meta.layers[layer]
    units_meta = LayerUnits(
        stamps=tuple(old.stamps[i] for i in keep),
        ids=tuple(old.ids[i] for i in keep),
        parents=tuple(old.parents[i] for i in keep),
    )
    return ExpandableNet(params=params, meta=_with_layer_meta(net, layer, units_meta, 0))
