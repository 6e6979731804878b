"""experiments.den: results.json, plots, per-task checkpoints, --resume after a crash."""

import json
import os

import chex
import jax
import numpy as np
import optax
import pytest

import den_jax as dj
from den_jax import stream
from den_jax.network_io import abstract_params, load_network, save_network
from experiments import den as runner

TINY = """
den:
  steps_task1: 30
  steps_head: 5
  steps_selective: 30
  steps_expand: 30
  steps_split: 30
  batch_size: 16
  new_nodes_k: 3
baselines:
  steps: 30
  batch_size: 16
  fisher_samples: 32
"""


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 12), dtype=np.uint8)
    y = (x[:, 0] > 128).astype(np.int64) + 2 * (x[:, 1] > 128)
    xt = rng.integers(0, 256, size=(40, 12), dtype=np.uint8)
    yt = (xt[:, 0] > 128).astype(np.int64) + 2 * (xt[:, 1] > 128)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=x, y_train=y, x_test=xt, y_test=yt)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return {"npz": str(npz), "cfg": str(cfg), "tmp": tmp_path}


def _argv(s, out, method, tasks="permute:3", *extra):
    return [
        "--dataset", "npz:" + s["npz"], "--tasks", tasks, "--method", method,
        "--config", s["cfg"], "--out", str(out), "--hidden", "8,6", *extra,
    ]  # fmt: skip


def _results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_crash_then_resume_matches_uninterrupted_run(setup, monkeypatch):
    full, crashed = setup["tmp"] / "full", setup["tmp"] / "crashed"
    assert runner.main(_argv(setup, full, "stl,ewc", "permute:3", "--no-plots")) == 0
    calls = {"n": 0}
    real = stream.evaluate_task

    def flaky(*args, **kwargs):  # dies while evaluating task 2 of the first method
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "evaluate_task", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.main(_argv(setup, crashed, "stl,ewc", "permute:3", "--no-plots"))
    monkeypatch.setattr(stream, "evaluate_task", real)
    from den_jax import checkpoint

    assert checkpoint.completed_steps(str(crashed / "checkpoints" / "stl")) == [0, 1]
    # Without --resume the run refuses to overwrite.
    assert runner.main(_argv(setup, crashed, "stl,ewc", "permute:3", "--no-plots")) == 2
    assert runner.main(_argv(setup, crashed, "stl,ewc", "permute:3", "--resume")) == 0
    a, b = _results(full), _results(crashed)
    for m in ("stl", "ewc"):
        np.testing.assert_allclose(
            np.array(a[m]["accuracy_matrix"], float), np.array(b[m]["accuracy_matrix"], float)
        )
        assert a[m]["params"] == b[m]["params"]
    for png in ("accuracy_matrix.png", "task_accuracy.png", "network_size.png"):
        assert os.path.getsize(crashed / png) > 1000
    # A resume with a different config is refused, naming the key.
    cfg2 = setup["tmp"] / "other.yaml"
    cfg2.write_text(
        TINY.replace(
            "steps: 30\n  batch_size: 16\n  fisher", "steps: 31\n  batch_size: 16\n  fisher"
        )
    )
    argv = _argv(setup, crashed, "ewc", "permute:3", "--resume")
    argv[argv.index("--config") + 1] = str(cfg2)
    with pytest.raises(ValueError, match="another run.*baseline_config"):
        runner.run(runner.parse_args(argv))


def test_results_and_load_any_task_after_growth(setup):
    out = setup["tmp"] / "den"
    assert runner.main(_argv(setup, out, "den,finetune", "classes:0,1/2,3", "--no-plots")) == 0
    res = _results(out)
    assert res["dataset"].startswith("npz:") and res["tasks"] == ["classes0", "classes1"]
    for m in ("den", "finetune"):
        r = res[m]
        for key in ("accuracy_matrix", "avg_accuracy", "forgetting", "bwt", "auroc", "params"):
            assert key in r
        assert set(r["params_per_task"]) == {"classes0", "classes1"}
        assert r["accuracy_matrix"][0][1] is None and 0 <= r["avg_accuracy"] <= 1
    assert res["den"]["units"][0] >= 8  # DEN may grow
    # Load task 0's model from the final checkpoint and from its own step; both reproduce
    # the recorded accuracies.
    from den_jax.data.tasks import make_stream

    tasks = make_stream("npz:" + setup["npz"], "classes:0,1/2,3")
    x, y = tasks.test_data(0)
    for step, row in ((None, 1), (0, 0)):
        net, name = stream.load_task(str(out / "checkpoints" / "den"), 0, step=step)
        acc, _ = stream.evaluate_task(net, name, x, y)
        assert acc == pytest.approx(res["den"]["accuracy_matrix"][row][0])
    net, name = stream.load_task(str(out / "checkpoints" / "den"), "classes1")
    assert name == "classes1" and net.task_names == ("classes0", "classes1")
    with pytest.raises(ValueError, match="unknown task"):
        stream.load_task(str(out / "checkpoints" / "den"), "nope")


def test_eval_split_valid_measures_validation_rows(setup):
    out = setup["tmp"] / "valid"
    argv = _argv(setup, out, "finetune", "permute:2", "--no-plots", "--eval-split", "valid")
    assert runner.main(argv) == 0
    res = _results(out)
    assert res["eval_split"] == "valid"
    from den_jax.data.tasks import make_stream

    tasks = make_stream("npz:" + setup["npz"], "permute:2")
    for j in range(2):
        task = tasks[j]
        net, name = stream.load_task(str(out / "checkpoints" / "finetune"), j)
        valid, _ = stream.evaluate_task(net, name, task.x_valid, task.y_valid)
        assert res["finetune"]["accuracy_matrix"][1][j] == pytest.approx(valid)
        assert len(task.y_valid) == 12  # 10% of the 120 training rows, not the 40 test rows
    # Resuming with the other split is refused: the matrix would mix splits.
    argv = _argv(setup, out, "finetune", "permute:2", "--resume")
    with pytest.raises(ValueError, match="eval_split"):
        runner.run(runner.parse_args(argv))


