"""The architecture-methods table: growth, forgetting, forward transfer vs STL."""

import numpy as np
import pytest

from den_jax import comparison, plots


def result(diag, params, last_row=None):
    T = len(diag)
    acc = [[None] * T for _ in range(T)]
    for i in range(T):
        for j in range(i + 1):
            acc[i][j] = diag[j]
    if last_row is not None:
        acc[T - 1] = list(last_row)
    return {"accuracy_matrix": acc, "params_after_task": params, "nonzero_params": params[-1]}


def test_growth_forgetting_and_forward_transfer():
    stl = result([0.9, 0.8, 0.7], [100, 200, 300])
    grow = result([0.9, 0.9, 0.9], [150, 300, 450])
    fixed = result([0.9, 0.7, 0.6], [1000, 1001, 1002], last_row=[0.5, 0.7, 0.6])
    dyn = result([0.9, 0.8, 0.7], [100, 110, 400])
    comp = comparison.compare({"stl": stl, "pnn": grow, "packnet": fixed, "den": dyn})
    rows = comp["methods"]
    assert rows["pnn"]["growth"] == "linear" and rows["pnn"]["growth_rate"] == pytest.approx(150)
    assert rows["pnn"]["growth_vs_stl"] == pytest.approx(1.5)
    assert rows["pnn"]["params_vs_stl"] == pytest.approx(1.5)
    assert rows["packnet"]["growth"] == "fixed" and rows["den"]["growth"] == "dynamic"
    # forward transfer: R[j][j] - STL's R[j][j], tasks 1.. only
    assert rows["pnn"]["forward_transfer"] == pytest.approx(np.mean([0.1, 0.2]))
    assert rows["pnn"]["forward_transfer_per_task"] == pytest.approx([0.0, 0.1, 0.2])
    assert rows["packnet"]["forward_transfer"] == pytest.approx(np.mean([-0.1, -0.1]))
    assert rows["packnet"]["forgetting"] == pytest.approx(0.4 / 2)
    assert rows["packnet"]["bwt"] == pytest.approx(-0.2)
    assert rows["stl"]["forward_transfer"] == 0.0 and rows["stl"]["forgetting"] == 0.0
    table = comparison.markdown_table(comp, title="toy")
    assert table.count("\n| ") == 5 and "| pnn | linear | 150 (1.50) | 450 (1.50)" in table


def test_without_stl_the_relative_columns_are_missing():
    comp = comparison.compare({"pnn": result([0.9, 0.9], [10, 20])})
    assert comp["methods"]["pnn"]["forward_transfer"] is None
    assert "n/a" in comparison.markdown_table(comp)
    with pytest.raises(ValueError, match="STL's accuracy matrix"):
        comparison.compare({"pnn": result([0.9, 0.9], [10, 20])}, stl=result([0.9], [1]))


def test_accuracy_vs_params_plot(tmp_path):
    res = {"a": result([0.9, 0.8], [10, 20]), "b": result([0.7, 0.9], [15, 15])}
    path = plots.plot_accuracy_vs_params(res, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000 and path.endswith("p.png")


def test_growth_label_names_quadratic_growth():
    """A column per task plus adapters from every earlier column grows quadratically."""
    col, lateral = 1000, 300
    pnn = [sum(col + lateral * i for i in range(t + 1)) for t in range(10)]
    assert comparison.growth_label(pnn) == "quadratic"
    assert comparison.growth_label([col * (t + 1) for t in range(10)]) == "linear"
    assert comparison.growth_label([100, 110, 400, 410, 420, 900]) == "dynamic"
    assert comparison.growth_label([1000, 1001, 1002, 1003]) == "fixed"
