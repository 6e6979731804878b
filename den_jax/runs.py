"""Run folders and JSON-friendly results of task-stream runs.

* :func:`open_run_folder`: one run per output folder (``run.json`` records what defines
  the run; another run into the folder is refused, naming the fields that differ).
* :func:`jsonable`, :func:`report_summary`: learner reports as JSON.
* :func:`describe_tree` / :func:`abstract_tree`: a method's state (a dict/list pytree of
  arrays) described in JSON, so that a checkpoint of it restores typed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from den_jax import checkpoint

__all__ = [
    "abstract_tree",
    "describe_tree",
    "jsonable",
    "open_run_folder",
    "report_summary",
]

_log = logging.getLogger(__name__)


def report_summary(report: Mapping[str, Any]) -> dict:
    """The per-task summary of a learner's report: phase, loss, units added/split/pruned.

    Baselines report ``units_added``/``split``/``pruned`` at the top level; DEN reports
    them per phase (``phases.expansion.added``/``pruned``, ``phases.split.split``, lists
    per layer), which are summed.
    """

    def count(v) -> int:
        if isinstance(v, bool):
            return 0
        if isinstance(v, (int, float, np.integer)):
            return int(v)
        if isinstance(v, (list, tuple)):
            return sum(count(x) for x in v)
        return 0

    phases = report.get("phases") if isinstance(report.get("phases"), dict) else {}
    fields = {"units_added": ("units_added", "added"), "split": ("split",), "pruned": ("pruned",)}
    out = {}
    for field, keys in fields.items():
        n = sum(count(report.get(k)) for k in keys if k in report)
        for ph in phases.values():
            if isinstance(ph, dict):
                n += sum(count(ph.get(k)) for k in keys if k in ph)
        out[field] = n
    loss = report.get("loss", report.get("final_task_loss"))
    phase = report.get("phase") or "+".join(k for k, v in phases.items() if v)
    return {"phase": phase, "loss": None if loss is None else float(loss), **out}


def jsonable(x: Any) -> Any:
    """``x`` with arrays, NumPy scalars and tuples turned into JSON types."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (jax.Array, np.ndarray)):
        return np.asarray(x).tolist()
    return x


def describe_tree(tree: Any) -> Any:
    """JSON description of a dict/list pytree of arrays (structure, shapes, dtypes)."""
    if isinstance(tree, Mapping):
        return {"dict": {str(k): describe_tree(v) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)):
        return {"list": [describe_tree(v) for v in tree]}
    a = np.asarray(tree)
    return {"shape": list(a.shape), "dtype": str(a.dtype)}


def abstract_tree(desc: Any) -> Any:
    """Inverse of :func:`describe_tree`: a ``jax.ShapeDtypeStruct`` tree for a typed restore."""
    if "dict" in desc:
        return {k: abstract_tree(v) for k, v in desc["dict"].items()}
    if "list" in desc:
        return [abstract_tree(v) for v in desc["list"]]
    return jax.ShapeDtypeStruct(tuple(desc["shape"]), np.dtype(desc["dtype"]))


def open_run_folder(out: str, run_info: Mapping[str, Any], *, resume: bool) -> dict:
    """Claims ``out`` for one run and returns the results it already holds.

    ``out/run.json`` records ``run_info`` (dataset, a content hash of the data, task spec,
    configs, seed: whatever defines the run). A folder that holds another run is refused,
    naming the fields that differ, with or without ``resume``; methods may be run into the
    same folder by separate invocations of the same run.

    Args:
      out: the run folder (created if missing).
      run_info: JSON-serialisable description of the run.
      resume: the caller continues an earlier invocation (a note is logged when ``out``
        holds nothing to continue).

    Returns:
      The results dict in ``out/results.json`` (``{}`` when there is none; when it cannot
      be read, a warning names it and the caller rebuilds it from the checkpoints).
    """
    os.makedirs(out, exist_ok=True)
    run_path, results_path = os.path.join(out, "run.json"), os.path.join(out, "results.json")
    info = jsonable(run_info)
    if os.path.exists(run_path):
        saved = checkpoint.read_json(run_path)
        diff = sorted(k for k in set(saved) | set(info) if saved.get(k) != info.get(k))
        if diff:
            raise ValueError(
                f"{out!r} holds another run ({run_path}): differing fields "
                + "; ".join(f"{k}: saved {saved.get(k)!r}, now {info.get(k)!r}" for k in diff)
                + ". Choose a new output folder."
            )
    else:
        if os.path.isdir(os.path.join(out, "checkpoints")) or os.path.exists(results_path):
            raise ValueError(
                f"{out!r} holds results or checkpoints but no run.json; choose a new folder"
            )
        if resume:
            _log.warning("resume: %r holds no earlier run; starting from the first task", out)
        checkpoint.write_json_atomic(run_path, info)
    if not os.path.exists(results_path):
        return {}
    try:
        return checkpoint.read_json(results_path)
    except ValueError as err:
        _log.warning("%s; it is rebuilt from the checkpoints of the methods run now", err)
        return {}
