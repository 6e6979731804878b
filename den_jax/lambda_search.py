"""A baseline's regularisation strength chosen on the validation split.

:func:`select_lambda` runs a method once per value of a grid with the accuracy matrix on
the validation rows (``eval_split="valid"``: train on the training rows, score on the
held-out ones; the test rows are never seen), scores each value by the average
validation accuracy after the last task, and returns the grid, the scores and the best
value. The caller then runs the method on the test split with that value. Ties go to the
first value in grid order.

Example::

    from den_jax import lambda_search, stream
    sel = lambda_search.select_lambda("ewc", tasks, cfg, [1, 10, 100, 1000], hidden=[312, 128])
    cfg = lambda_search.with_lambda("ewc", cfg, sel["best"])
    res = stream.run_stream("ewc", tasks, cfg, hidden=[312, 128])
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from den_jax import stream
from den_jax.runs import jsonable

__all__ = [
    "DEFAULT_GRIDS",
    "LAMBDA_FIELDS",
    "check_grid",
    "parse_lambda_grid",
    "select_lambda",
    "with_lambda",
]

#: Methods with a searchable strength and the :class:`~den_jax.baselines.BaselineConfig`
#: field that holds it.
LAMBDA_FIELDS: Mapping[str, str] = {"l2": "l2_lambda", "ewc": "ewc_lambda"}
#: Grids used when ``parse_lambda_grid`` gets a bare method name: four decades around the
#: defaults (L2 0.5; EWC 1000 on the raw Fisher).
DEFAULT_GRIDS: Mapping[str, tuple[float, ...]] = {
    "l2": (0.01, 0.1, 1.0, 10.0),
    "ewc": (10.0, 100.0, 1000.0, 10000.0),
}


def parse_lambda_grid(specs: Sequence[str]) -> dict[str, list[float]]:
    """``["l2=0.01,0.1,1,10", "ewc=1,10,100,1000"]`` -> ``{"l2": [...], "ewc": [...]}``.

    A bare method name (``"ewc"``) takes its :data:`DEFAULT_GRIDS` entry.

    Raises:
      ValueError: a spec without ``METHOD=``, an unknown method, a repeated method, a
        value that is not a non-negative number, or fewer than two distinct values.
    """
    grids: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep and name in DEFAULT_GRIDS:
            sep, values = "=", ",".join(str(v) for v in DEFAULT_GRIDS[name])
        if not sep or name not in LAMBDA_FIELDS:
            raise ValueError(
                f"bad --lambda-grid {spec!r}: expected METHOD=V1,V2,... with METHOD one of "
                f"{sorted(LAMBDA_FIELDS)}"
            )
        if name in grids:
            raise ValueError(f"bad --lambda-grid: method {name!r} given twice")
        try:
            grid = [float(v) for v in values.split(",")]
        except ValueError as err:
            raise ValueError(f"bad --lambda-grid {spec!r}: values must be numbers") from err
        grids[name] = check_grid(name, grid)
    return grids


def check_grid(method: str, grid: Sequence[float]) -> list[float]:
    """``grid`` as floats: finite, >= 0, distinct, at least two values."""
    vals = [float(v) for v in grid]
    if len(vals) < 2 or len(set(vals)) != len(vals):
        raise ValueError(f"lambda grid of {method!r} needs >= 2 distinct values, got {vals}")
    bad = [v for v in vals if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"lambda grid of {method!r}: values must be finite and >= 0, got {bad}")
    return vals


def with_lambda(method: str, cfg: Any, value: float) -> Any:
    """``cfg`` with ``method``'s strength (:data:`LAMBDA_FIELDS`) set to ``value``."""
    if method not in LAMBDA_FIELDS:
        raise ValueError(
            f"method {method!r} has no lambda to set; expected {sorted(LAMBDA_FIELDS)}"
        )
    return dataclasses.replace(cfg, **{LAMBDA_FIELDS[method]: float(value)})


def select_lambda(
    method: str,
    tasks: Any,
    cfg: Any,
    grid: Sequence[float],
    *,
    hidden: Sequence[int],
    seed: int = 0,
    steps_per_task: Sequence[int] | None = None,
    checkpoint_root: str | None = None,
    resume: bool = False,
    run_config: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callable] = (),
    **run_kwargs: Any,
) -> dict:
    """Runs ``method`` for every value of ``grid`` on the validation split; picks the best.

    Args:
      method: ``"l2"`` or ``"ewc"`` (:data:`LAMBDA_FIELDS`).
      tasks: a task stream or a list of tasks (every task needs validation rows).
      cfg: the method's :class:`~den_jax.baselines.BaselineConfig`.
      grid: the values tried.
      hidden: hidden widths.
      seed: run seed.
      steps_per_task: the per-task budget (same as the final run's).
      checkpoint_root: each value's checkpoints go to ``checkpoint_root/lambda_V``
        (``None``: none); with ``resume`` finished values are read back, not rerun.
      resume: continue runs in ``checkpoint_root``.
      run_config: description saved with each value's checkpoints (the value is added).
      callbacks: passed to :func:`den_jax.stream.run_stream`.
      run_kwargs: other :func:`den_jax.stream.run_stream` keywords (``activation``,
        ``loss``, ``optimizer``).

    Returns:
      A JSON-friendly dict: ``method``, ``field``, ``grid``, ``scores`` (average validation
      accuracy per value, grid order), ``forgetting`` (validation forgetting per value),
      ``best`` (the value with the highest score), ``best_score``, ``split``
      (``"valid"``), ``steps_per_task``.
    """
    if method not in LAMBDA_FIELDS:
        raise ValueError(
            f"method {method!r} has no lambda to search; expected {sorted(LAMBDA_FIELDS)}"
        )
    grid = check_grid(method, grid)
    scores, forgetting = [], []
    for value in grid:
        ckpt = None
        if checkpoint_root is not None:
            ckpt = os.path.join(checkpoint_root, f"lambda_{value:g}")
        res = stream.run_stream(
            method, tasks, with_lambda(method, cfg, value), hidden=hidden, seed=seed,
            checkpoint_dir=ckpt, resume=resume, eval_split="valid",
            run_config={**dict(run_config or {}), "lambda": value, "eval_split": "valid"},
            steps_per_task=steps_per_task, callbacks=callbacks, **run_kwargs,
        )  # fmt: skip
        scores.append(float(res["avg_accuracy"]))
        forgetting.append(float(res["forgetting"]))
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    return jsonable(
        {
            "method": method,
            "field": LAMBDA_FIELDS[method],
            "grid": grid,
            "scores": scores,
            "forgetting": forgetting,
            "best": grid[best],
            "best_score": scores[best],
            "split": "valid",
            "steps_per_task": None if steps_per_task is None else list(steps_per_task),
        }
    )
