"""Equal step budgets (den_jax.budget), lambda chosen on validation (den_jax.lambda_search)."""

import dataclasses

import numpy as np
import pytest

from den_jax import budget, lambda_search, stream
from den_jax.baselines import BaselineConfig
from den_jax.data.tasks import Task
from den_jax.den import DENConfig

BASE = BaselineConfig(steps=9, batch_size=16, fisher_samples=16)


def make_tasks(n=2, seed=0):
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(n):
        x = rng.normal(size=(80, 5)).astype(np.float32)
        y = (x[:, t] > 0).astype(np.int32)
        tasks.append(Task(f"t{t}", x[:48], y[:48], x[48:64], y[48:64], x[64:], y[64:], 2))
    return tasks


def test_with_budget_and_checks():
    assert budget.with_budget("l2", BASE, 17).steps == 17
    den = DENConfig()
    assert budget.with_budget("dnn_l1", den, 55).steps_task1 == 55
    assert budget.takes_budget("mtl", den) and not budget.takes_budget("den", den)
    with pytest.raises(ValueError, match="method 'den' takes no per-task step budget"):
        budget.with_budget("den", den, 5)
    assert budget.check_budget([3, np.int64(4)], 2) == [3, 4]
    with pytest.raises(ValueError, match="expected one per task"):
        budget.check_budget([3], 2)
    with pytest.raises(ValueError, match=r"steps_per_task\[1\] must be a positive integer"):
        budget.check_budget([3, 0], 2)


def test_report_steps_reads_top_level_and_phases():
    assert budget.report_steps({"steps": 12, "phases": {"a": {"steps": 1}}}) == 12
    rep = {"phases": {"head": {"steps": 5}, "split": {"pretrain": {"steps": 2},
                                                      "retrain": {"steps": 3}}}}  # fmt: skip
    assert budget.report_steps(rep) == 10
    assert budget.report_steps({"phase": "x"}) is None


def test_run_stream_trains_each_task_for_its_budget_and_reports_it(tmp_path):
    tasks = make_tasks()
    res = stream.run_stream(
        "finetune", tasks, BASE, hidden=[6], steps_per_task=[4, 7],
        checkpoint_dir=str(tmp_path / "ft"),
    )  # fmt: skip
    assert res["steps_per_task"] == [4, 7] and res["budget"] == [4, 7]
    assert [r["report"]["steps"] for r in res["tasks_report"]] == [4, 7]
    plain = stream.run_stream("finetune", tasks[:1], BASE, hidden=[6])
    assert plain["steps_per_task"] == [9] and plain["budget"] is None
    # Resume with the same budget reads the finished run back; another budget is refused.
    again = stream.run_stream(
        "finetune", tasks, BASE, hidden=[6], steps_per_task=[4, 7],
        checkpoint_dir=str(tmp_path / "ft"), resume=True,
    )  # fmt: skip
    assert again["accuracy_matrix"] == res["accuracy_matrix"]
    with pytest.raises(ValueError, match=r"steps_per_task \[4, 7\], not \[4, 8\]"):
        stream.run_stream(
            "finetune", tasks, BASE, hidden=[6], steps_per_task=[4, 8],
            checkpoint_dir=str(tmp_path / "ft"), resume=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="takes no per-task step budget"):
        stream.run_stream("den", tasks, DENConfig(), hidden=[6], steps_per_task=[4, 7])


def test_parse_lambda_grid():
    grids = lambda_search.parse_lambda_grid(["l2=0.01,0.1,1,10", "ewc=1,1e3"])
    assert grids == {"l2": [0.01, 0.1, 1.0, 10.0], "ewc": [1.0, 1000.0]}
    assert lambda_search.parse_lambda_grid(["ewc"]) == {"ewc": [10.0, 100.0, 1000.0, 10000.0]}
    for bad, msg in [
        (["sgd"], "expected METHOD=V1,V2"),
        (["sgd=1,2"], "expected METHOD=V1,V2"),
        (["l2=1,x"], "values must be numbers"),
        (["l2=1"], "needs >= 2 distinct values"),
        (["l2=1,1"], "needs >= 2 distinct values"),
        (["l2=-1,1"], "finite and >= 0"),
        (["l2=1,2", "l2=3,4"], "given twice"),
    ]:
        with pytest.raises(ValueError, match=msg):
            lambda_search.parse_lambda_grid(bad)


def test_select_lambda_scores_on_validation_and_picks_the_best(monkeypatch):
    calls = []

    def fake_run_stream(method, tasks, cfg, **kw):
        lam = cfg.ewc_lambda
        calls.append((lam, kw["eval_split"], kw["steps_per_task"], kw["run_config"]["lambda"]))
        # validation favours 10; a test-split score would favour 1000
        score = {1.0: 0.7, 10.0: 0.9, 100.0: 0.8, 1000.0: 0.6}[lam]
        return {"avg_accuracy": score, "forgetting": 1 - score}

    monkeypatch.setattr(stream, "run_stream", fake_run_stream)
    sel = lambda_search.select_lambda(
        "ewc", make_tasks(), BASE, [1, 10, 100, 1000], hidden=[6], steps_per_task=[3, 5]
    )
    assert sel["best"] == 10.0 and sel["best_score"] == 0.9 and sel["field"] == "ewc_lambda"
    assert sel["scores"] == [0.7, 0.9, 0.8, 0.6] and sel["grid"] == [1.0, 10.0, 100.0, 1000.0]
    assert all(split == "valid" and steps == [3, 5] for _, split, steps, _ in calls)
    assert [c[0] for c in calls] == [c[3] for c in calls] == [1.0, 10.0, 100.0, 1000.0]
    cfg = lambda_search.with_lambda("ewc", BASE, sel["best"])
    assert cfg == dataclasses.replace(BASE, ewc_lambda=10.0)
