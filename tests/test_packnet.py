"""PackNet: disjoint ownership masks, frozen weights, bit-identical old tasks, resume."""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import den_jax as dj
from den_jax import stream
from den_jax.baselines import BaselineConfig, packnet_learn_task, packnet_predict
from den_jax.baselines.packnet import prunable
from den_jax.data.tasks import Task

CFG = BaselineConfig(steps=30, batch_size=16, packnet_prune=0.5, packnet_retrain_steps=10)


def make_tasks(n=3, dims=None, seed=0):
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(n):
        d = 6 if dims is None else dims[t]
        x = rng.normal(size=(80, d)).astype(np.float32)
        y = ((x[:, t % d] > 0).astype(np.int32) + 2 * (x[:, (t + 1) % d] > 0)).astype(np.int32)
        tasks.append(Task(f"t{t}", x[:48], y[:48], x[48:60], y[48:60], x[60:], y[60:], 4))
    return tasks


def learn_all(tasks, cfg, hidden=(8, 6), seed=0):
    net = dj.init_network(jax.random.key(seed), list(hidden), shared_input_dim=6)
    state, history = None, []
    for i, t in enumerate(tasks):
        net = dj.add_task(net, jax.random.key(100 + i), t.name, input_dim=6, output_dim=4)
        net, rep = packnet_learn_task(net, jax.random.key(i), t.name, (t.x_train, t.y_train),
                                      None, cfg, state=state)  # fmt: skip
        state = rep["state"]
        history.append((net, state, rep))
    return history


def test_masks_are_disjoint_and_frozen_weights_never_move():
    history = learn_all(make_tasks(3), CFG)
    net, state, _ = history[-1]
    for k, owner in state["owner"].items():
        o = np.asarray(owner)
        # one owner per weight: the per-task masks are disjoint and cover the owned ones
        masks = [o == t for t in range(3)]
        assert sum(m.astype(int) for m in masks).max() <= 1
        assert all(m.any() for m in masks), k
        # each task kept (1 - p) of what was free for it (rounding per layer)
        assert abs(masks[1].sum() - 0.5 * 0.5 * o.size) <= 1
    for i in range(len(history) - 1):
        before_net, before_state, _ = history[i]
        w_before = prunable(before_net.params)
        for later_net, _, _ in history[i + 1 :]:
            w_after = prunable(later_net.params)
            for k, o in before_state["owner"].items():
                kept = np.asarray(o) >= 0
                np.testing.assert_array_equal(
                    np.asarray(w_after[k])[kept], np.asarray(w_before[k])[kept]
                )
            # the hidden biases are frozen after the first task
            np.testing.assert_array_equal(later_net.params["hidden"][0]["b"],
                                          before_net.params["hidden"][0]["b"])  # fmt: skip
    # pruned (free) weights are exactly zero
    for k, w in prunable(net.params).items():
        assert np.all(np.asarray(w)[np.asarray(state["owner"][k]) == -1] == 0)


def test_no_free_weights_left_is_a_clear_error():
    cfg = BaselineConfig(steps=10, batch_size=16, packnet_prune=0.0, packnet_retrain_steps=0)
    with pytest.raises(ValueError, match=r"no free weights left for task 't1'.*packnet_prune"):
        learn_all(make_tasks(2), cfg)


def test_per_task_prune_fractions_and_heterogeneous_inputs():
    cfg = BaselineConfig(steps=20, batch_size=16, packnet_prune=[0.75, 0.5])
    res = stream.run_stream("packnet", make_tasks(3, dims=[5, 7, 5]), cfg, hidden=[8, 6])
    assert res["forgetting"] == 0.0
    fracs = [r["report"]["prune_fraction"] for r in res["tasks_report"]]
    assert fracs == [0.75, 0.5, 0.5]
    owned = [r["report"]["owned"]["hidden1"] for r in res["tasks_report"]]
    assert owned == [12, 18, 9]  # 48 * 0.25, 36 * 0.5, 18 * 0.5
    # the shared matrices keep their size: only the new task's own heads are added
    heads = [5 * 8 + 6 * 4 + 4, 7 * 8 + 6 * 4 + 4, 5 * 8 + 6 * 4 + 4]
    assert np.diff(res["params_after_task"]).tolist() == heads[1:]
    assert res["nonzero_params"] < res["params"]


def crash_after(index):
    def cb(end):
        if end.index == index:
            raise RuntimeError("simulated crash")

    return cb


def test_checkpoint_resume_equals_an_uninterrupted_run(tmp_path):
    tasks = make_tasks(3)
    kw = dict(hidden=[8, 6], run_config={"what": "packnet"})
    full = stream.run_stream("packnet", tasks, CFG, checkpoint_dir=str(tmp_path / "a"), **kw)
    with pytest.raises(RuntimeError, match="simulated"):
        stream.run_stream("packnet", tasks, CFG, checkpoint_dir=str(tmp_path / "b"),
                          callbacks=[crash_after(1)], **kw)  # fmt: skip
    resumed = stream.run_stream("packnet", tasks, CFG, checkpoint_dir=str(tmp_path / "b"),
                                resume=True, **kw)  # fmt: skip
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["params_per_task"] == full["params_per_task"]
    # load_task gives a plain network holding only task 0's weights
    net, name = stream.load_task(str(tmp_path / "b"), "t0")
    acc, _ = stream.evaluate_task(net, name, tasks[0].x_test, tasks[0].y_test)
    assert acc == pytest.approx(full["accuracy_matrix"][2][0])
    full_net, state, _ = stream.load_task(str(tmp_path / "b"), "t0", with_state=True)
    x = tasks[0].x_test
    np.testing.assert_array_equal(dj.apply(net, x, "t0"), packnet_predict(full_net, state, x, "t0"))


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 1000), n=st.integers(2, 3), p=st.sampled_from([0.5, 0.75]))
def test_earlier_outputs_stay_bit_identical_after_any_later_task(seed, n, p):
    cfg = BaselineConfig(steps=5, batch_size=8, packnet_prune=p, packnet_retrain_steps=3)
    tasks = make_tasks(n, seed=seed)
    history = learn_all(tasks, cfg, hidden=(4, 3), seed=seed)
    x = tasks[0].x_test
    for i, (net_i, state_i, _) in enumerate(history):
        first = np.asarray(packnet_predict(net_i, state_i, x, tasks[i].name))
        for net_k, state_k, _ in history[i + 1 :]:
            np.testing.assert_array_equal(packnet_predict(net_k, state_k, x, tasks[i].name), first)
