"""Index maps and capacity counts of an :class:`~den_jax.network.ExpandableNet`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from den_jax.network import ExpandableNet, resolve_task, task_params, task_widths

__all__ = [
    "capacity_report",
    "count_active_units",
    "count_nonzero_params",
    "count_params",
    "count_stored_params",
    "index_map",
    "unit_table",
]


def index_map(net: ExpandableNet, task: int | str) -> dict[str, Any]:
    """The JSON-serialisable index map of one task: which units it may use, and its heads.

    Returns:
      ``{"task", "index", "input_dim", "output_dim", "input_head", "units": [[unit indices of
      layer l]], "unit_ids": [[ids]], "widths": [n_l], "metadata": {...}}``. ``units`` are
      positions in the current network; ``unit_ids`` survive later removals.
    """
    spec = resolve_task(net.meta, task)
    widths = task_widths(net, spec.name)
    return {
        "task": spec.name,
        "index": spec.index,
        "input_dim": spec.input_dim,
        "output_dim": spec.output_dim,
        "input_head": spec.input_key,
        "widths": list(widths),
        "units": [list(range(n)) for n in widths],
        "unit_ids": [list(layer.ids[:n]) for layer, n in zip(net.meta.layers, widths)],
        "metadata": dict(spec.metadata),
    }


def unit_table(net: ExpandableNet) -> list[dict[str, list[int]]]:
    """Per layer: the timestamp, id and parent id (-1: none) of every unit, as lists."""
    return [
        {"stamps": list(layer.stamps), "ids": list(layer.ids), "parents": list(layer.parents)}
        for layer in net.meta.layers
    ]


def _size(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def count_params(net: ExpandableNet, task: int | str | None = None) -> int:
    """Number of parameters that take part in some forward pass.

    Args:
      net: the network.
      task: ``None`` counts the parameters used by at least one task (the network's
        capacity); a task counts those its own forward pass uses.

    A task's own input head holds a column for every unit of layer 0, and every output
    head a row for every unit of the last layer, including units added after that task,
    which it never uses (timestamped inference); those entries are not counted. Use
    :func:`count_stored_params` for the number of stored entries.
    """
    if task is not None:
        return _size(task_params(net, task))
    if not net.meta.tasks:
        return count_stored_params(net)
    total = _size(net.params["hidden"])
    if "shared" in net.params["input_heads"]:
        total += _size(net.params["input_heads"]["shared"])
    for spec in net.meta.tasks:
        n = task_widths(net, spec.name)
        if spec.input_key != "shared":
            total += spec.input_dim * n[0]
        total += n[-1] * spec.output_dim + spec.output_dim
    return int(total)


def count_nonzero_params(net: ExpandableNet, task: int | str | None = None) -> int:
    """Number of non-zero entries among the parameters :func:`count_params` counts.

    Args:
      net: the network.
      task: ``None``: every stored entry (exact zeros are free capacity, as DEN counts a
        sparse network); a task: the entries of its own forward pass.
    """
    tree = net.params if task is None else task_params(net, task)
    return int(sum(np.count_nonzero(np.asarray(x)) for x in jax.tree.leaves(tree)))


def count_stored_params(net: ExpandableNet) -> int:
    """Number of stored parameter entries (every leaf of ``net.params``)."""
    return _size(net.params)


def count_active_units(net: ExpandableNet, task: int | str | None = None) -> list[int]:
    """Hidden units per layer: all of them (``task=None``) or those ``task`` may use."""
    if task is None:
        return list(net.widths)
    return list(task_widths(net, task))


def capacity_report(net: ExpandableNet) -> dict[str, Any]:
    """Parameters and units in total and per task (JSON-serialisable)."""
    return {
        "params": count_params(net),
        "stored_params": count_stored_params(net),
        "units": count_active_units(net),
        "per_task": {
            name: {"params": count_params(net, name), "units": count_active_units(net, name)}
            for name in net.task_names
        },
    }
