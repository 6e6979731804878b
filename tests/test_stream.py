"""den_jax.stream: methods over a task stream from a user's own script, checkpoints, resume."""

import glob
import os

import numpy as np
import optax
import pytest

import den_jax as dj
from den_jax import checkpoint, losses, runs, stream
from den_jax.baselines import BaselineConfig
from den_jax.data.tasks import Task
from den_jax.den import DENConfig

TINY_DEN = DENConfig(steps_task1=40, steps_head=5, steps_selective=30, steps_expand=30,
                     steps_split=30, batch_size=16, new_nodes_k=3)  # fmt: skip
TINY_BASE = BaselineConfig(steps=40, batch_size=16, fisher_samples=32)


def make_tasks(n=3, seed=0):
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(n):
        x = rng.normal(size=(96, 6)).astype(np.float32)
        y = ((x[:, t % 6] > 0).astype(np.int32) + 2 * (x[:, (t + 1) % 6] > 0)).astype(np.int32)
        tasks.append(Task(f"t{t}", x[:64], y[:64], x[64:76], y[64:76], x[76:], y[76:], 4))
    return tasks


def test_den_stream_from_a_user_script_with_own_loss_and_optimizer(tmp_path):
    # --- a user's script (under 40 lines) -------------------------------------------
    tasks = make_tasks()
    seen = []
    res = stream.run_stream(
        "den", tasks, TINY_DEN, hidden=[8, 6], seed=3,
        loss=losses.softmax_ce,                          # the user's loss
        optimizer=lambda schedule: optax.adam(schedule),  # schedule -> transformation
        checkpoint_dir=str(tmp_path / "den"),
        callbacks=[seen.append],
    )  # fmt: skip
    net, name = stream.load_task(str(tmp_path / "den"), "t0")
    acc, _ = stream.evaluate_task(net, name, tasks[0].x_test, tasks[0].y_test)
    # ---------------------------------------------------------------------------------
    assert [e.name for e in seen] == ["t0", "t1", "t2"]
    assert np.asarray(res["accuracy_matrix"], float).shape == (3, 3)
    assert res["accuracy_matrix"][0][1] is None
    assert acc == pytest.approx(res["accuracy_matrix"][2][0])
    assert net.task_names == ("t0", "t1", "t2") and res["params"] == dj.count_params(net)
    assert checkpoint.completed_steps(str(tmp_path / "den")) == [0, 1, 2]


def test_baseline_stream_with_a_transformation_and_its_state(tmp_path):
    tasks = make_tasks()
    res = stream.run_stream(
        "ewc", tasks, TINY_BASE, hidden=[8], optimizer=optax.adam(3e-3),
        checkpoint_dir=str(tmp_path / "ewc"),
    )  # fmt: skip
    assert res["avg_accuracy"] > 0.3 and res["tasks_report"][1]["summary"]["phase"] == "ewc"
    other = stream.run_stream("ewc", tasks, TINY_BASE, hidden=[8], optimizer=optax.adam(1e-4))
    assert other["accuracy_matrix"] != res["accuracy_matrix"]  # the optimizer is used


def crash_after(index):
    def cb(end):
        if end.index == index:
            raise RuntimeError("simulated crash")

    return cb


