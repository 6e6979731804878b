"""The architecture-methods table: growth, forgetting, forward transfer, accuracy, size.

:func:`compare` reads the results of several methods (each a :func:`den_jax.stream.run_stream`
result: ``accuracy_matrix``, ``params_after_task``, ...) and, against STL's accuracy
matrix, computes per method:

* **growth**: parameters after each task, the least-squares slope of parameters against
  the task index (parameters added per task), that slope relative to STL's, the final
  size relative to STL's, and a label: ``fixed`` (less than 1% of the first task's size
  added per task, i.e. output heads only), ``linear`` (a straight line explains >= 99%
  of the variance), ``quadratic`` (growing increments, a parabola explains >= 99.9%) or
  ``dynamic``;
* **forgetting** and **BWT** (:mod:`den_jax.metrics`);
* **forward transfer vs STL**: ``mean_{j >= 1} R[j][j] - R_STL[j][j]``, the accuracy on a
  new task right after learning it minus STL's on that task (the first task, learned
  from scratch by every method, is left out), with the per-task values;
* average accuracy, stored and non-zero parameters.

:func:`markdown_table` writes it as a Markdown table. :func:`aggregate_seeds` gives
mean and standard deviation per method over runs with different seeds, and
:func:`markdown_seed_table` writes those as ``mean ± std``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from den_jax import metrics

__all__ = [
    "SEED_METRICS",
    "aggregate_seeds",
    "compare",
    "growth_label",
    "growth_rate",
    "markdown_seed_table",
    "markdown_table",
]

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


def _r2(x: np.ndarray, y: np.ndarray, degree: int) -> float:
    fit = np.polyval(np.polyfit(x, y, degree), x)
    ss_res, ss_tot = float(np.sum((y - fit) ** 2)), float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def growth_label(params_after_task: Sequence[float]) -> str:
    """``fixed`` (under 1% of the first size per task: output heads only), ``linear`` (a
    line explains >= 99% of the variance), ``quadratic`` (a parabola with growing
    increments explains >= 99.9%, a line less than 99%: e.g. Progressive Networks, whose
    lateral adapters grow with the number of earlier columns) or ``dynamic``."""
    y = np.asarray(params_after_task, dtype=np.float64)
    if y.size < 2 or growth_rate(y) < 0.01 * y[0]:
        return "fixed"
    if y.size == 2:
        return "linear"
    x = np.arange(y.size, dtype=np.float64)
    if _r2(x, y, 1) >= 0.99:
        return "linear"
    if y.size >= 4 and np.polyfit(x, y, 2)[0] > 0 and _r2(x, y, 2) >= 0.999:
        return "quadratic"
    return "dynamic"


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
      ``forward_transfer``, ``forward_transfer_per_task`` and ``steps_per_task``
      (optimizer steps per task, ``None`` when the result has none). JSON-friendly.
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
            "steps_per_task": res.get("steps_per_task"),
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
            "| forgetting | BWT | fwd transfer vs STL | optimizer steps |")  # fmt: skip
    lines = [] if title is None else [f"### {title}", ""]
    lines += [head, "|" + "---|" * 10]
    for name, r in comparison["methods"].items():
        steps = r.get("steps_per_task")
        total = None if not steps or None in steps else sum(steps)
        lines.append(
            f"| {name} | {r['growth']} | {r['growth_rate']:,.0f} "
            f"({_fmt(r['growth_vs_stl'], '.2f')}) | {r['params']:,} "
            f"({_fmt(r['params_vs_stl'], '.2f')}) | {r['nonzero_params']:,} "
            f"| {r['avg_accuracy']:.4f} | {r['forgetting']:.4f} | {r['bwt']:+.4f} "
            f"| {_fmt(r['forward_transfer'], '+.4f')} | {_fmt(total, ',')} |"
        )
    return "\n".join(lines) + "\n"


#: Metrics :func:`aggregate_seeds` summarises (those a result lacks are left out).
SEED_METRICS = (
    "avg_accuracy",
    "forgetting",
    "bwt",
    "auroc",
    "params",
    "nonzero_params",
    "capacity_vs_stl",
    "seconds",
)


def aggregate_seeds(
    results_by_seed: Mapping[Any, Mapping[str, Mapping[str, Any]]],
    *,
    keys: Sequence[str] = SEED_METRICS,
) -> dict:
    """Mean and standard deviation of each method's metrics over seeds.

    Args:
      results_by_seed: ``{seed: {method: run result}}`` (each result as from
        :func:`den_jax.stream.run_stream`, or a :func:`compare` row).
      keys: the metric keys summarised.

    Returns:
      ``{method: {metric: {"mean", "std", "values", "seeds"}, "seeds": [...]}}`` for every
      method run with at least one seed; ``std`` is the sample standard deviation
      (``ddof=1``; 0.0 for one seed). Methods and metrics missing from some seeds are
      summarised over the seeds that have them (``seeds`` says which).

    Raises:
      ValueError: no seeds, or a metric value that is not a number.
    """
    if not results_by_seed:
        raise ValueError("aggregate_seeds needs results of at least one seed")
    methods: list[str] = []
    for per_method in results_by_seed.values():
        methods += [m for m in per_method if m not in methods]
    out: dict[str, dict] = {}
    for m in methods:
        seeds = [s for s, per in results_by_seed.items() if m in per]
        row: dict[str, Any] = {"seeds": [_seed_key(s) for s in seeds]}
        for key in keys:
            have = [s for s in seeds if results_by_seed[s][m].get(key) is not None]
            if not have:
                continue
            vals = []
            for s in have:
                v = results_by_seed[s][m][key]
                if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                    raise ValueError(f"seed {s} method {m!r}: {key} must be a number, got {v!r}")
                vals.append(float(v))
            arr = np.asarray(vals, dtype=np.float64)
            row[key] = {
                "mean": float(arr.mean()),
                "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
                "values": vals,
                "seeds": [_seed_key(s) for s in have],
            }
        out[m] = row
    return out


def _seed_key(s: Any) -> Any:
    return int(s) if isinstance(s, (int, np.integer)) or str(s).isdigit() else s


def markdown_seed_table(aggregate: Mapping[str, Any], *, title: str | None = None) -> str:
    """:func:`aggregate_seeds`'s result as a Markdown table of ``mean ± std``.

    Args:
      aggregate: :func:`aggregate_seeds`'s result.
      title: optional heading line above the table.

    Returns:
      Markdown text ending with a newline.
    """

    def cell(row, key, spec):
        v = row.get(key)
        if v is None:
            return "n/a"
        return f"{format(v['mean'], spec)} ± {format(v['std'], spec)}"

    lines = [] if title is None else [f"### {title}", ""]
    lines += ["| method | seeds | avg acc | forgetting | params | non-zero | params (x STL) |",
              "|" + "---|" * 7]  # fmt: skip
    for name, r in aggregate.items():
        lines.append(
            f"| {name} | {len(r['seeds'])} | {cell(r, 'avg_accuracy', '.4f')} "
            f"| {cell(r, 'forgetting', '.4f')} | {cell(r, 'params', ',.0f')} "
            f"| {cell(r, 'nonzero_params', ',.0f')} | {cell(r, 'capacity_vs_stl', '.3f')} |"
        )
    return "\n".join(lines) + "\n"
