"""Optimizer-step budgets per task: what a method spent, and giving a method a budget.

DEN spends a different number of optimizer steps on each task (task 1: ``steps_task1``;
later tasks: the sparse head, selective retraining and, when they run, expansion and the
split passes). For baselines "at equal budget", :func:`den_jax.stream.run_stream` takes
``steps_per_task`` and trains task ``i`` of a single-phase method for ``steps_per_task[i]``
steps (:func:`with_budget`); :func:`steps_spent` reads the steps a run actually spent per
task from its task reports, so ``results.json`` holds both.

Methods that take a budget: every :class:`~den_jax.baselines.BaselineConfig` method
(``stl``, ``finetune``, ``l2``, ``ewc``, ``pnn``; PackNet's retraining,
``packnet_retrain_steps``, default ``steps // 4``, comes on top) and the single-phase DEN
ablations ``dnn_l1`` and ``mtl`` (``steps_task1`` per task). DEN and its multi-phase
ablations decide their own steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from den_jax.baselines.common import BaselineConfig

__all__ = [
    "BUDGET_FIELDS",
    "check_budget",
    "report_steps",
    "steps_spent",
    "takes_budget",
    "with_budget",
]

#: Methods with a :class:`~den_jax.den.DENConfig` that take a per-task budget, and the
#: config field that holds it.
BUDGET_FIELDS: Mapping[str, str] = {"dnn_l1": "steps_task1", "mtl": "steps_task1"}


def check_budget(steps_per_task: Sequence[int], num_tasks: int) -> list[int]:
    """``steps_per_task`` as a list of ``num_tasks`` positive ints.

    Raises:
      ValueError: wrong length or a value that is not a positive integer.
    """
    steps = list(steps_per_task)
    if len(steps) != num_tasks:
        raise ValueError(
            f"steps_per_task has {len(steps)} entries {steps}, expected one per task ({num_tasks})"
        )
    for i, s in enumerate(steps):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"steps_per_task[{i}] must be a positive integer, got {s!r}")
    return [int(s) for s in steps]


def takes_budget(method: str, cfg: Any) -> bool:
    """Whether ``method`` with config ``cfg`` can be given a per-task step budget."""
    if isinstance(cfg, BaselineConfig):
        return True
    field = BUDGET_FIELDS.get(method)
    return field is not None and hasattr(cfg, field)


def with_budget(method: str, cfg: Any, steps: int) -> Any:
    """``cfg`` with ``steps`` optimizer steps for one task of ``method``.

    Args:
      method: the method's name.
      cfg: its config (a :class:`BaselineConfig`, or a ``DENConfig`` for
        :data:`BUDGET_FIELDS`).
      steps: the task's step budget.

    Returns:
      A copy of ``cfg`` (``steps`` or ``steps_task1`` replaced).

    Raises:
      ValueError: ``method`` decides its own steps (DEN and its multi-phase ablations).
    """
    if isinstance(cfg, BaselineConfig):
        return dataclasses.replace(cfg, steps=int(steps))
    if not takes_budget(method, cfg):
        raise ValueError(
            f"method {method!r} takes no per-task step budget (it decides its own steps); "
            f"budgets apply to BaselineConfig methods and {sorted(BUDGET_FIELDS)}"
        )
    return dataclasses.replace(cfg, **{BUDGET_FIELDS[method]: int(steps)})


def report_steps(report: Mapping[str, Any]) -> int | None:
    """Optimizer steps a learner's task report says it spent.

    The report's ``steps`` when present (baselines, DEN), else the sum of ``steps`` (and
    of nested ``pretrain``/``retrain`` ``steps``) over ``report["phases"]`` (the
    ablations); ``None`` when the report names no steps.
    """
    if isinstance(report.get("steps"), (int, float, np.integer)):
        return int(report["steps"])
    phases = report.get("phases")
    if not isinstance(phases, Mapping):
        return None
    total, found = 0, False
    for ph in phases.values():
        if not isinstance(ph, Mapping):
            continue
        for part in (ph, ph.get("pretrain"), ph.get("retrain")):
            if isinstance(part, Mapping) and isinstance(part.get("steps"), (int, np.integer)):
                total, found = total + int(part["steps"]), True
    return total if found else None


def steps_spent(result: Mapping[str, Any]) -> list[int | None]:
    """Per task, the optimizer steps of a :func:`den_jax.stream.run_stream` result.

    Args:
      result: a run result with ``tasks_report`` (a list of ``{"summary", "report"}``).

    Returns:
      One entry per task (``None`` where a report names no steps).
    """
    reports = result.get("tasks_report")
    if not isinstance(reports, Sequence):
        raise ValueError("the result has no 'tasks_report' list to read the steps from")
    return [report_steps(r.get("report", {})) for r in reports]
