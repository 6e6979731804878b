"""The side-by-side DER stream of ``benchmarks.der_protocol --stream NAME``.

One invocation runs the same class-incremental stream twice, one subprocess each:

* ours: ``python -m experiments.cifar100_der --dataset mnist --data-dir PREPARED ...``;
* with ``--torch``, the eager-PyTorch reference ``python -m benchmarks.der_torch_protocol``
  on the same files, class order, training subset and settings.

:data:`STREAMS` holds the presets. ``mnist5``: MNIST zero-padded to 32x32 (one channel; the
padded idx files are written once, :func:`benchmarks.mnist_stream.prepare_padded_idx`),
5 steps x 2 classes, 300 training images per class, all 10,000 test images, ResNet-32
width 16, 4 epochs per step, batch 32, SGD lr 0.1 (no milestones), weight decay 5e-4 at the
first step and 2e-4 later, memory 100 in total, weight alignment, seed and class-order seed
1993.

For each side the result records the wall-clock of the subprocess, the seconds of every
step (model set-up to evaluation), the training images of every step (pool x epochs),
images per second, seconds per image relative to the first step, and that ratio against
the cost model 1 + (t-1)/3 (a frozen backbone's forward is about a third of the new one's
training step) with the bound 1.3 x the model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence

from benchmarks import mnist_stream

__all__ = [
    "BOUND",
    "OVERRIDABLE",
    "STREAMS",
    "compare",
    "data_folder",
    "fresh_dir",
    "jax_command",
    "jax_config_mismatches",
    "jax_record",
    "jax_stream_fingerprint",
    "pool_sizes",
    "prepare_data",
    "step_costs",
    "stream_settings",
    "torch_command",
    "torch_config_mismatches",
    "torch_record",
]

EXPERIMENT = "experiments.cifar100_der"
TORCH_MODULE = "benchmarks.der_torch_protocol"
NATIVE_SIZE = 28  # MNIST images as stored
STREAMS: dict[str, dict] = {
    "mnist5": {
        "dataset": "mnist",
        "image_size": 32,
        "init_classes": 2,
        "increment": 2,
        "epochs": 4,
        "milestones": [],
        "lr": 0.1,
        "first_wd": 5e-4,
        "later_wd": 2e-4,
        "batch_size": 32,
        "memory": 100,
        "train_per_class": 300,
        "test_per_class": None,
        "base_width": 16,
        "bias_correction": "weight_align",
        "seed": 1993,
        "order_seed": 1993,
    },
}
# Settings a command-line flag of the same name may override (tiny runs, other seeds).
OVERRIDABLE = (
    "init_classes",
    "increment",
    "epochs",
    "batch_size",
    "memory",
    "train_per_class",
    "test_per_class",
    "base_width",
    "seed",
    "image_size",
)
BOUND = 1.3  # step t may cost at most BOUND x (1 + (t-1)/3) x step 1, per image


def stream_settings(name: str, overrides: dict | None = None) -> dict:
    """The preset ``name`` with the non-None ``overrides`` of :data:`OVERRIDABLE` applied."""
    if name not in STREAMS:
        raise SystemExit(f"unknown stream {name!r}; expected one of {sorted(STREAMS)}")
    s = dict(STREAMS[name])
    for k, v in (overrides or {}).items():
        if k in OVERRIDABLE and v is not None:
            s[k] = v
    return s


def _common_flags(s: dict) -> list[str]:
    flags = [
        "--init-classes", str(s["init_classes"]),
        "--increment", str(s["increment"]),
        "--epochs", str(s["epochs"]),
        "--milestones", *map(str, s["milestones"]),
        "--lr", str(s["lr"]),
        "--first-wd", str(s["first_wd"]),
        "--later-wd", str(s["later_wd"]),
        "--batch-size", str(s["batch_size"]),
        "--memory", str(s["memory"]),
        "--train-per-class", str(s["train_per_class"]),
        "--base-width", str(s["base_width"]),
        "--bias-correction", s["bias_correction"],
        "--seed", str(s["seed"]),
        "--order-seed", str(s["order_seed"]),
    ]  # fmt: skip
    if s["test_per_class"] is not None:
        flags += ["--test-per-class", str(s["test_per_class"])]
    return flags


def jax_command(s: dict, data_dir: str, run_dir: str, extra: Sequence[str] = ()) -> list[str]:
    """argv of our side (``experiments.cifar100_der``; fixed-total memory of preset b0_10)."""
    return [
        sys.executable, "-m", EXPERIMENT,
        "--preset", "b0_10",
        "--dataset", s["dataset"],
        "--data-dir", data_dir,
        *_common_flags(s),
        "--out", run_dir,
        "--no-plots",
        *extra,
    ]  # fmt: skip


def torch_command(s: dict, data_dir: str, out_json: str) -> list[str]:
    """argv of the PyTorch reference (``benchmarks.der_torch_protocol``)."""
    return [sys.executable, "-m", TORCH_MODULE, "--data-dir", data_dir, *_common_flags(s),
            "--out", out_json]  # fmt: skip


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


def step_costs(seconds: Sequence[float], images: Sequence[int]) -> dict:
    """Per-step speed figures from measured seconds and training images.

    Returns:
      ``images_per_s``, ``seconds_per_image``, ``ratio_per_image_vs_step1`` (step t /
      step 1, per image), ``cost_model`` (1 + (t-1)/3, the formula, not a measurement),
      ``ratio_over_cost_model``, and ``within_bound`` (ratio <= 1.3 x model; None at t = 1).
    """
    n = min(len(seconds), len(images))
    spi = [seconds[i] / images[i] for i in range(n)]
    ratio = [x / spi[0] for x in spi] if n else []
    model = [1.0 + i / 3.0 for i in range(n)]
    return {
        "images_per_s": [images[i] / seconds[i] for i in range(n)],
        "seconds_per_image": spi,
        "ratio_per_image_vs_step1": ratio,
        "cost_model": model,
        "ratio_over_cost_model": [r / m for r, m in zip(ratio, model)],
        "within_bound": [None] + [r <= BOUND * m for r, m in zip(ratio[1:], model[1:])],
        "bound": f"step t / step 1 per image <= {BOUND} x (1 + (t-1)/3)",
    }


def data_folder(s: dict, data_dir: str, prepared_dir: str) -> str:
    """The folder both sides read: ``data_dir`` at native size, else its padded copy."""
    if s["image_size"] == NATIVE_SIZE:
        return data_dir
    return os.path.join(prepared_dir, f"{s['dataset']}{s['image_size']}")


def prepare_data(s: dict, data_dir: str, prepared_dir: str) -> dict:
    """Writes the padded copy if needed; returns what the result records about the data."""
    folder = data_folder(s, data_dir, prepared_dir)
    if folder == data_dir:
        return {"dir": data_dir, "image_shape": [NATIVE_SIZE, NATIVE_SIZE, 1], "padded": False}
    mnist_stream.prepare_padded_idx(data_dir, folder, s["image_size"])
    return {
        "dir": folder,
        "source_dir": data_dir,
        "image_shape": [s["image_size"], s["image_size"], 1],
        "padded": f"zero-padded from {NATIVE_SIZE}x{NATIVE_SIZE} (centred), one channel",
    }


def jax_stream_fingerprint(s: dict, folder: str) -> dict:
    """Class order and training-set fingerprint of our side's stream (den_jax's own loader)."""
    from den_jax.data import images  # numpy only: no JAX backend starts in this process

    tr, te, mean, std = images.load_data(s["dataset"], folder)
    data = images.StreamData.from_uint8(
        tr,
        te,
        mean=mean,
        std=std,
        num_classes=10,
        init_classes=s["init_classes"],
        increment=s["increment"],
        order_seed=s["order_seed"],
        train_per_class=s["train_per_class"],
        test_per_class=s["test_per_class"],
        seed=s["seed"],
    )
    return {
        "class_order": data.class_order.tolist(),
        "train_fingerprint": mnist_stream.fingerprint(data.x_train, data.y_train, data.class_order),
        "image_shape": list(data.image_shape),
    }


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def jax_record(rec: dict, run_dir: str, s: dict) -> dict:
    """Adds our side's measured figures (from its ``results.json``) to ``rec``."""
    res = _read_json(os.path.join(run_dir, "results.json"))
    if res is None:
        rec["missing"] = "no results.json (see log_tail)"
        return rec
    seconds = res.get("seconds", [])
    cfg = res["config"]
    pools = pool_sizes(cfg, s["train_per_class"])
    epochs = [cfg["first_epochs"]] + [cfg["later_epochs"]] * (len(pools) - 1)
    images = [p * e for p, e in zip(pools, epochs)][: len(seconds)]
    rec.update(
        steps_done=len(seconds),
        steps_total=len(res.get("steps", [])),
        step_seconds=seconds,
        sum_step_seconds=sum(seconds),
        train_images_per_step=images,
        train_images_source="pool size (new images + memory) x epochs, from the run's config",
        **step_costs(seconds, images),
        top1_curve=res.get("top1_curve"),
        nme_top1_curve=res.get("nme_top1_curve"),
        avg_incremental_accuracy=res.get("avg_incremental_accuracy"),
        class_order=res.get("class_order"),
        params_last=(res.get("params") or [None])[-1],
        config=cfg,
    )
    return rec