@pytest.mark.parametrize("method", ["ewc", "stl", "den"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, method):
    tasks = make_tasks()
    cfg = TINY_DEN if method == "den" else TINY_BASE
    kw = dict(hidden=[8, 6], run_config={"what": "test"})
    full = stream.run_stream(method, tasks, cfg, checkpoint_dir=str(tmp_path / "a"), **kw)
    with pytest.raises(RuntimeError, match="simulated"):
        stream.run_stream(method, tasks, cfg, checkpoint_dir=str(tmp_path / "b"),
                          callbacks=[crash_after(1)], **kw)  # fmt: skip
    with pytest.raises(ValueError, match="resume"):
        stream.run_stream(method, tasks, cfg, checkpoint_dir=str(tmp_path / "b"), **kw)
    resumed = stream.run_stream(method, tasks, cfg, checkpoint_dir=str(tmp_path / "b"),
                                resume=True, **kw)  # fmt: skip
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["params_after_task"] == full["params_after_task"]
    with pytest.raises(ValueError, match="what"):  # another run_config is refused
        stream.run_stream(method, tasks, cfg, checkpoint_dir=str(tmp_path / "b"), resume=True,
                          hidden=[8, 6], run_config={"what": "else"})  # fmt: skip


def test_resume_falls_back_past_a_corrupted_step(tmp_path):
    tasks = make_tasks()
    kw = dict(hidden=[8], run_config={})
    full = stream.run_stream("ewc", tasks, TINY_BASE, checkpoint_dir=str(tmp_path / "a"), **kw)
    d = str(tmp_path / "b")
    with pytest.raises(RuntimeError):
        stream.run_stream("ewc", tasks, TINY_BASE, checkpoint_dir=d, callbacks=[crash_after(1)],
                          **kw)  # fmt: skip
    files = [f for f in glob.glob(f"{d}/1/**", recursive=True) if os.path.isfile(f)]
    victim = max((f for f in files if "/arrays/" in f), key=os.path.getsize)
    with open(victim, "r+b") as f:  # 16 flipped bytes in the largest array file of step 1
        f.seek(os.path.getsize(victim) // 2)
        chunk = bytearray(f.read(16))
        f.seek(os.path.getsize(victim) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    assert checkpoint.latest_verified_step(d) == 0
    resumed = stream.run_stream("ewc", tasks, TINY_BASE, checkpoint_dir=d, resume=True, **kw)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert os.listdir(d + ".unusable")  # the bad step is kept aside, not reused


def test_load_task_for_separate_networks_and_errors(tmp_path):
    tasks = make_tasks(2)
    stream.run_stream("stl", tasks, TINY_BASE, hidden=[8], checkpoint_dir=str(tmp_path / "s"))
    for j, t in enumerate(tasks):
        for which in (j, t.name):
            net, name = stream.load_task(str(tmp_path / "s"), which)
            assert name == t.name and net.task_names == (t.name,)
    with pytest.raises(ValueError, match="unknown task"):
        stream.load_task(str(tmp_path / "s"), "nope")
    with pytest.raises(ValueError, match="no checkpoints"):
        stream.load_task(str(tmp_path / "empty"), 0)
    with pytest.raises(ValueError, match="unknown method"):
        stream.run_stream("sgd", tasks, TINY_BASE, hidden=[8])


def test_run_folder_holds_one_run(tmp_path, caplog):
    out = str(tmp_path / "run")
    info = {"dataset": "a", "data_sha256": "123", "seed": 0}
    with caplog.at_level("WARNING"):
        assert runs.open_run_folder(out, info, resume=True) == {}
    assert "holds no earlier run" in caplog.text
    checkpoint.write_json_atomic(os.path.join(out, "results.json"), {"methods": {"x": 1}})
    assert runs.open_run_folder(out, info, resume=False)["methods"] == {"x": 1}
    with pytest.raises(ValueError, match="data_sha256: saved '123', now '456'"):
        runs.open_run_folder(out, {**info, "data_sha256": "456"}, resume=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write('{"methods": {"x"')  # truncated
    with caplog.at_level("WARNING"):
        assert runs.open_run_folder(out, info, resume=True) == {}
    assert "results.json" in caplog.text


def test_readme_stream_snippet_runs(tmp_path, monkeypatch):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    block = readme.split("<!-- snippet:stream -->")[1].split("<!-- /snippet -->")[0]
    code = block.split("```python")[1].split("```")[0]
    rng = np.random.default_rng(0)
    arrays = {}
    for name, n in (("x", 64), ("xv", 16), ("xt", 32)):
        xs = [rng.normal(size=(n, 6)).astype(np.float32) for _ in range(3)]
        arrays[name] = xs
        arrays["y" + name[1:]] = [((a[:, i] > 0) + 2 * (a[:, i + 1] > 0)).astype(np.int32)
                                  for i, a in enumerate(xs)]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    namespace = dict(arrays)
    exec(compile(code, "README.md:snippet:stream", "exec"), namespace)
    assert namespace["name"] == "t0" and namespace["res"]["avg_accuracy"] > 0.5
    assert checkpoint.completed_steps("runs/ewc/checkpoints") == [0, 1, 2]
