"""Real faults injected into a DER smoke run (subprocess); resume must equal an uninterrupted run.

One uninterrupted reference run (module fixture, the smoke preset cut to 4 classes, 2 steps of
1 epoch) is shared by both cases:

* flipped bytes in the newest step's largest array file, then ``--resume``: the step is named
  on stderr, moved aside, redone, and the final curves equal the reference;
* SIGKILL at a moment drawn from a seeded RNG during step 1 (of a run resumed from the
  reference's step 0), then ``--resume``: the final curves equal the reference.

The fault table is in docs/reliability.md.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from den_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "smoke", "--num-classes", "4", "--epochs", "1", "--no-plots"]
COMPARED = ("class_order", "num_seen", "top1_curve", "top5_curve", "acc_matrix", "grouped",
            "forgetting", "avg_incremental_accuracy")  # fmt: skip
TIMEOUT_S = 600


def _cmd(out, *extra):
    return [sys.executable, "-m", "experiments.cifar100_der", *TINY, "--out", out, *extra]


def _env(cached=True):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not cached:  # a run killed at a timed moment compiles as the reference run did
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _run(out, *extra):
    return subprocess.run(
        _cmd(out, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def _results(out):
    res = checkpoint.read_json(os.path.join(out, "results.json"))
    return {k: res[k] for k in COMPARED}


def _largest_array_file(d, step):
    files = []
    for root, _, names in os.walk(os.path.join(d, str(step), "arrays")):
        files += [os.path.join(root, n) for n in names]
    return max(files, key=os.path.getsize)


def _flip(path, n=16):
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 2, min(len(data) // 2 + n, len(data))):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("der") / "clean")
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint.verified_steps(os.path.join(out, "checkpoints")) == [0, 1]
    return out


def test_der_flipped_bytes_in_newest_step_redone_on_resume(reference, tmp_path):
    hurt = str(tmp_path / "hurt")
    shutil.copytree(reference, hurt)
    steps = os.path.join(hurt, "checkpoints")
    victim = _largest_array_file(steps, 1)
    _flip(victim)
    proc = _run(hurt, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 1" in proc.stderr and "corrupt" in proc.stderr, proc.stderr[-3000:]
    assert os.path.basename(victim) in proc.stderr  # the damaged file is named
    assert "resumed after step 0" in proc.stdout + proc.stderr
    assert len(os.listdir(steps + ".unusable")) == 1  # the damaged step kept aside
    assert checkpoint.verified_steps(steps) == [0, 1]
    assert _results(hurt) == _results(reference)


def test_der_sigkill_at_a_seeded_moment_then_resume_equals_uninterrupted(reference, tmp_path):
    # The reference folder as it was when step 0 had completed: step 1 and results.json gone.
    out = str(tmp_path / "killed")
    shutil.copytree(reference, out)
    steps = os.path.join(out, "checkpoints")
    shutil.rmtree(os.path.join(steps, "1"))
    os.remove(os.path.join(out, "results.json"))
    assert checkpoint.completed_steps(steps) == [0]
    delay = float(np.random.default_rng(14).uniform(0.0, 8.0))  # a moment in step 1's training
    log = str(tmp_path / "killed.log")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _cmd(out, "--resume"),
            cwd=ROOT,
            env=_env(cached=False),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while "resumed after step 0" not in open(log).read() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never resumed"
            time.sleep(0.05)
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert checkpoint.completed_steps(steps) == [0]  # killed during step 1
    resumed = _run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after step 0" in resumed.stdout + resumed.stderr
    assert checkpoint.verified_steps(steps) == [0, 1]
    assert _results(out) == _results(reference)
