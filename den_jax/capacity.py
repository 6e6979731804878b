"""Index maps and capacity counts of an :class:`~den_jax.network.ExpandableNet`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from den_jax.network import ExpandableNet, resolve_task, task_params, task_widths


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
    """Number of parameters: all of them (``task=None``) or those ``task``'s forward uses."""
    if task is None:
        return _size(net.params)
    return _size(task_params(net, task))


def count_active_units(net: ExpandableNet, task: int | str | None = None) -> list[int]:
    """Hidden units per layer: all of them (``task=None``) or those ``task`` may use."""
    if task is None:
        return list(net.widths)
    return list(task_widths(net, task))


def capacity_report(net: ExpandableNet) -> dict[str, Any]:
    """Parameters and units in total and per task (JSON-serialisable)."""
    return {
        "params": count_params(net),
        "units": count_active_units(net),
        "per_task": {
            name: {"params": count_params(net, name), "units": count_active_units(net, name)}
            for name in net.task_names
        },
    }
