"""Real faults injected into checkpoints, data and JSON files; each must be caught, not trained on.

Library level: the checkpoint digests (flipped bytes, edited metadata, truncated or
deleted files, a stray step folder, a step killed before its digest record), a failed
save (read-only folder, a file-size limit) that must end the process within seconds, and
bad data (NaN, label 99, label -1) that the stream builders and ``learn_task`` refuse
before any training. The fault table is in docs/reliability.md.
"""

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import den_jax as dj
from den_jax import checkpoint, digests
from den_jax import growth as g
from den_jax.baselines import BaselineConfig, ewc_learn_task, finetune_learn_task
from den_jax.checkpoint import CorruptCheckpointError
from den_jax.data import tasks as T
from den_jax.data.idx import read_idx
from den_jax.den import DENConfig
from den_jax.den import learn_task as den_learn_task
from den_jax.network_io import load_network, save_network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 30


def _net(width=6, seed=0):
    k = jax.random.PRNGKey(seed)
    net = dj.init_network(k, [width], shared_input_dim=5)
    return dj.add_task(net, k, "a", input_dim=5, output_dim=3)


def _two_steps(d):
    """Steps 0 and 1 of a network (step 1 grown); returns both networks."""
    n0 = _net()
    save_network(d, 0, n0, extra_meta={"note": "first"})
    n1 = dj.add_units_all(n0, jax.random.PRNGKey(1), 4)
    save_network(d, 1, n1, extra_meta={"note": "second"})
    return n0, n1


def _largest_array_file(d, step):
    files = []
    for root, _, names in os.walk(os.path.join(d, str(step), "arrays")):
        files += [os.path.join(root, n) for n in names]
    return max(files, key=os.path.getsize)


def _flip(path, n=16, at=None):
    data = bytearray(open(path, "rb").read())
    start = len(data) // 2 if at is None else at
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("nbytes", [16, 1])
def test_flipped_bytes_in_an_array_file_detected_and_older_step_used(tmp_path, caplog, nbytes):
    d = str(tmp_path)
    n0, _ = _two_steps(d)
    victim = _largest_array_file(d, 1)
    _flip(victim, nbytes)
    with pytest.raises(CorruptCheckpointError, match="step 1") as err:
        load_network(d, 1)
    assert os.path.relpath(victim, os.path.join(d, "1")) in str(err.value)
    assert err.value.step == 1
    with caplog.at_level(logging.WARNING):
        assert checkpoint.latest_verified_step(d) == 0
        assert checkpoint.verified_steps(d) == [0]
    assert "step 1" in caplog.text and os.path.basename(victim) in caplog.text
    first, _, _ = load_network(d, 0)
    assert first.meta == n0.meta


def test_restored_values_checked_against_leaf_digests(tmp_path):
    d = str(tmp_path)
    _two_steps(d)
    path = os.path.join(d, "1", digests.DIGESTS)
    rec = json.load(open(path))
    name = next(k for k in rec["leaves"] if "hidden" in k)
    rec["leaves"][name]["sha256"] = "0" * 64  # the record says these values were written
    open(path, "w").write(json.dumps(rec))
    with pytest.raises(CorruptCheckpointError, match=r"step 1.*values differ"):
        load_network(d, 1)


def test_edited_metadata_detected(tmp_path):
    d = str(tmp_path)
    _two_steps(d)
    meta_file = os.path.join(d, "1", "meta", "metadata")
    text = open(meta_file).read()
    assert '"second"' in text
    open(meta_file, "w").write(text.replace('"second"', '"edited"'))
    with pytest.raises(CorruptCheckpointError, match=r"step 1.*meta/metadata"):
        checkpoint.restore_meta(d, 1)
    assert checkpoint.latest_verified_step(d) == 0


