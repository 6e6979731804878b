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

``--stream mnist5`` instead runs the 5-step MNIST stream (``benchmarks/der_protocol_stream.py``)
through ``experiments.cifar100_der`` and, with ``--torch``, through the eager-PyTorch
reference protocol ``benchmarks.der_torch_protocol`` in the same invocation, and reports
per-step seconds, images/s and the step t / step 1 cost per image against 1 + (t-1)/3.

Examples::

    # CPU smoke: 1 epoch per step, width 4, 20/10 images per class
    python -m benchmarks.der_protocol --presets seed --epochs 1 --base-width 4 \\
        --train-per-class 20 --test-per-class 10 --out benchmarks/results/der_protocol_cpu.json
    # GPU, full PyCIL schedules (long; see docs/benchmarks.md)
    python -m benchmarks.der_protocol --presets seed,b0_10
    # the MNIST stream, ours and the PyTorch reference side by side (many minutes on 2 cores)
    python -m benchmarks.der_protocol --stream mnist5 --torch --data-dir ../shared/data/mnist
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

from benchmarks import _common, der_protocol_stream
from benchmarks.der_protocol_stream import pool_sizes

NOTE = (
    "Synthetic CIFAR-shaped uint8 data in the CIFAR-100 pickle format (real CIFAR-100 is not "
    "available here): wall-clock figures are for speed only; accuracies are meaningless."
)
EXPERIMENT = "experiments.cifar100_der"
PASS_THROUGH = ("compute_dtype", "epoch_loop")  # optional CLI flags of newer versions
FAKE_MARKER = "FAKE_CIFAR100.json"
DEFAULT_MNIST_DIR = os.path.join("..", "shared", "data", "mnist")  # --stream without --data-dir


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


def run_logged(cmd: list[str], run_dir: str, timeout_s: float | None, rec: dict) -> dict:
    """Runs ``cmd``; adds command, return code, wall-clock and the log (``run_dir/log.txt``)."""
    rec = {**rec, "command": shlex.join(["python", *cmd[1:]])}
    rec["load_average_before"] = list(os.getloadavg())
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
    rec["load_average_after"] = list(os.getloadavg())
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write(log)
    rec["log"] = os.path.join(run_dir, "log.txt")
    rec["log_tail"] = log[-4000:]
    return rec


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
    rec = run_logged(cmd, run_dir, timeout_s, {"preset": preset})
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
    p.add_argument(
        "--timeout-s",
        type=float,
        help="per preset (per side with --stream); completed steps are kept",
    )
    p.add_argument(
        "--out",
        help="default benchmarks/results/der_protocol_<devicekind>.json "
        "(--stream: der_protocol_<stream>_<devicekind>.json)",
    )
    s = p.add_argument_group(
        "side-by-side stream (--stream; see benchmarks/der_protocol_stream.py)"
    )
    s.add_argument("--stream", choices=sorted(der_protocol_stream.STREAMS), help="run a stream")
    s.add_argument("--torch", action="store_true", help="also run the PyTorch reference protocol")
    s.add_argument("--dry-run", action="store_true", help="parse and print both commands only")
    s.add_argument("--torch-first", action="store_true", help="run the PyTorch side first")
    s.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's)")
    s.add_argument("--init-classes", type=int, help="(mnist5: 2)")
    s.add_argument("--increment", type=int, help="(mnist5: 2)")
    s.add_argument("--memory", type=int, help="total exemplars (mnist5: 100)")
    s.add_argument("--seed", type=int, help="training and subsampling seed (mnist5: 1993)")
    s.add_argument("--image-size", type=int, help="pad images to this size (mnist5: 32; 28 = none)")
    s.add_argument(
        "--prepared-dir",
        default=os.path.join(tempfile.gettempdir(), "der_protocol_data"),
        help="where the padded idx files are written (once)",
    )
    return p.parse_args(argv)


def _pass_through(a: argparse.Namespace, keys: Sequence[str]) -> tuple[list[str], dict]:
    """Flags of ``keys`` the experiment has at this commit, and those it lacks."""
    flags = supported_flags()
    extra: list[str] = []
    skipped: dict[str, str] = {}
    for k in keys:
        v = getattr(a, k)
        if v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if flag in flags:
            extra += [flag, str(v)]
        else:
            skipped[flag] = f"{EXPERIMENT} has no {flag} at this commit; not passed"
    return extra, skipped


