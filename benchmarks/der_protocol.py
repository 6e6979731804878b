"""Wall-clock of whole DER protocols: ``python -m experiments.cifar100_der`` presets end to end.

Each preset (default ``seed``: 4 steps x 25 classes, and ``b0_10``: 10 x 10) runs as its
own subprocess, so the figure includes everything a user waits for: start-up, XLA
compilation of every step shape, training, herding, weight alignment, evaluation and
checkpointing. The per-step seconds come from the run's ``results.json``.

Data: without ``--data-dir`` a synthetic CIFAR-100 in the official python-pickle format
(``cifar-100-python/{train,test}``, 32x32x3 uint8, class colours + pixel noise) is written
once to ``--fake-dir`` with 500 training and 100 test images per class, as CIFAR-100 has,
and the run uses ``--dataset cifar100`` on it (the real loader, CIFAR-100 normalisation).
``--train-per-class`` / ``--test-per-class`` subsample it through the experiment's own
flags. Accuracies on this data mean nothing; the figures are for speed only. With
``--data-dir`` pointing at the real ``cifar-100-python.tar.gz`` the same runs are real.

Examples::

    # CPU smoke: 1 epoch per step, width 4, 20/10 images per class
    python -m benchmarks.der_protocol --presets seed --epochs 1 --base-width 4 \\
        --train-per-class 20 --test-per-class 10 --out benchmarks/results/der_protocol_cpu.json
    # GPU, full PyCIL schedules (long; see docs/benchmarks.md)
    python -m benchmarks.der_protocol --presets seed,b0_10
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from benchmarks import _common

NOTE = (
    "Synthetic CIFAR-shaped uint8 data in the CIFAR-100 pickle format (real CIFAR-100 is not "
    "available here): wall-clock figures are for speed only; accuracies are meaningless."
)
EXPERIMENT = "experiments.cifar100_der"
PASS_THROUGH = ("compute_dtype", "epoch_loop")  # optional CLI flags of newer versions
FAKE_MARKER = "FAKE_CIFAR100.json"


def write_fake_cifar100(
    folder: str, train_per_class: int = 500, test_per_class: int = 100, seed: int = 0
) -> str:
    """Writes a synthetic CIFAR-100 in the official pickle layout; returns ``folder``.

    ``folder/cifar-100-python/{train,test}`` hold ``{b"data": uint8 [N, 3072] (CHW
    flattened), b"fine_labels": [...]}``; each class is a flat random colour plus
    Gaussian pixel noise (sigma 40), so a network can learn it. Reused when the marker
    file says it was written with the same sizes and seed.
    """
    spec = {"train_per_class": train_per_class, "test_per_class": test_per_class, "seed": seed}
    marker = os.path.join(folder, FAKE_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == spec:
                return folder
    sub = os.path.join(folder, "cifar-100-python")
    os.makedirs(sub, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.integers(30, 226, (100, 3, 1, 1)).astype(np.float32)
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per)
        rng.shuffle(labels)
        data = np.empty((len(labels), 3, 32, 32), np.uint8)
        for i in range(0, len(labels), 5000):  # chunks: bounded float32 memory
            y = labels[i : i + 5000]
            x = templates[y] + rng.normal(0, 40, (len(y), 3, 32, 32)).astype(np.float32)
            data[i : i + 5000] = np.clip(x, 0, 255).astype(np.uint8)
        blob = {b"data": data.reshape(len(labels), -1), b"fine_labels": labels.tolist()}
        with open(os.path.join(sub, split), "wb") as f:
            pickle.dump(blob, f, protocol=4)
    with open(marker, "w") as f:
        json.dump(spec, f)
    return folder


def supported_flags() -> set[str]:
    """Long options of ``experiments.cifar100_der`` (from its ``--help``)."""
    out = subprocess.run(
        [sys.executable, "-m", EXPERIMENT, "--help"], capture_output=True, text=True, check=False
    ).stdout
    return {tok.split("=")[0].rstrip(",") for tok in out.split() if tok.startswith("--")}


def scaled_schedule(preset: dict, scale: float) -> list[str]:
    """CLI flags that scale a preset's epochs and milestones by ``scale`` (at least 1 epoch)."""
    args: list[str] = []
    for part in ("first", "later"):
        epochs = max(1, round(preset[f"{part}_epochs"] * scale))
        ms = sorted({round(m * scale) for m in preset[f"{part}_milestones"]})
        ms = [m for m in ms if 0 < m < epochs]
        args += [f"--{part}-epochs", str(epochs), f"--{part}-milestones", *map(str, ms)]
    return args


