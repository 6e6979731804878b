"""DEN ablations as runner methods (dnn_l1, den_selective, den_constant, den_no_timestamp, mtl)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import den_jax as dj
from den_jax import stream
from den_jax.data.tasks import npz_stream
from den_jax.den import DENConfig
from den_jax.den.ablations import ABLATIONS, predict_without_timestamps

CFG = DENConfig(
    steps_task1=40, steps_head=5, steps_selective=20, steps_expand=20, steps_split=20,
    batch_size=16, new_nodes_k=3, learning_rate=1e-2, lr_decay_steps=20,
)  # fmt: skip


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(160, 10), dtype=np.uint8)
    y = (x[:, 0] > 128).astype(np.int64) + 2 * (x[:, 1] > 128)
    xt = rng.integers(0, 256, size=(60, 10), dtype=np.uint8)
    yt = (xt[:, 0] > 128).astype(np.int64) + 2 * (xt[:, 1] > 128)
    path = tmp_path_factory.mktemp("abl") / "tiny.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return npz_stream(str(path), "permute:3")


class _Runs(dict):
    """Runs each ablation once, on first use."""

    def __init__(self, tasks):
        super().__init__()
        self.tasks = tasks

    def __missing__(self, name):
        self[name] = stream.run_stream(ABLATIONS[name], self.tasks, CFG, hidden=[8, 6], seed=0)
        return self[name]


@pytest.fixture(scope="module")
def results(tasks):
    return _Runs(tasks)


def _widths(res):
    return res["units_after_task"]


def test_every_ablation_runs_and_learns(results):
    # Learning, not retention: accuracy on each task right after it (4 classes: chance 0.25).
    # The fine-tuning-like ablations (dnn_l1) forget, so the final average is not the check.
    for name in ABLATIONS:
        acc = results[name]["accuracy_matrix"]
        assert np.mean([acc[i][i] for i in range(len(acc))]) > 0.3, name


def test_dnn_l1_and_selective_never_grow(results):
    for name in ("dnn_l1", "den_selective"):
        assert all(w == [8, 6] for w in _widths(results[name])), name
    for rep in results["den_selective"]["tasks_report"][1:]:
        phases = rep["report"]["phases"]
        assert not phases["expansion"]["expanded"] and not phases["split"]["ran"]


def test_den_constant_adds_k_every_task_and_prunes_nothing(results):
    for rep in results["den_constant"]["tasks_report"][1:]:
        exp = rep["report"]["phases"]["expansion"]
        assert exp["expanded"] and exp["added"] == [3, 3] and exp["pruned"] == [0, 0]


def test_no_timestamp_predicts_with_later_units():
    net = dj.init_network(jax.random.key(0), [4, 3], shared_input_dim=5)
    net = dj.add_task(net, jax.random.key(1), "a", input_dim=5, output_dim=2)
    net = dj.add_task(net, jax.random.key(2), "b", input_dim=5, output_dim=2)
    net = dj.add_units_all(net, jax.random.key(3), 2, outgoing="init")  # stamped with task b
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
    # The newest task sees every unit anyway; the older one now sees units added after it.
    np.testing.assert_allclose(
        predict_without_timestamps(net, None, x, "b"), dj.apply(net, x, "b"), atol=1e-6
    )
    assert not np.allclose(predict_without_timestamps(net, None, x, "a"), dj.apply(net, x, "a"))


def test_mtl_keeps_old_tasks(results):
    r = np.asarray(results["mtl"]["accuracy_matrix"])
    assert r[-1, 0] > 0.3
    assert results["mtl"]["tasks_report"][-1]["report"]["phases"]["mtl"]["tasks"] == 3