def run_stream(a: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    """``--stream``: our protocol and (``--torch``) the PyTorch reference on one stream."""
    st = der_protocol_stream
    if a.epochs_scale is not None:
        raise SystemExit("--epochs-scale applies to --presets; use --epochs with --stream")
    s = st.stream_settings(a.stream, {k: getattr(a, k, None) for k in st.OVERRIDABLE})
    src = a.data_dir or DEFAULT_MNIST_DIR
    folder = st.data_folder(s, src, a.prepared_dir)
    root = os.path.join(a.runs_dir, a.stream)
    jax_dir, torch_json = os.path.join(root, "jax"), os.path.join(root, "torch", "results.json")
    extra, skipped = ([], {}) if a.dry_run else _pass_through(a, PASS_THROUGH)
    jax_cmd = st.jax_command(s, folder, jax_dir, extra + shlex.split(a.extra))
    torch_cmd = st.torch_command(s, folder, torch_json)
    if a.torch_threads:
        torch_cmd += ["--threads", str(a.torch_threads)]
    if a.dry_run:
        from experiments import cifar100_der

        cfg, _ = cifar100_der.parse_args(jax_cmd[3:])
        info = {
            "stream": s,
            "jax_command": shlex.join(["python", *jax_cmd[1:]]),
            "torch_command": shlex.join(["python", *torch_cmd[1:]]),
            "jax_config": cfg.to_dict(),
            "jax_config_mismatches": st.jax_config_mismatches(s, cfg.to_dict()),
        }
        print(json.dumps(info, indent=1))
        return info
    prov = _common.provenance(
        "benchmarks.der_protocol",
        ["jax", "jaxlib", "flax", "numpy", "torch"],
        argv,
    )
    dev = _common.jax_device_info_subprocess()
    out = a.out or os.path.join(
        _common.RESULTS_DIR,
        f"der_protocol_{a.stream}_{_common.device_slug(dev['device_kind'])}.json",
    )
    data = st.prepare_data(s, src, a.prepared_dir)
    data["ours"] = st.jax_stream_fingerprint(s, data["dir"])
    result: dict = {
        **prov,
        "note": (
            "Real MNIST, the same stream on both sides; each side runs as its own subprocess, "
            "one after the other (see order). Step seconds span model set-up to evaluation on "
            "both sides (ours include XLA compilation); ours also writes an orbax checkpoint "
            "after every step (in its wall-clock, not in its step seconds), the PyTorch "
            "reference writes none. The host's cores may be shared with other jobs: see the "
            "load averages before and after each run."
        ),
        "device": dev,
        "stream": {"name": a.stream, **s},
        "data": data,
        "settings": vars(a),
        "flags_not_supported": skipped,
        "runs": {},
    }

    def run_ours() -> dict:
        print(f"running ours: {shlex.join(jax_cmd[1:])}", flush=True)
        rec = run_logged(jax_cmd, st.fresh_dir(jax_dir), a.timeout_s, {"side": "den_jax"})
        ours = st.jax_record(rec, jax_dir, s)
        if ours.get("config"):
            ours["config_mismatches"] = st.jax_config_mismatches(s, ours["config"])
        print(f"ours: rc {ours['returncode']}, {ours['wall_clock_s']:.1f} s", flush=True)
        return ours

    def run_torch() -> dict:
        print(f"running torch: {shlex.join(torch_cmd[1:])}", flush=True)
        run_dir = st.fresh_dir(os.path.dirname(torch_json))
        rec = run_logged(torch_cmd, run_dir, a.timeout_s, {"side": "torch"})
        ref = st.torch_record(rec, torch_json)
        if os.path.exists(torch_json):
            with open(torch_json) as f:
                tj = json.load(f)
            ref["config_mismatches"] = st.torch_config_mismatches(s, tj["config"], tj["settings"])
        print(f"torch: rc {ref['returncode']}, {ref['wall_clock_s']:.1f} s", flush=True)
        return ref

    sides = [("den_jax", run_ours)] + ([("torch", run_torch)] if a.torch else [])
    result["order"] = [name for name, _ in (sides[::-1] if a.torch_first else sides)]
    for name, fn in sides[::-1] if a.torch_first else sides:
        result["runs"][name] = fn()
        _common.write_json(out, result)
    ours = result["runs"]["den_jax"]
    if a.torch:
        ref = result["runs"]["torch"]
        result["same_class_order"] = ref.get("class_order") == data["ours"]["class_order"]
        result["same_training_subset"] = (
            ref.get("train_fingerprint") == data["ours"]["train_fingerprint"]
        )
        result["comparison"] = st.compare(ours, ref)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    print(f"wrote {_common.write_json(out, result)}")
    return result


def main(argv: Sequence[str] | None = None) -> dict | None:
    a = parse_args(argv)
    if a.stream:
        return run_stream(a, argv)
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
    keys = ("base_width", "batch_size", "train_per_class", "test_per_class", *PASS_THROUGH)
    extra, skipped = _pass_through(a, keys)
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
