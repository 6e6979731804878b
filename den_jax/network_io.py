"""Save and load an :class:`~den_jax.network.ExpandableNet` with its index maps.

The static part (:class:`~den_jax.network.NetMeta`) becomes JSON; the parameter shapes
are derived from it, so a restore is always typed: JSON first, then the arrays into
``jax.ShapeDtypeStruct`` targets built from the JSON (see :mod:`den_jax.checkpoint`).

Both directions are checked: :func:`save_network` refuses parameters that hold NaN or
Inf (nothing non-finite is checkpointed), and :func:`load_network` verifies the step's
digests (:class:`den_jax.checkpoint.CorruptCheckpointError` names the step and file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from den_jax import checkpoint
from den_jax.capacity import index_map
from den_jax.data.checks import check_finite
from den_jax.network import SHARED_INPUT, ExpandableNet, LayerUnits, NetMeta, TaskSpec

__all__ = [
    "abstract_params",
    "load_network",
    "meta_from_json",
    "meta_to_json",
    "save_network",
]


def meta_to_json(meta: NetMeta) -> dict[str, Any]:
    """A JSON-serialisable description of the network's static part."""
    return {
        "activation": meta.activation,
        "shared_input_dim": meta.shared_input_dim,
        "next_unit_id": meta.next_unit_id,
        "layers": [
            {"stamps": list(u.stamps), "ids": list(u.ids), "parents": list(u.parents)}
            for u in meta.layers
        ],
        "tasks": [
            {
                "name": t.name,
                "index": t.index,
                "input_dim": t.input_dim,
                "output_dim": t.output_dim,
                "input_key": t.input_key,
                "metadata": dict(t.metadata),
            }
            for t in meta.tasks
        ],
    }


def meta_from_json(data: Mapping[str, Any]) -> NetMeta:
    """Inverse of :func:`meta_to_json`."""
    try:
        return NetMeta(
            activation=data["activation"],
            shared_input_dim=data["shared_input_dim"],
            next_unit_id=int(data["next_unit_id"]),
            layers=tuple(
                LayerUnits(tuple(u["stamps"]), tuple(u["ids"]), tuple(u["parents"]))
                for u in data["layers"]
            ),
            tasks=tuple(TaskSpec(**t) for t in data["tasks"]),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a den_jax network description: {err!r}") from err


def abstract_params(meta: NetMeta, dtype=jnp.float32) -> dict:
    """``jax.ShapeDtypeStruct`` tree with the shapes of a network described by ``meta``."""
    widths = meta.widths

    def sds(*shape):
        return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), dtype)

    input_heads = {}
    if meta.shared_input_dim is not None:
        input_heads[SHARED_INPUT] = {"w": sds(meta.shared_input_dim, widths[0])}
    for t in meta.tasks:
        if t.input_key != SHARED_INPUT:
            input_heads[t.input_key] = {"w": sds(t.input_dim, widths[0])}
    hidden = [{"b": sds(widths[0])}]
    hidden += [
        {"w": sds(widths[i - 1], widths[i]), "b": sds(widths[i])} for i in range(1, len(widths))
    ]
    heads = {
        t.name: {"w": sds(widths[-1], t.output_dim), "b": sds(t.output_dim)} for t in meta.tasks
    }
    return {"input_heads": input_heads, "hidden": hidden, "output_heads": heads}


def save_network(
    directory: str,
    step: int,
    net: ExpandableNet,
    *,
    extra_arrays: Any = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> None:
    """Saves ``net`` (parameters, units, tasks, every task's index map) as one step.

    Args:
      directory: checkpoint root chosen by the user.
      step: step id, e.g. the index of the task just completed.
      net: the network.
      extra_arrays: optional pytree of arrays saved beside the parameters (an optimizer
        state, a memory, ...); restore it with a matching ``extra_abstract``.
      extra_meta: optional JSON-serialisable dict (config, metrics, ...).

    Raises:
      ValueError: if a parameter holds NaN or Inf (naming the step and the parameter), or
        as :func:`den_jax.checkpoint.save_step`.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(net.params)[0]:
        check_finite(
            leaf,
            what=f"refusing to checkpoint step {step} in {directory!r}: parameter "
            f"{jax.tree_util.keystr(path)}",
        )
    meta = {
        "network": meta_to_json(net.meta),
        "index_maps": {name: index_map(net, name) for name in net.task_names},
        "extra": dict(extra_meta or {}),
    }
    arrays = {"params": net.params, "extra": extra_arrays if extra_arrays is not None else {}}
    checkpoint.save_step(directory, step, arrays, meta)


def load_network(
    directory: str, step: int, *, extra_abstract: Any = None
) -> tuple[ExpandableNet, Any, dict[str, Any]]:
    """Loads a network saved by :func:`save_network`.

    Args:
      directory: checkpoint root.
      step: step id to load.
      extra_abstract: abstract target of the ``extra_arrays`` that were saved (or ``None``
        if none were), e.g. ``jax.eval_shape(tx.init, abstract_params(meta))``; it may be a
        callable taking the restored :class:`NetMeta` and returning that target.

    Returns:
      ``(net, extra_arrays, meta)`` where ``meta`` holds ``network``, ``index_maps`` and
      ``extra`` (the JSON saved).

    Raises:
      CorruptCheckpointError: (a ValueError) if the step's files or values differ from
        the digests recorded when it was saved.
      ValueError: if the step is missing or is not a saved network.
    """
    saved = checkpoint.restore_meta(directory, step)
    if "network" not in saved:
        raise ValueError(f"checkpoint step {step} in {directory!r} does not hold a network")
    meta = meta_from_json(saved["network"])
    if callable(extra_abstract):
        extra_abstract = extra_abstract(meta)
    target = {
        "params": abstract_params(meta),
        "extra": extra_abstract if extra_abstract is not None else {},
    }
    arrays, saved = checkpoint.restore_step(directory, step, target)
    params = jax.tree.map(jnp.asarray, arrays["params"])
    return ExpandableNet(params=params, meta=meta), arrays["extra"], saved