def pool_sizes(cfg: dict, train_per_class: int) -> list[int]:
    """Training images per epoch of each step: new classes + herding memory (DER)."""
    from den_jax.data import splits
    from den_jax.der import memory

    sizes = splits.step_sizes(cfg["num_classes"], cfg["init_classes"], cfg["increment"])
    bounds = splits.boundaries(sizes)
    out = []
    for t, n in enumerate(sizes):
        mem = 0
        if t > 0 and cfg["method"] == "der":
            quota = memory.per_class_quota(cfg["memory"], bounds[t - 1], cfg["memory_per_class"])
            mem = bounds[t - 1] * min(quota, train_per_class)
        out.append(n * train_per_class + mem)
    return out


def run_preset(
    preset: str,
    *,
    data_dir: str,
    run_dir: str,
    schedule_args: list[str],
    extra: list[str],
    timeout_s: float | None,
) -> dict:
    """Runs one preset as a subprocess; returns wall-clock, per-step seconds and outputs."""
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # the experiment refuses a folder holding checkpoints
    cmd = [
        sys.executable,
        "-m",
        EXPERIMENT,
        "--preset",
        preset,
        "--dataset",
        "cifar100",
        "--data-dir",
        data_dir,
        "--out",
        run_dir,
        "--no-plots",
        *schedule_args,
        *extra,
    ]
    rec: dict = {"preset": preset, "command": shlex.join(["python", *cmd[1:]])}
    t0 = time.perf_counter()
    env = dict(os.environ, TQDM_DISABLE="1")  # keep the epoch summaries, drop progress bars
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        rec["returncode"] = proc.returncode
        log = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rec["returncode"] = None
        rec["timed_out_after_s"] = timeout_s
        log = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(
            errors="replace"
        )
    rec["wall_clock_s"] = time.perf_counter() - t0
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write(log)
    rec["log"] = os.path.join(run_dir, "log.txt")
    rec["log_tail"] = log[-4000:]
    res_path = os.path.join(run_dir, "results.json")
    if os.path.exists(res_path):
        with open(res_path) as f:
            res = json.load(f)
        seconds = res.get("seconds", [])
        rec.update(
            steps_done=len(seconds),
            steps_total=len(res.get("steps", [])),
            step_seconds=seconds,
            sum_step_seconds=sum(seconds),
            startup_and_other_s=rec["wall_clock_s"] - sum(seconds),
            top1_curve=res.get("top1_curve"),
            avg_incremental_accuracy=res.get("avg_incremental_accuracy"),
            params_last=(res.get("params") or [None])[-1],
            devices=res.get("devices"),
            config=res.get("config"),
        )
    return rec


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--presets", default="seed,b0_10")
    p.add_argument("--data-dir", help="real CIFAR-100 (default: synthetic, see --fake-dir)")
    p.add_argument(
        "--fake-dir",
        default=os.path.join(tempfile.gettempdir(), "der_fake_cifar100"),
        help="where the synthetic CIFAR-100 is written (500/100 images per class)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="epochs of every step (milestones dropped)")
    g.add_argument("--epochs-scale", type=float, help="scale the preset's epochs and milestones")
    p.add_argument("--base-width", type=int, help="ResNet-32 base width (preset: 16)")
    p.add_argument("--batch-size", type=int, help="(preset: 128)")
    p.add_argument("--train-per-class", type=int, help="subsample (preset: all 500)")
    p.add_argument("--test-per-class", type=int, help="subsample (preset: all 100)")
    p.add_argument("--compute-dtype", choices=("float32", "bfloat16"))
    p.add_argument("--epoch-loop", choices=("scan", "step"))
    p.add_argument("--extra", default="", help="more flags for the experiment (one string)")
    p.add_argument("--runs-dir", default=os.path.join(tempfile.gettempdir(), "der_protocol_runs"))
    p.add_argument("--timeout-s", type=float, help="per preset; completed steps are kept")
    p.add_argument("--out", help="default benchmarks/results/der_protocol_<devicekind>.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    from den_jax.der.config import PRESETS  # here: after argparse, so --help is fast

    prov = _common.provenance(
        "benchmarks.der_protocol",
        ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "numpy"],
        argv,
    )
    dev = _common.jax_device_info_subprocess()  # the parent must not claim GPU memory
    out = a.out or os.path.join(
        _common.RESULTS_DIR, f"der_protocol_{_common.device_slug(dev['device_kind'])}.json"
    )
    presets = _common.parse_str_list(a.presets)
    unknown = [x for x in presets if x not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown presets {unknown}; expected some of {sorted(PRESETS)}")
    data_dir = a.data_dir
    if data_dir is None:
        t0 = time.perf_counter()
        data_dir = write_fake_cifar100(a.fake_dir)
        print(f"synthetic CIFAR-100 in {data_dir} ({time.perf_counter() - t0:.1f} s)")
    flags = supported_flags()
    extra: list[str] = []
    skipped: dict[str, str] = {}
    for k in ("base_width", "batch_size", "train_per_class", "test_per_class", *PASS_THROUGH):
        v = getattr(a, k)
        if v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if flag in flags:
            extra += [flag, str(v)]
        else:
            skipped[flag] = f"{EXPERIMENT} has no {flag} at this commit; not passed"
    extra += shlex.split(a.extra)
    result: dict = {
        **prov,
        "note": NOTE
        + (
            " CPU run: the host's 2 cores are shared with other jobs; wall-clock is indicative."
            if dev["platform"] == "cpu"
            else ""
        ),
        "device": dev,
        "data": (
            {"kind": "real CIFAR-100", "dir": a.data_dir}
            if a.data_dir
            else {"kind": "synthetic CIFAR-100 pickle", "dir": data_dir, "per_class": [500, 100]}
        ),
        "settings": vars(a),
        "flags_not_supported": skipped,
        "runs": [],
    }
    for preset in presets:
        cfg = PRESETS[preset].to_dict()
        if a.epochs is not None:
            sched = ["--epochs", str(a.epochs)]
        elif a.epochs_scale is not None:
            sched = scaled_schedule(cfg, a.epochs_scale)
        else:
            sched = []
        print(f"running {preset} ...", flush=True)
        rec = run_preset(
            preset,
            data_dir=data_dir,
            run_dir=os.path.join(a.runs_dir, preset),
            schedule_args=sched,
            extra=extra,
            timeout_s=a.timeout_s,
        )
        if rec.get("config"):
            per_class = a.train_per_class or 500
            pools = pool_sizes(rec["config"], per_class)
            epochs = [rec["config"]["first_epochs"]] + [rec["config"]["later_epochs"]] * (
                len(pools) - 1
            )
            rec["train_images_per_step"] = [p * e for p, e in zip(pools, epochs)]
            rec["train_images_per_s_incl_eval_and_compile"] = [
                n / s for n, s in zip(rec["train_images_per_step"], rec["step_seconds"])
            ]
        result["runs"].append(rec)
        _common.write_json(out, result)
        print(
            f"{preset}: rc {rec['returncode']}, wall-clock {rec['wall_clock_s']:.1f} s, "
            f"steps {rec.get('step_seconds')}",
            flush=True,
        )
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    print(f"wrote {_common.write_json(out, result)}")


if __name__ == "__main__":
    main()