def test_checkpoint_round_trip_grown_network_with_typed_opt_state(tmp_path):
    key = jax.random.key(0)
    net = dj.init_network(key, [5, 4], shared_input_dim=3)
    net = dj.add_task(net, key, "a", input_dim=3, output_dim=2)
    tx = optax.adam(1e-2)
    state = tx.init(net.params)
    grads = jax.tree.map(lambda p: p * 0 + 0.1, net.params)
    _, state = tx.update(grads, state, net.params)
    grown = dj.add_units_all(net, jax.random.fold_in(key, 1), 2, outgoing="init")
    state = dj.grow_opt_state(state, net, grown)  # Adam moments padded by unit id
    _, state = tx.update(jax.tree.map(lambda p: p * 0 + 0.3, grown.params), state, grown.params)
    save_network(str(tmp_path), 1, grown, extra_arrays=state, extra_meta={"note": "x"})
    loaded, opt, meta = load_network(
        str(tmp_path), 1, extra_abstract=lambda m: jax.eval_shape(tx.init, abstract_params(m))
    )
    assert loaded.meta == grown.meta and loaded.widths == (7, 6)
    assert int(opt[0].count) == 2
    chex.assert_trees_all_equal(loaded.params, grown.params)
    assert type(opt[0]).__name__ == "ScaleByAdamState"
    chex.assert_trees_all_close(opt, state)
    assert meta["extra"]["note"] == "x" and meta["index_maps"]["a"]["widths"] == [7, 6]


@pytest.mark.parametrize(
    "change, message",
    [
        (("--method", "sgd"), "bad --method 'sgd'"),
        (("--method", "den,den"), "bad --method"),
        (("--dataset", "cifar"), "unknown dataset 'cifar'"),
        (("--tasks", "permute:x"), "permute:N"),
        (("--hidden", "8,a"), "bad --hidden"),
        (("--config", "/nonexistent.yaml"), "cannot be read"),
    ],
)
def test_bad_command_lines_rejected(setup, capsys, change, message):
    argv = _argv(setup, setup["tmp"] / "bad", "finetune")
    argv[argv.index(change[0]) + 1] = change[1]
    assert runner.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_config_and_data_dir_rejected(setup, capsys):
    bad = setup["tmp"] / "bad.yaml"
    bad.write_text("baselines:\n  stepz: 3\n")
    argv = _argv(setup, setup["tmp"] / "o", "finetune")
    argv[argv.index("--config") + 1] = str(bad)
    assert runner.main(argv) == 2
    assert "stepz" in capsys.readouterr().err
    bad.write_text("den:\n  l1_lambda: -1\nbaselines: {}\n")
    assert runner.main(argv) == 2
    assert "l1_lambda" in capsys.readouterr().err
    bad.write_text("den: {}\nextra: 1\n")
    assert runner.main(argv) == 2
    assert "unknown section" in capsys.readouterr().err
    miss = ["--dataset", "permuted_mnist", "--data-dir", str(setup["tmp"] / "nope"), "--out",
            str(setup["tmp"] / "o2")]  # fmt: skip
    assert runner.main(miss) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_one_run_per_output_folder(setup, capsys, tmp_path):
    out = setup["tmp"] / "one"
    assert runner.main(_argv(setup, out, "finetune", "permute:2", "--no-plots")) == 0
    # Another dataset (same path, other contents) into the same folder is refused.
    other = np.load(setup["npz"])
    np.savez(setup["npz"], **{k: (v[::-1] if k == "x_train" else v) for k, v in other.items()})
    for extra in ((), ("--resume",)):
        assert runner.main(_argv(setup, out, "finetune", "permute:2", "--no-plots", *extra)) == 2
        assert "data_sha256" in capsys.readouterr().err
    # A truncated results.json is rebuilt from the checkpoints on --resume.
    np.savez(setup["npz"], **other)
    (out / "results.json").write_text('{"methods": {')
    assert runner.main(_argv(setup, out, "finetune", "permute:2", "--no-plots", "--resume")) == 0
    assert _results(out)["finetune"]["accuracy_matrix"][1][1] is not None


def test_seed_from_the_config_file_takes_effect(setup):
    cfg1 = setup["tmp"] / "seed1.yaml"
    cfg1.write_text(TINY.replace("den:\n", "den:\n  seed: 1\n"))
    outs = {}
    for name, extra in (("cfg1", ("--config", str(cfg1))), ("cli1", ("--seed", "1")),
                        ("cli0", ("--seed", "0"))):  # fmt: skip
        argv = _argv(setup, setup["tmp"] / name, "finetune", "permute:2", "--no-plots", *extra)
        assert runner.main(argv) == 0  # a second --config replaces the first
        outs[name] = _results(setup["tmp"] / name)
    assert outs["cfg1"]["den_config"]["seed"] == 1 and outs["cli1"]["seed"] == 1
    loss = {
        k: v["methods"]["finetune"]["tasks_report"][0]["summary"]["loss"] for k, v in outs.items()
    }
    assert loss["cfg1"] == loss["cli1"] != loss["cli0"]