def torch_record(rec: dict, out_json: str) -> dict:
    """Adds the PyTorch side's measured figures (from its JSON) to ``rec``."""
    res = _read_json(out_json)
    if res is None:
        rec["missing"] = f"no {out_json} (see log_tail)"
        return rec
    r = res["results"]
    if not r:
        rec["missing"] = f"{out_json} holds no finished step (see log_tail)"
        return rec
    rec.update(
        complete=r.get("complete"),
        steps_done=len(r["seconds"]),
        steps_total=len(r["steps"]),
        step_seconds=r["seconds"],
        train_seconds=r["train_seconds"],
        sum_step_seconds=sum(r["seconds"]),
        protocol_seconds=r.get("protocol_seconds"),
        train_images_per_step=r["train_images"],
        train_images_source="counted by the run (pool size x epochs)",
        **step_costs(r["seconds"], r["train_images"]),
        top1_curve=r["top1_curve"],
        nme_top1_curve=r["nme_top1_curve"],
        avg_incremental_accuracy=r["avg_incremental_accuracy"],
        backbone_params=r["backbone_params"],
        class_order=res["data"]["class_order"],
        train_fingerprint=res["data"]["train_fingerprint"],
        torch_device=res["device"],
        results_json=out_json,
    )
    return rec


def compare(ours: dict, ref: dict) -> dict:
    """Measured ratios between the two sides (only from figures both runs produced)."""
    out: dict = {}
    if ours.get("returncode") == 0 and ref.get("returncode") == 0:
        out["wall_clock_ratio_ours_over_torch"] = ours["wall_clock_s"] / ref["wall_clock_s"]
        out["ours_wall_clock_at_most_torch"] = ours["wall_clock_s"] <= ref["wall_clock_s"]
    if ours.get("step_seconds") and ref.get("step_seconds"):
        n = min(len(ours["step_seconds"]), len(ref["step_seconds"]))
        out["step_seconds_ratio_ours_over_torch"] = [
            ours["step_seconds"][i] / ref["step_seconds"][i] for i in range(n)
        ]
        out["train_images_equal"] = (
            ours["train_images_per_step"][:n] == ref["train_images_per_step"][:n]
        )
    done = all(
        r.get("steps_done") and r.get("steps_done") == r.get("steps_total") for r in (ours, ref)
    )
    if done:
        out["avg_incremental_accuracy"] = {
            "ours": ours["avg_incremental_accuracy"],
            "torch": ref["avg_incremental_accuracy"],
        }
    return out


