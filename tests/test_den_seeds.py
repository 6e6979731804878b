"""experiments.den: --seeds (mean ± std), --budget den, --lambda-grid, through the CLI."""

import json
import os

import numpy as np
import pytest

from den_jax import comparison
from experiments import den as runner

TINY = """
den:
  steps_task1: 12
  steps_head: 3
  steps_selective: 6
  steps_expand: 6
  steps_split: 6
  batch_size: 16
  new_nodes_k: 2
baselines:
  steps: 10
  batch_size: 16
"""


def _read(path):
    with open(path) as f:
        return json.load(f)


def _class_stream(tmp_path, num_pairs: int, n: int, seed: int) -> list[str]:
    """An npz of ``num_pairs`` two-class tasks and the tiny config; the common argv."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 6), dtype=np.uint8)
    y = (x[:, 0] > 128).astype(np.int64) + 2 * (x[:, 1] // (256 // num_pairs + 1))
    test = n // 3
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:test], y_test=y[:test])
    (tmp_path / "c.yaml").write_text(TINY)
    tasks = "/".join(f"{2 * i},{2 * i + 1}" for i in range(num_pairs))
    return ["--dataset", f"npz:{tmp_path / 'd.npz'}", "--tasks", f"classes:{tasks}",
            "--config", str(tmp_path / "c.yaml"), "--hidden", "5", "--no-plots"]  # fmt: skip


def test_seeds_budget_and_lambda_grid(tmp_path):
    out = tmp_path / "out"
    argv = [*_class_stream(tmp_path, 2, 100, 0), "--out", str(out),
            "--method", "l2,den", "--budget", "den", "--lambda-grid", "l2=0,10",
            "--seeds", "0,1"]  # fmt: skip
    assert runner.main(argv) == 0
    top = _read(out / "results.json")
    assert top["seeds"] == [0, 1] and set(top["aggregate"]) == {"den", "l2"}
    per = {k: _read(out / f"seed_{k}" / "results.json") for k in (0, 1)}
    for k, res in per.items():
        assert res["seed"] == k
        den_steps = res["methods"]["den"]["steps_per_task"]
        assert den_steps[0] == 12 and den_steps[1] > 12  # head + selective + ...
        assert res["den_steps_per_task"] == den_steps
        assert res["methods"]["l2"]["steps_per_task"] == den_steps  # equal budget
        assert res["methods"]["l2"]["budget"] == den_steps
    # The grid is searched on seed 0's validation split; seed 1 reuses the choice.
    search = per[0]["lambda_search"]["l2"]
    assert search["grid"] == [0.0, 10.0] and len(search["scores"]) == 2
    assert search["steps_per_task"] == per[0]["den_steps_per_task"]
    assert sorted(os.listdir(out / "seed_0" / "lambda_search" / "l2")) == ["lambda_0", "lambda_10"]
    assert "lambda_search" not in per[1] and per[1]["lambda"]["l2"] == search["best"]
    assert top["lambda"] == {"l2": search["best"]}
    accs = [per[k]["methods"]["den"]["avg_accuracy"] for k in (0, 1)]
    agg = top["aggregate"]["den"]["avg_accuracy"]
    assert agg["values"] == accs and agg["mean"] == pytest.approx(np.mean(accs))
    assert agg["std"] == pytest.approx(np.std(accs, ddof=1))
    assert top["methods"]["l2"]["forgetting"]["seeds"] == [0, 1]
    assert "±" in (out / "comparison.md").read_text()
    # --resume reads every finished run back: same numbers, nothing refused.
    assert runner.main([*argv, "--resume"]) == 0
    assert _read(out / "results.json")["aggregate"] == top["aggregate"]
    # Without DEN's steps the budgeted baseline is refused; --seed with --seeds too.
    bad = [a if a != "l2,den" else "l2" for a in argv]
    bad[bad.index("--out") + 1] = str(tmp_path / "other")
    assert runner.main(bad) == 2
    assert runner.main([*argv, "--seed", "3"]) == 2


def test_aggregate_seeds_mean_std_and_table():
    res = {
        0: {"den": {"avg_accuracy": 0.9, "forgetting": 0.01, "params": 100},
            "stl": {"avg_accuracy": 0.95, "params": 300}},
        1: {"den": {"avg_accuracy": 0.8, "forgetting": 0.03, "params": 120}},
    }  # fmt: skip
    agg = comparison.aggregate_seeds(res)
    assert agg["den"]["avg_accuracy"]["mean"] == pytest.approx(0.85)
    assert agg["den"]["avg_accuracy"]["std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert agg["den"]["seeds"] == [0, 1] and agg["stl"]["seeds"] == [0]
    assert agg["stl"]["avg_accuracy"]["std"] == 0.0 and "forgetting" not in agg["stl"]
    table = comparison.markdown_seed_table(agg, title="t")
    assert "| den | 2 | 0.8500 ± 0.0707 | 0.0200 ± 0.0141 | 110 ± 14 |" in table
    assert "| stl | 1 | 0.9500 ± 0.0000 | n/a |" in table
    with pytest.raises(ValueError, match="at least one seed"):
        comparison.aggregate_seeds({})
    with pytest.raises(ValueError, match="seed 0 method 'den': params must be a number"):
        comparison.aggregate_seeds({0: {"den": {"params": "x"}}})


def test_lambda_search_on_the_first_tasks(tmp_path):
    """``--search-tasks N``: the grid runs on the first N tasks at their DEN budget."""
    out = tmp_path / "out"
    argv = [*_class_stream(tmp_path, 3, 150, 1), "--out", str(out),
            "--method", "den,ewc", "--budget", "den", "--lambda-grid", "ewc=0,100",
            "--search-tasks", "2"]  # fmt: skip
    assert runner.main(argv) == 0
    res = _read(out / "results.json")
    search = res["lambda_search"]["ewc"]
    assert search["tasks"] == res["tasks"][:2]
    assert search["steps_per_task"] == res["den_steps_per_task"][:2]
    run_dir = out / "lambda_search" / "ewc" / "lambda_100"
    assert os.path.isdir(run_dir)
    assert len(res["methods"]["ewc"]["accuracy_matrix"]) == 3  # the final run: every task
    bad = list(argv)
    bad[bad.index("--search-tasks") + 1] = "4"
    bad[bad.index("--out") + 1] = str(tmp_path / "other")
    assert runner.main(bad) == 2
