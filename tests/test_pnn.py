"""Progressive Networks: lateral adapters, frozen columns, checkpoints and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import den_jax as dj
from den_jax import stream
from den_jax.baselines import BaselineConfig, pnn_forward, pnn_learn_task, pnn_predict
from den_jax.baselines.pnn import init_column
from den_jax.data.tasks import Task

CFG = BaselineConfig(steps=30, batch_size=16)


def make_tasks(n=3, dims=None, seed=0):
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(n):
        d = 6 if dims is None else dims[t]
        x = rng.normal(size=(80, d)).astype(np.float32)
        y = ((x[:, t % d] > 0).astype(np.int32) + 2 * (x[:, (t + 1) % d] > 0)).astype(np.int32)
        tasks.append(Task(f"t{t}", x[:48], y[:48], x[48:60], y[48:60], x[60:], y[60:], 4))
    return tasks


def two_columns(key=0):
    k0, k1 = jax.random.split(jax.random.key(key))
    c0 = init_column(k0, 0, (5, 4), "shared", 3, 2)
    c1 = init_column(k1, 1, (5, 4), "shared", 3, 2, alpha_init=1.0)
    return c0, c1


def test_laterals_change_the_new_column_and_never_an_old_one():
    c0, c1 = two_columns()
    x = jax.random.normal(jax.random.key(9), (7, 3))
    base_new = pnn_forward([c0, c1], x, "shared", "relu")
    base_old = pnn_forward([c0], x, "shared", "relu")
    # Perturbing column 0's hidden weights moves column 1's output (through the adapters)...
    c0b = jax.tree.map(lambda v: v, c0)
    c0b["hidden"][0]["b"] = c0["hidden"][0]["b"] + 0.5
    assert not np.allclose(pnn_forward([c0b, c1], x, "shared", "relu"), base_new)
    # ...and removing the laterals (alpha = 0) too: they carry information.
    c1z = {**c1, "lateral": [{**a, "alpha": jnp.zeros(())} for a in c1["lateral"]]}
    assert not np.allclose(pnn_forward([c0, c1z], x, "shared", "relu"), base_new)
    # Column 1's parameters never change task 0's outputs (inference uses columns 0..0).
    net = dj.init_network(jax.random.key(0), [5, 4], shared_input_dim=3)
    for i in range(2):
        net = dj.add_task(net, jax.random.key(i), f"t{i}", input_dim=3, output_dim=2)
    c1b = jax.tree.map(lambda v: v * 3.0 + 1.0, c1)
    for col in (c1, c1b):
        out = pnn_predict(net, {"columns": [c0, col]}, x, "t0")
        np.testing.assert_array_equal(out, base_old)
    assert not np.allclose(pnn_predict(net, {"columns": [c0, c1b]}, x, "t1"), base_new)
    assert [a["v"].shape for a in c1["lateral"]] == [(5, 4), (4, 2)]


def test_learning_a_task_trains_only_its_column():
    tasks = make_tasks(2)
    net = dj.init_network(jax.random.key(0), [6, 5], shared_input_dim=6)
    net = dj.add_task(net, jax.random.key(1), "t0", input_dim=6, output_dim=4)
    net, rep = pnn_learn_task(net, jax.random.key(2), "t0", (tasks[0].x_train, tasks[0].y_train),
                              None, CFG)  # fmt: skip
    s0 = rep["state"]
    net = dj.add_task(net, jax.random.key(3), "t1", input_dim=6, output_dim=4)
    net, rep = pnn_learn_task(net, jax.random.key(4), "t1", (tasks[1].x_train, tasks[1].y_train),
                              None, CFG, state=s0)  # fmt: skip
    cols = rep["state"]["columns"]
    assert len(cols) == 2 and "lateral" in cols[1] and "lateral" not in cols[0]
    jax.tree.map(np.testing.assert_array_equal, cols[0], s0["columns"][0])
    x = tasks[0].x_test
    np.testing.assert_array_equal(pnn_predict(net, rep["state"], x, "t0"),
                                  pnn_predict(net, s0, x, "t0"))  # fmt: skip
    # the adapters' alpha moved away from its initial value: the laterals were trained
    assert rep["lateral_params"] > 0 and rep["phase"] == "pnn"


def test_heterogeneous_inputs_give_earlier_columns_an_input_layer():
    res = stream.run_stream("pnn", make_tasks(3, dims=[5, 7, 5]), CFG, hidden=[6, 4])
    assert res["forgetting"] == 0.0
    assert res["units_after_task"] == [[6, 4], [12, 8], [18, 12]]
    assert res["params_after_task"][2] > 2 * res["params_after_task"][0]


def crash_after(index):
    def cb(end):
        if end.index == index:
            raise RuntimeError("simulated crash")

    return cb


def test_checkpoint_resume_equals_an_uninterrupted_run(tmp_path):
    tasks = make_tasks(3)
    kw = dict(hidden=[6, 4], run_config={"what": "pnn"})
    full = stream.run_stream("pnn", tasks, CFG, checkpoint_dir=str(tmp_path / "a"), **kw)
    with pytest.raises(RuntimeError, match="simulated"):
        stream.run_stream("pnn", tasks, CFG, checkpoint_dir=str(tmp_path / "b"),
                          callbacks=[crash_after(1)], **kw)  # fmt: skip
    resumed = stream.run_stream("pnn", tasks, CFG, checkpoint_dir=str(tmp_path / "b"),
                                resume=True, **kw)  # fmt: skip
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["params_after_task"] == full["params_after_task"]
    assert resumed["params_per_task"] == full["params_per_task"]
    # load_predictor gives task 0's outputs after every later task
    predict = stream.load_predictor(str(tmp_path / "b"), "t0")
    acc = dj.metrics.accuracy(np.asarray(predict(tasks[0].x_test)), tasks[0].y_test)
    assert acc == pytest.approx(full["accuracy_matrix"][2][0])
    net, state, name = stream.load_task(str(tmp_path / "b"), "t0", with_state=True)
    assert len(state["columns"]) == 3 and name == "t0"
    with pytest.raises(ValueError, match="load_predictor"):
        stream.load_task(str(tmp_path / "b"), "t0")


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 1000), n=st.integers(2, 3), width=st.integers(2, 5))
def test_earlier_outputs_stay_bit_identical_after_any_later_task(seed, n, width):
    tasks = make_tasks(n, seed=seed)
    net = dj.init_network(jax.random.key(seed), [width, 3], shared_input_dim=6)
    state, first = None, {}
    cfg = BaselineConfig(steps=5, batch_size=8)
    for i, t in enumerate(tasks):
        net = dj.add_task(net, jax.random.key(100 + i), t.name, input_dim=6, output_dim=4)
        net, rep = pnn_learn_task(net, jax.random.key(i), t.name, (t.x_train, t.y_train), None,
                                  cfg, state=state)  # fmt: skip
        state = rep["state"]
        first[t.name] = np.asarray(pnn_predict(net, state, tasks[0].x_test, t.name))
        for j in range(i + 1):
            out = np.asarray(pnn_predict(net, state, tasks[0].x_test, tasks[j].name))
            np.testing.assert_array_equal(out, first[tasks[j].name])