def fresh_dir(path: str) -> str:
    """Empties ``path`` (the experiment refuses a folder that holds checkpoints)."""
    if os.path.exists(path):
        shutil.rmtree(path)
    return path


def _wanted(s: dict) -> dict:
    """The config fields (``DERConfig`` names) the stream fixes."""
    return {
        "dataset": s["dataset"],
        "method": "der",
        "init_classes": s["init_classes"],
        "increment": s["increment"],
        "first_epochs": s["epochs"],
        "later_epochs": s["epochs"],
        "first_milestones": list(s["milestones"]),
        "later_milestones": list(s["milestones"]),
        "first_lr": s["lr"],
        "later_lr": s["lr"],
        "first_wd": s["first_wd"],
        "later_wd": s["later_wd"],
        "batch_size": s["batch_size"],
        "memory": s["memory"],
        "memory_per_class": None,
        "train_per_class": s["train_per_class"],
        "test_per_class": s["test_per_class"],
        "base_width": s["base_width"],
        "bias_correction": s["bias_correction"],
        "aux_weight": 1.0,
        "seed": s["seed"],
        "order_seed": s["order_seed"],
        "prune": False,
    }


# Fields the PyTorch reference has no setting for: MNIST idx files, DER, no pruning, fixed total.
_NOT_IN_TORCH = ("dataset", "method", "prune", "memory_per_class")


def jax_config_mismatches(s: dict, cfg: dict) -> dict:
    """Fields of our side's config (``DERConfig.to_dict()``) that differ from the stream."""
    want = _wanted(s)
    return {k: {"stream": v, "ours": cfg.get(k)} for k, v in want.items() if cfg.get(k) != v}


def torch_config_mismatches(s: dict, cfg: dict, settings: dict) -> dict:
    """Fields of the PyTorch side's config (``ProtocolConfig``) or options that differ."""
    per_stream = ("init_classes", "increment", "order_seed", "train_per_class", "test_per_class")
    got = {**cfg, **{k: settings.get(k) for k in per_stream}}
    want = {k: v for k, v in _wanted(s).items() if k not in _NOT_IN_TORCH}
    return {k: {"stream": v, "torch": got.get(k)} for k, v in want.items() if got.get(k) != v}