def test_edited_metadata_caught_by_value_digest_too(tmp_path):
    d = str(tmp_path)
    _two_steps(d)
    meta_file = os.path.join(d, "1", "meta", "metadata")
    text = open(meta_file).read().replace('"second"', '"edited"')
    open(meta_file, "w").write(text)
    path = os.path.join(d, "1", digests.DIGESTS)
    rec = json.load(open(path))
    rec["files"]["meta/metadata"] = {  # a record rewritten for the edited file
        "sha256": hashlib.sha256(open(meta_file, "rb").read()).hexdigest(),
        "bytes": os.path.getsize(meta_file),
    }
    open(path, "w").write(json.dumps(rec))
    with pytest.raises(CorruptCheckpointError, match="metadata differs"):
        checkpoint.restore_meta(d, 1)


@pytest.mark.parametrize("fault", ["truncate", "delete", "delete_record", "garble_record"])
def test_truncated_or_deleted_files_give_a_clear_error(tmp_path, fault):
    d = str(tmp_path)
    _two_steps(d)
    victim = _largest_array_file(d, 1)
    if fault == "truncate":
        os.truncate(victim, os.path.getsize(victim) // 2)
        match = r"step 1.*bytes, \d+ were written"
    elif fault == "delete":
        os.remove(victim)
        match = r"step 1.*file is missing"
    elif fault == "delete_record":
        os.remove(os.path.join(d, "1", digests.DIGESTS))
        match = r"step 1.*no digest record"
    else:
        open(os.path.join(d, "1", digests.DIGESTS), "w").write('{"format": ')
        match = r"step 1.*not valid JSON"
    with pytest.raises(CorruptCheckpointError, match=match):
        load_network(d, 1)
    assert checkpoint.latest_verified_step(d) == 0


def test_stray_empty_step_folder_ignored_with_a_warning(tmp_path, caplog):
    d = str(tmp_path)
    _two_steps(d)
    os.makedirs(os.path.join(d, "2"))
    with caplog.at_level(logging.WARNING):
        assert checkpoint.completed_steps(d) == [0, 1]
    assert "ignoring checkpoint folder" in caplog.text and os.path.join(d, "2") in caplog.text
    assert checkpoint.latest_verified_step(d) == 1
    with pytest.raises(CorruptCheckpointError, match="step 2.*no digest record"):
        checkpoint.restore_meta(d, 2)
    # the step can be written again; the stray folder is kept aside for inspection
    save_network(d, 2, _net())
    assert checkpoint.verified_steps(d) == [0, 1, 2]
    assert len(os.listdir(d + ".unusable")) == 1


def test_step_killed_before_its_digest_record_is_rewritten(tmp_path):
    d = str(tmp_path)
    _two_steps(d)
    os.remove(os.path.join(d, "1", digests.DIGESTS))  # what a kill after orbax's commit leaves
    assert checkpoint.completed_steps(d) == [0]
    n1 = dj.add_units_all(_net(), jax.random.PRNGKey(2), 1)
    save_network(d, 1, n1)
    loaded, _, _ = load_network(d, 1)
    assert loaded.widths == n1.widths
    with pytest.raises(ValueError, match="immutable"):
        save_network(d, 1, n1)


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    net = _net()
    params = jax.tree.map(lambda a: a, net.params)
    params["hidden"][0]["b"] = params["hidden"][0]["b"].at[2].set(np.nan)
    bad = dataclasses.replace(net, params=params)
    with pytest.raises(
        ValueError, match=r"refusing to checkpoint step 0.*\['hidden'\]\[0\]\['b'\]"
    ):
        save_network(str(tmp_path), 0, bad)
    assert checkpoint.completed_steps(str(tmp_path)) == []


def test_growth_checkpoint_with_flipped_bytes_falls_back(tmp_path, caplog):
    d = str(tmp_path)
    cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    state = g.init_state(cfg, jax.random.PRNGKey(0), 4, 2, (3,))
    g.save_checkpoint(d, state, cfg)
    state = g.train(state, cfg, x, y, 1)
    g.save_checkpoint(d, state, cfg)
    _flip(_largest_array_file(d, 1))
    with pytest.raises(CorruptCheckpointError, match="step 1"):
        g.restore_checkpoint(d, cfg, step=1)
    with caplog.at_level(logging.WARNING):
        restored = g.restore_checkpoint(d, cfg)
    assert restored.epoch == 0 and "trying an older step" in caplog.text


# ----------------------------------------------------------------------------- failed saves


def _save_in_subprocess(directory, prelude="", env_prefix=()):
    code = textwrap.dedent(
        f"""
        import sys
        {prelude}
        import numpy as np
        from den_jax import checkpoint
        checkpoint.save_step({directory!r}, 5, {{"w": np.ones(4096, np.float32)}}, {{"a": 1}})
        """
    )
    return subprocess.run(
        [*env_prefix, sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,  # a hang fails the test (TimeoutExpired)
    )


def _not_writable_prefix(folder):
    """A command prefix under which ``folder`` (mode 0o555) is not writable, or None."""
    if os.geteuid() != 0:
        return ()
    # root ignores permission bits; in a user namespace root's files keep their owner's
    # permission bits and the DAC override is gone.
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(
        ["unshare", "-U", sys.executable, "-c", f"open({folder!r} + '/probe', 'w')"],
        capture_output=True,
    )
    return ("unshare", "-U") if probe.returncode != 0 else None


def test_read_only_folder_fails_fast_with_the_folder_named(tmp_path):
    d = str(tmp_path / "ckpt")
    checkpoint.save_step(d, 0, {"w": np.ones(3, np.float32)}, {})
    os.chmod(d, 0o555)
    try:
        prefix = _not_writable_prefix(d)
        if prefix is None:
            pytest.skip("cannot make a folder read-only for this user")
        proc = _save_in_subprocess(d, env_prefix=prefix)
    finally:
        os.chmod(d, 0o755)
    assert proc.returncode != 0
    assert "OSError" in proc.stderr and f"could not save checkpoint step 5 in {d!r}" in proc.stderr
    assert checkpoint.verified_steps(d) == [0]  # nothing already completed is lost


def test_write_error_mid_save_fails_fast(tmp_path):
    d = str(tmp_path / "ckpt")
    checkpoint.save_step(d, 0, {"w": np.ones(3, np.float32)}, {})
    prelude = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "import den_jax.checkpoint; resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))"
    )
    proc = _save_in_subprocess(d, prelude=prelude)
    assert proc.returncode != 0 and "could not save checkpoint step 5" in proc.stderr
    assert checkpoint.completed_steps(d) == [0] and checkpoint.verified_steps(d) == [0]


# ----------------------------------------------------------------------------- JSON files


def test_truncated_results_json_names_the_file(tmp_path):
    path = str(tmp_path / "results.json")
    checkpoint.write_json_atomic(path, {"accuracy_matrix": [[0.9, None]], "x": list(range(50))})
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"results.json.*not valid JSON.*truncated"):
        checkpoint.read_json(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        checkpoint.read_json(str(tmp_path / "nope.json"))


def test_kill_during_json_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "results.json")
    checkpoint.write_json_atomic(path, {"old": True})
    code = textwrap.dedent(
        f"""
        import os
        from den_jax import jsonio
        os.fsync = lambda fd: os._exit(9)  # the process dies with the new text half-way
        jsonio.write_json_atomic({path!r}, {{"new": list(range(100000))}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=TIMEOUT_S)
    assert proc.returncode == 9
    assert checkpoint.read_json(path) == {"old": True}
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        checkpoint.write_json_atomic(path, {"bad": object()})
    assert checkpoint.read_json(path) == {"old": True}


# ----------------------------------------------------------------------------- bad data


def _npz(tmp_path, **edit):
    rng = np.random.default_rng(0)
    x_tr = rng.normal(size=(80, 6)).astype(np.float32)
    y_tr = np.arange(80) % 4
    x_te = rng.normal(size=(40, 6)).astype(np.float32)
    y_te = np.arange(40) % 4
    arrays = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
    for key, (index, value) in edit.items():
        arrays[key] = arrays[key].astype(type(value)) if isinstance(value, float) else arrays[key]
        arrays[key][index] = value
    path = str(tmp_path / "data.npz")
    np.savez(path, **arrays)
    return "npz:" + path


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"x_train": ((7, 2), np.nan)}, r"x_train.*non-finite value nan at row 7, column 2"),
        ({"x_test": ((3, 0), np.inf)}, r"x_test.*non-finite value inf at row 3, column 0"),
        ({"y_train": (11, 99)}, r"y_train.*class\(es\) 4, 5, 6, 7, 8, \.\.\. never occur.*99.*11"),
        ({"y_train": (5, -1)}, r"y_train: label -1 at index 5"),
        ({"y_test": (9, 7)}, r"y_test: label 7 at index 9 is outside \[0, 4\)"),
    ],
)
def test_bad_data_refused_by_the_stream_builder(tmp_path, edit, message):
    spec = _npz(tmp_path, **edit)
    with pytest.raises(ValueError, match=message) as err:
        T.make_stream(spec, "permute:2")
    assert "data.npz" in str(err.value)


def test_class_missing_from_a_test_split_refused_before_training(tmp_path):
    spec = _npz(tmp_path, y_test=(slice(1, None, 4), 0))  # class 1 never in the test split
    with pytest.raises(ValueError, match=r"task 'classes0'.*1 class\(es\) \[0\]"):
        T.make_stream(spec, "classes:0,1/2,3")


def test_label_99_does_not_make_a_100_class_head(tmp_path):
    s = T.make_stream(_npz(tmp_path), "permute:2")
    assert s.infos[0].num_classes == 4
    with pytest.raises(ValueError, match="99"):
        T.make_stream(_npz(tmp_path, y_train=(0, 99)), "permute:2")


@pytest.mark.parametrize("fault", ["gzip", "npz_member"])
def test_damaged_data_files_named(tmp_path, fault):
    if fault == "gzip":
        path = tmp_path / "train-labels-idx1-ubyte.gz"
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x10" + bytes(16)))
        _flip(str(path), 4, at=12)
        with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz.*expected a gzip"):
            read_idx(str(path))
        path.write_bytes(path.read_bytes()[:15])
        with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz.*cannot decompress"):
            read_idx(str(path))
    else:
        src = str(tmp_path / "d.npz")
        np.savez_compressed(src, x_train=np.zeros((64, 4)), y_train=np.arange(64) % 2,
                            x_test=np.zeros((8, 4)), y_test=np.arange(8) % 2)  # fmt: skip
        raw = bytearray(open(src, "rb").read())
        raw[60:80] = bytes(20)  # inside the first member's compressed data
        open(src, "wb").write(bytes(raw))
        with pytest.raises(ValueError, match=r"d.npz.*a member is damaged"):
            T.make_stream("npz:" + src, "permute:2")
        open(src, "wb").write(bytes(raw[: len(raw) // 2]))
        with pytest.raises(ValueError, match=r"cannot read npz file .*d.npz"):
            T.make_stream("npz:" + src, "permute:2")


def _task_data(bad=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (np.arange(40) % 3).astype(np.int32)
    if bad == "nan":
        x[13, 4] = np.nan
    elif bad == "99":
        y[21] = 99
    elif bad == "-1":
        y[8] = -1
    elif bad == "float":
        y = y.astype(np.float32) + 0.5
    return x, y


TINY_DEN = DENConfig(steps_task1=5, steps_head=2, steps_selective=2, steps_expand=2,
                     steps_split=2, batch_size=8, new_nodes_k=2)  # fmt: skip
TINY_BASE = BaselineConfig(steps=5, batch_size=8, fisher_samples=8)


@pytest.mark.parametrize(
    "bad, split, message",
    [
        ("nan", "train", r"train.*task 'a'.*x.*non-finite value nan at row 13, column 4"),
        ("99", "train", r"train.*task 'a'.*y.*label 99 at index 21 is outside \[0, 3\)"),
        ("-1", "valid", r"valid.*task 'a'.*y.*label -1 at index 8"),
        ("float", "train", r"train.*task 'a'.*y.*integer dtype"),
    ],
)
@pytest.mark.parametrize("learner", ["den", "finetune", "ewc"])
def test_learn_task_refuses_bad_data_before_training(learner, bad, split, message):
    good = _task_data()
    data = {"train": good, "valid": good, split: _task_data(bad)}
    fn, cfg = {
        "den": (den_learn_task, TINY_DEN),
        "finetune": (finetune_learn_task, TINY_BASE),
        "ewc": (ewc_learn_task, TINY_BASE),
    }[learner]
    with pytest.raises(ValueError, match=message):
        fn(_net(), jax.random.PRNGKey(0), "a", data["train"], data["valid"], cfg)


# ----------------------------------------------------------------------------- growth flags


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("growth_digits", ["--seeds", "0"], "--seeds: must be >= 1, got 0"),
        ("growth_digits", ["--epochs", "0"], "--epochs: must be >= 1, got 0"),
        ("growth_digits", ["--epochs", "two"], "--epochs: expected an integer, got 'two'"),
        ("growth_diabetes", ["--epochs", "1"], "--epochs: must be >= 2, got 1"),
        ("growth_continual", ["--chunks", "0"], "--chunks: must be >= 1, got 0"),
        ("growth_continual", ["--epochs", "-3"], "--epochs: must be >= 1, got -3"),
    ],
)
def test_growth_examples_refuse_bad_flags(capsys, module, argv, message):
    mod = __import__(f"experiments.{module}", fromlist=["parse_args"])
    with pytest.raises(SystemExit) as exit_:
        mod.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_growth_quick_never_overrides_explicit_flags():
    from experiments import growth_continual, growth_diabetes, growth_digits

    a = growth_digits.parse_args(["--quick", "--epochs", "7"])
    assert (a.seeds, a.epochs) == (1, 7)
    a = growth_digits.parse_args(["--quick", "--seeds", "2"])
    assert (a.seeds, a.epochs) == (2, 6)
    assert growth_digits.parse_args([]).epochs == 80
    assert growth_diabetes.parse_args(["--quick", "--epochs", "12"]).epochs == 12
    assert growth_diabetes.parse_args(["--quick"]).epochs == 8
    a = growth_continual.parse_args(["--quick", "--chunks", "4"])
    assert (a.chunks, a.epochs) == (4, 2)


def test_growth_runtime_error_is_one_line_exit_2(capsys):
    from experiments import growth_cli, growth_continual

    assert growth_cli.run_cli(growth_continual.main, ["--chunks", "500", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: --chunks 500 is too many")
    with pytest.raises(ValueError, match="--chunks 500 is too many"):  # --debug: the traceback
        growth_cli.run_cli(growth_continual.main, ["--chunks", "500", "--epochs", "1", "--debug"])


# ----------------------------------------------------------------------------- a whole run

TINY_CLI = {"baselines": {"steps": 20, "batch_size": 16}, "den": {"batch_size": 16}}


def _cli_cmd(out, config, *extra):
    return [sys.executable, "-m", "experiments.den", "--dataset", "sklearn_hetero", "--tasks",
            "2", "--method", "finetune", "--hidden", "6", "--no-plots", "--config", config,
            "--out", out, *extra]  # fmt: skip


def _uncached_env():
    """The environment without a persistent compilation cache (one the caller may have set),
    for runs whose timing a test relies on: a cached run would be faster than the
    uninterrupted run it is timed against."""
    return {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}


def _cli(out, config, *extra):
    cmd = _cli_cmd(out, config, *extra)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


NEEDS_RUNNER = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, "den_jax", "stream.py")), reason="needs the runner"
)


@pytest.fixture(scope="module")
def den_clean(tmp_path_factory):
    """One uninterrupted tiny run shared by the whole-run tests.

    Returns ``(folder, config, t0, seconds)``: ``t0`` is when task 0's checkpoint was
    complete (its digest record written), ``seconds`` the whole run, both from the start.
    """
    d = tmp_path_factory.mktemp("den_run")
    config = str(d / "tiny.json")
    checkpoint.write_json_atomic(config, TINY_CLI)
    clean = str(d / "clean")
    record = os.path.join(clean, "checkpoints", "finetune", "0", digests.DIGESTS)
    start, t0 = time.monotonic(), None
    proc = subprocess.Popen(_cli_cmd(clean, config), cwd=ROOT, env=_uncached_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    with proc:
        while proc.poll() is None:
            if t0 is None and os.path.exists(record):
                t0 = time.monotonic() - start
            time.sleep(0.02)
        seconds = time.monotonic() - start
        err = proc.stderr.read()
    assert proc.returncode == 0 and t0 is not None, err
    return clean, config, t0, seconds


def _den_results(out):
    res = checkpoint.read_json(os.path.join(out, "results.json"))["finetune"]
    return res["accuracy_matrix"], res["auroc_matrix"]


@NEEDS_RUNNER
def test_run_resumes_from_the_last_good_step_and_equals_an_uninterrupted_run(den_clean, tmp_path):
    clean, config, _, _ = den_clean
    hurt = str(tmp_path / "hurt")
    shutil.copytree(clean, hurt)
    steps = os.path.join(hurt, "checkpoints", "finetune")
    _flip(_largest_array_file(steps, 1))
    proc = _cli(hurt, config, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint step 1" in proc.stderr and "corrupt" in proc.stderr  # named, then redone
    assert _den_results(hurt) == _den_results(clean)
    assert checkpoint.verified_steps(steps) == [0, 1]


@NEEDS_RUNNER
def test_sigkill_at_three_seeded_moments_then_resume_equals_an_uninterrupted_run(
    den_clean, tmp_path
):
    """Killed (SIGKILL) three times at moments drawn from a seed; each restart is a
    ``--resume`` of the same folder, and the last one finishes the run.

    The first moment is a seeded delay after task 0's checkpoint is complete (a fraction
    of what task 1 took in the uninterrupted run), so a resume from task 0 always happens;
    the other two fall anywhere in the first 30-70% of a run (start-up, restore, training,
    saving)."""
    clean, config, t0, seconds = den_clean
    out = str(tmp_path / "killed")
    steps = os.path.join(out, "checkpoints", "finetune")
    rng = np.random.default_rng(14)
    moments = [rng.uniform(0.0, 0.4) * (seconds - t0), *(rng.uniform(0.3, 0.7, size=2) * seconds)]
    after = []
    for i, moment in enumerate(moments):
        cmd = [*_cli_cmd(out, config), *(["--resume"] if i else [])]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_uncached_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        if i == 0:  # the clock starts when task 0's checkpoint is complete
            record = os.path.join(steps, "0", digests.DIGESTS)
            while not os.path.exists(record) and proc.poll() is None:
                time.sleep(0.02)
        try:
            proc.wait(timeout=moment)  # finished before its moment: nothing to kill
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
        after.append(checkpoint.completed_steps(steps))
    assert after[0] == [0], (moments, t0, seconds, after)  # killed during task 1
    proc = _cli(out, config, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert _den_results(out) == _den_results(clean)
    assert checkpoint.verified_steps(os.path.join(out, "checkpoints", "finetune")) == [0, 1]


# ----------------------------------------------------------------------------- entry points


@pytest.mark.parametrize(
    "argv, message",
    [
        (["experiments.den", "--dataset", "nope", "--out", "{tmp}/o"], "unknown dataset 'nope'"),
        (["experiments.den", "--dataset", "sklearn_hetero", "--config", "{tmp}/no.json", "--out",
          "{tmp}/o"], "no.json"),
        (["experiments.cifar100_der", "--preset", "nope", "--out", "{tmp}/o"],
         "unknown preset 'nope'"),
        (["experiments.growth_digits", "--seeds", "0"], "--seeds: must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_entry_points_one_error_line_exit_2_traceback_only_with_debug(tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    for debug in (False, True):
        proc = subprocess.run(
            [sys.executable, "-m", *argv, *(["--debug"] if debug else [])],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if debug and "growth" in argv[0]:  # a usage error: same line with --debug
            assert proc.returncode == 2 and message in proc.stderr
        elif debug:
            assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr[-2000:]
            assert message in proc.stderr
        else:
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
            assert message in lines[0] and "Traceback" not in proc.stderr
