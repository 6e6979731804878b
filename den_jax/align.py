"""Carry parameter-shaped trees (optimizer moments, masks, old weights) across growth.

Every hidden unit has a network-wide id (:class:`~den_jax.network.LayerUnits`), so a
value attached to a unit before surgery can be found after it, whatever was added,
duplicated or removed around it. :func:`align_tree` moves a tree shaped like one
network's parameters onto another network's shapes; entries of units (or heads, or
layers) that did not exist before get ``fill``. :func:`grow_opt_state` applies it to
every parameter-shaped part of an optax state (Adam's ``mu``/``nu``, momentum traces),
keeping counters such as Adam's ``count``: the "grow" policy, as opposed to resetting
the optimizer with ``tx.init``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.network import ExpandableNet

__all__ = [
    "align_tree",
    "grow_opt_state",
]


def _layer_correspondence(old: ExpandableNet, new: ExpandableNet) -> list[int | None]:
    """For each new hidden layer, the old layer sharing its unit ids (None: a new layer)."""
    owner = {uid: i for i, layer in enumerate(old.meta.layers) for uid in layer.ids}
    result = []
    for layer in new.meta.layers:
        hits = {owner[uid] for uid in layer.ids if uid in owner}
        result.append(hits.pop() if len(hits) == 1 else None)
    return result


def _positions(old: ExpandableNet, new: ExpandableNet, new_layer: int, old_layer: int):
    where = {uid: i for i, uid in enumerate(old.meta.layers[old_layer].ids)}
    return np.asarray([where.get(uid, -1) for uid in new.meta.layers[new_layer].ids])


def _gather(value: np.ndarray, positions: np.ndarray, axis: int, fill: float) -> np.ndarray:
    """Host-side gather along ``axis``; entries at position -1 get ``fill``.

    NumPy rather than ``jnp``: surgery happens between compiled phases, and eager ``jnp``
    ops would compile once per new shape.
    """
    taken = np.take(value, np.maximum(positions, 0), axis=axis)
    shape = [1] * taken.ndim
    shape[axis] = -1
    return np.where((positions >= 0).reshape(shape), taken, np.asarray(fill, taken.dtype))


def _source(path, old: ExpandableNet, new: ExpandableNet, corr) -> tuple[tuple, list] | None:
    """Where a new parameter leaf comes from: (old path, [(axis, new layer, old layer)])."""
    keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
    last_new, last_old = new.num_layers - 1, old.num_layers - 1
    group = keys[0]
    if group == "input_heads":
        return (keys, [(1, 0, 0)]) if corr[0] == 0 else None
    if group == "output_heads":
        if keys[-1] == "b":
            return keys, []
        return (keys, [(0, last_new, last_old)]) if corr[last_new] == last_old else None
    layer, leaf = keys[1], keys[2]
    ol = corr[layer]
    if ol is None:
        return None
    if leaf == "b":
        return ("hidden", ol, "b"), [(0, layer, ol)]
    if ol == 0 or corr[layer - 1] != ol - 1:
        return None
    return ("hidden", ol, "w"), [(0, layer - 1, ol - 1), (1, layer, ol)]


def _lookup(tree, keys):
    for k in keys:
        if isinstance(tree, dict):
            if k not in tree:
                return None
        elif not (isinstance(tree, (list, tuple)) and isinstance(k, int) and k < len(tree)):
            return None
        tree = tree[k]
    return tree


def align_tree(tree: Any, old: ExpandableNet, new: ExpandableNet, fill: float = 0.0) -> Any:
    """Maps a tree shaped like ``old.params`` onto ``new.params``' shapes, unit by unit.

    Args:
      tree: a pytree with the structure and shapes of ``old.params``.
      old: the network ``tree`` belongs to.
      new: the network after surgery (units added, duplicated or removed; tasks or layers
        added).
      fill: value for entries with no counterpart in ``old``.

    Returns:
      A pytree with the structure and shapes of ``new.params``.
    """
    corr = _layer_correspondence(old, new)

    def leaf(path, like):
        src = _source(path, old, new, corr)
        value = None if src is None else _lookup(tree, src[0])
        if value is None:
            return jnp.asarray(np.full(like.shape, fill, like.dtype))
        value = np.asarray(value)
        for axis, new_layer, old_layer in src[1]:
            value = _gather(value, _positions(old, new, new_layer, old_layer), axis, fill)
        if value.shape != like.shape:
            raise ValueError(
                f"align_tree: leaf {jax.tree_util.keystr(path)} has shape {value.shape} after "
                f"alignment but the new network expects {like.shape}"
            )
        return jnp.asarray(value, like.dtype)

    return jax.tree_util.tree_map_with_path(leaf, new.params)


def grow_opt_state(opt_state: Any, old: ExpandableNet, new: ExpandableNet) -> Any:
    """Pads/prunes an optax state to a grown network (the ``grow`` policy).

    Every sub-tree of ``opt_state`` with the tree structure of ``old.params`` (Adam's
    moments, momentum, ...) is aligned with :func:`align_tree` (new entries 0); everything
    else (step counts, schedule state) is kept as is. Use ``tx.init(new.params)`` instead
    for the ``reset`` policy.
    """
    old_def = jax.tree.structure(old.params)

    def is_params_like(node) -> bool:
        return jax.tree.structure(node) == old_def

    return jax.tree.map(
        lambda n: align_tree(n, old, new) if is_params_like(n) else n,
        opt_state,
        is_leaf=is_params_like,
    )
