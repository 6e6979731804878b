"""The architecture-methods table: growth, forgetting, forward transfer, accuracy, size.

:func:`compare` reads the results of several methods (each a :func:`den_jax.stream.run_stream`
result: ``accuracy_matrix``, ``params_after_task``, ...) and, against STL's accuracy
matrix, computes per method:

* **growth**: parameters after each task, the least-squares slope of parameters against
  the task index (parameters added per task), that slope relative to STL's, the final
  size relative to STL's, and a label: ``fixed`` (less than 1% of the first task's size
  added per task, i.e. output heads only), ``linear`` (a straight line explains >= 99%
  of the variance) or ``dynamic``;
* **forgetting** and **BWT** (:mod:`den_jax.metrics`);
* **forward transfer vs STL**: ``mean_{j >= 1} R[j][j] - R_STL[j][j]``, the accuracy on a
  new task right after learning it minus STL's on that task (the first task, learned
  from scratch by every method, is left out), with the per-task values;
* average accuracy, stored and non-zero parameters.

:func:`markdown_table` writes it as a Markdown table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from den_jax import metrics

__all__ = ["compare", "growth_label", "growth_rate", "markdown_table"]

STL = "stl"


def growth_rate(params_after_task: Sequence[float]) -> float:
    """Least-squares slope of parameters against the task index (parameters per task).

    Args:
      params_after_task: parameters after tasks ``0..T-1``.

    Returns:
      The slope; 0.0 for a single task.
    """
    y = np.asarray(params_after_task, dtype=np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"params_after_task must be a non-empty list, got {params_after_task!r}")
    if y.size == 1:
        return 0.0
    x = np.arange(y.size, dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0])


def growth_label(params_after_task: Sequence[float]) -> str:
    """``fixed`` (under 1% of the first size per task: output heads only), ``linear`` (a
    line explains >= 99% of the variance) or ``dynamic``."""
    y = np.asarray(params_after_task, dtype=np.float64)
    if y.size < 2 or growth_rate(y) < 0.01 * y[0]:
        return "fixed"
    if y.size == 2:
        return "linear"
    x = np.arange(y.size, dtype=np.float64)
    fit = np.polyval(np.polyfit(x, y, 1), x)
    ss_res, ss_tot = float(np.sum((y - fit) ** 2)), float(np.sum((y - y.mean()) ** 2))
    return "linear" if ss_tot > 0 and 1.0 - ss_res / ss_tot >= 0.99 else "dynamic"


def _diag(matrix) -> np.ndarray:
    r = metrics.check_accuracy_matrix(matrix)
    return np.array([r[j, j] for j in range(r.shape[0])], dtype=np.float64)


def compare(
    results: Mapping[str, Mapping[str, Any]],
    *,
    stl: Mapping[str, Any] | Sequence[Sequence[float]] | None = None,
) -> dict:
    """The comparison table of ``results`` (method name -> run result).

    Args:
      results: per method a :func:`den_jax.stream.run_stream` result (needs
        ``accuracy_matrix``, ``params_after_task``; uses ``nonzero_params``,
        ``stl_params`` when present).
      stl: STL's result or accuracy matrix; default ``results["stl"]``. Without it the
        forward-transfer and STL-relative columns are ``None``.

    Returns:
      ``{"methods": {name: row}, "stl_reference": ...}`` where each row holds
      ``growth``, ``params_after_task``, ``growth_rate``, ``growth_vs_stl``, ``params``,
      ``nonzero_params``, ``params_vs_stl``, ``avg_accuracy``, ``forgetting``, ``bwt``,
      ``forward_transfer`` and ``forward_transfer_per_task``. JSON-friendly.
    """
    if stl is None:
        stl = results.get(STL)
    stl_res = stl if isinstance(stl, Mapping) else None
    stl_matrix = None if stl is None else (stl["accuracy_matrix"] if stl_res else stl)
    stl_diag = None if stl_matrix is None else _diag(stl_matrix)
    stl_curve = None if stl_res is None else stl_res.get("params_after_task")
    rows = {}
    for name, res in results.items():
        acc = res["accuracy_matrix"]
        T = metrics.check_accuracy_matrix(acc).shape[0]
        curve = [int(p) for p in res["params_after_task"]]
        rate = growth_rate(curve)
        ref_total = stl_curve[-1] if stl_curve else res.get("stl_params")
        ref_rate = growth_rate(stl_curve) if stl_curve else None
        if ref_rate is None and res.get("stl_params"):
            ref_rate = float(res["stl_params"]) / T  # STL adds one network per task
        fwt = per_task = None
        if stl_diag is not None:
            if stl_diag.size != T:
                raise ValueError(
                    f"method {name!r} has {T} tasks but STL's accuracy matrix {stl_diag.size}"
                )
            per_task = (_diag(acc) - stl_diag).tolist()
            fwt = float(np.mean(per_task[1:])) if T > 1 else 0.0
        rows[name] = {
            "growth": growth_label(curve),
            "params_after_task": curve,
            "growth_rate": rate,
            "growth_vs_stl": None if not ref_rate else rate / ref_rate,
            "params": curve[-1],
            "nonzero_params": int(res.get("nonzero_params", curve[-1])),
            "params_vs_stl": None if not ref_total else curve[-1] / float(ref_total),
            "avg_accuracy": metrics.average_accuracy(acc),
            "forgetting": metrics.forgetting(acc),
            "bwt": metrics.backward_transfer(acc),
            "forward_transfer": fwt,
            "forward_transfer_per_task": per_task,
        }
    return {
        "methods": rows,
        "stl_reference": "stl run" if stl_res is not None else (
            "accuracy matrix" if stl_matrix is not None else None
        ),
    }  # fmt: skip


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def markdown_table(comparison: Mapping[str, Any], *, title: str | None = None) -> str:
    """The rows of :func:`compare` as a Markdown table (one line per method).

    Args:
      comparison: :func:`compare`'s result.
      title: optional heading line above the table.

    Returns:
      Markdown text ending with a newline.
    """
    head = ("| method | growth | params/task (x STL) | params (x STL) | non-zero | avg acc "
            "| forgetting | BWT | fwd transfer vs STL |")  # fmt: skip
    lines = [] if title is None else [f"### {title}", ""]
    lines += [head, "|" + "---|" * 9]
    for name, r in comparison["methods"].items():
        lines.append(
            f"| {name} | {r['growth']} | {r['growth_rate']:,.0f} "
            f"({_fmt(r['growth_vs_stl'], '.2f')}) | {r['params']:,} "
            f"({_fmt(r['params_vs_stl'], '.2f')}) | {r['nonzero_params']:,} "
            f"| {r['avg_accuracy']:.4f} | {r['forgetting']:.4f} | {r['bwt']:+.4f} "
            f"| {_fmt(r['forward_transfer'], '+.4f')} |"
        )
    return "\n".join(lines) + "\n"
