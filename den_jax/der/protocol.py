"""The DER class-incremental protocol as library calls.

* :class:`DERConfig` / :data:`PRESETS` (``den_jax.der.config``): the settings;
* :class:`StreamData` / :func:`make_stream`: the data (uint8, or float already normalised);
* :func:`learn_step` (``den_jax.der.step``): one incremental step, everything included;
* :func:`save_state` / :func:`restore_state`: a DER state and its memory as one orbax
  checkpoint step (``den_jax.checkpoint``);
* :func:`run_protocol`: the whole stream with a checkpoint per step, ``results.json`` and
  resume after the last saved step.

Example::

    cfg = PRESETS["smoke"]
    (tr, te, mean, std) = den_jax.data.images.load_data("synthetic", num_classes=6)
    results = run_protocol(cfg, make_stream(cfg, tr, te, mean=mean, std=std), "/tmp/der")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax import checkpoint as ckpt
from den_jax import metrics
from den_jax.data.images import StreamData
from den_jax.der import evaluate, memory, model, train
from den_jax.der.config import PRESETS, DERConfig, check_resume_config, resolve_epoch_loop
from den_jax.der.step import learn_step, make_stream, place_train_data, pruned_backbone, step_key

__all__ = [
    "PRESETS",
    "DERConfig",
    "StreamData",
    "learn_step",
    "make_stream",
    "restore_state",
    "run_protocol",
    "save_state",
]

_log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"  # subfolder of run_protocol's output folder
RESULTS = "results.json"


def save_state(
    directory: str,
    step: int,
    state: model.DERState,
    mem: Mapping[int, np.ndarray],
    results: Mapping[str, Any] | None = None,
    *,
    cfg: DERConfig,
    image_shape: Sequence[int],
    class_order: Sequence[int] | None = None,
) -> None:
    """Saves the state after step ``step``, its memory and the results so far.

    Arrays: ``{"state": DERState}`` plus ``"frozen"`` (the pruned backbone) with pruning.
    Meta (JSON): config, step, class counts, backbone widths, memory, image shape, class
    order, RNG derivation, results.

    Args:
      directory: checkpoint root (one subfolder per step).
      step: incremental step index t.
      state, mem: from :func:`learn_step`.
      results: results so far (stored in the meta; ``run_protocol`` resumes from them).
      cfg: the run's config.
      image_shape: ``(H, W, C)`` of the images (to rebuild the state's shapes).
      class_order: original class ids in stream order (default ``results["class_order"]``).
    """
    frozen = pruned_backbone(state)
    if class_order is None and results is not None:
        class_order = results.get("class_order")
    meta = dict(
        config=cfg.to_dict(),
        step=int(step),
        num_old=state.num_old,
        num_seen=state.num_seen,
        old_inner_widths=[list(w) for w in state.old_inner_widths],
        frozen_inner_widths=None if frozen is None else list(frozen[1]),
        has_masks=state.mask_e is not None,
        image_shape=[int(d) for d in image_shape],
        class_order=None if class_order is None else [int(c) for c in class_order],
        memory=memory.to_json(dict(mem)),
        rng={"seed": cfg.seed, "next_step": int(step) + 1, "derivation": "fold_in(key(seed), t)"},
        results=dict(results or {}),
    )
    arrays = {"state": jax.device_get(state)}
    if frozen is not None:
        arrays["frozen"] = frozen[0]
    ckpt.save_step(directory, int(step), arrays, meta)


def restore_state(
    directory: str,
    cfg: DERConfig,
    *,
    step: int | None = None,
    image_shape: Sequence[int] | None = None,
) -> tuple[model.DERState, dict, dict]:
    """Restores a :func:`save_state` checkpoint.

    Args:
      directory: checkpoint root.
      cfg: the run's config (``base_width``, ``num_classes``, ``prune``/``method``).
      step: which step (default: the latest).
      image_shape: ``(H, W, C)``; only needed for checkpoints without it in their meta.

    Returns:
      ``(state, memory, meta)``; ``meta["results"]`` holds the results saved with it.
    """
    if step is None:
        step = ckpt.latest_verified_step(directory)
        if step is None:
            raise ValueError(f"no checkpoint step in {directory!r} verifies")
    meta = ckpt.restore_meta(directory, step)
    shape = meta.get("image_shape") or image_shape
    if shape is None:
        raise ValueError(f"checkpoint step {step} in {directory!r} has no image_shape: pass one")
    h, _, c = (int(d) for d in shape)
    common = dict(base_width=cfg.base_width, in_channels=c, image_size=h, num_total=cfg.num_classes)
    abstract = {
        "state": model.abstract_state(
            **common,
            old_inner_widths=tuple(tuple(w) for w in meta["old_inner_widths"]),
            num_old=meta["num_old"],
            num_seen=meta["num_seen"],
            prune=meta.get("has_masks", cfg.prune and cfg.method == "der"),
        )
    }
    if meta.get("frozen_inner_widths") is not None:
        abstract["frozen"] = model.abstract_state(
            **common,
            old_inner_widths=(tuple(meta["frozen_inner_widths"]),),
            num_old=0,
            num_seen=1,
            prune=False,
        ).old[0]
    arrays, meta = ckpt.restore_step(directory, step, abstract)
    state = jax.tree.map(jnp.asarray, arrays["state"])
    return state, memory.from_json(meta["memory"]), meta


def _new_results(cfg: DERConfig, data: StreamData, devices: int) -> dict:
    return dict(
        preset=cfg.preset,
        method=cfg.method,
        dataset=cfg.dataset,
        class_order=[int(c) for c in data.class_order],
        steps=list(data.sizes),
        num_seen=[],
        top1_curve=[],
        top5_curve=[],
        grouped=[],
        acc_matrix=[],
        forgetting=[],
        params=[],
        seconds=[],
        devices=devices,
        config=cfg.to_dict(),
    )


def _forgetting(rows: list) -> float:
    if any(v != v for r in rows for v in r):  # a step without test images: undefined
        return float("nan")
    return metrics.forgetting(evaluate.square_matrix(rows))


def _append(results: dict, report: dict) -> None:
    """Adds one :func:`learn_step` report to the results (curves, matrix, metrics)."""
    results["num_seen"].append(report["num_seen"])
    results["top1_curve"].append(report["top1"])
    results["top5_curve"].append(report["top5"])
    results["grouped"].append(report["grouped"])
    results["acc_matrix"].append(report["task_acc"])
    results["forgetting"].append(_forgetting(results["acc_matrix"]))
    results.setdefault("pycil_grouped", []).append(report["pycil_grouped"])
    results.setdefault("pycil_forgetting", []).append(
        evaluate.pycil_forgetting(results["pycil_grouped"])
    )
    if "nme_top1" in report:
        for k in ("nme_top1", "nme_top5"):
            results.setdefault(f"{k}_curve", []).append(report[k])
        results.setdefault("nme_acc_matrix", []).append(report["nme_task_acc"])
        results.setdefault("nme_pycil_grouped", []).append(report["nme_pycil_grouped"])
        results["nme_avg_incremental_accuracy"] = evaluate.average_incremental_accuracy(
            results["nme_top1_curve"]
        )
    results["params"].append(report["params"])
    results["avg_incremental_accuracy"] = evaluate.average_incremental_accuracy(
        results["top1_curve"]
    )
    if report["weight_align_gamma"] is not None:
        results.setdefault("weight_align_gamma", []).append(report["weight_align_gamma"])
    results["seconds"].append(report["seconds"])


def run_protocol(
    cfg: DERConfig,
    data: StreamData,
    out: str,
    *,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Runs (or resumes) the whole class-incremental stream.

    Writes ``out/checkpoints/<t>/`` after every step (:func:`save_state`) and
    ``out/results.json`` (atomically). With checkpoints already in ``out`` it refuses to
    start unless ``resume``; resuming refuses a config that computes something else
    (naming the differing fields) and continues after the last completed step.

    Args:
      cfg: settings (``epoch_loop="auto"`` is resolved for this backend first).
      data: the stream.
      out: output folder (created).
      resume: continue after the last saved step.
      on_step: called as ``on_step(t, results)`` after step t is saved (plots, logging).
      progress: show tqdm bars.
      mesh: device mesh of the data-parallel training (default: all local devices).

    Returns:
      The results dict (also in ``results.json``): ``top1_curve``, ``top5_curve``,
      ``avg_incremental_accuracy``, ``grouped``, ``acc_matrix``, ``forgetting``,
      ``params``, ``seconds``, ``class_order``, ``config``, ...
    """
    if cfg.epoch_loop == "auto":
        cfg = cfg.replace(epoch_loop=resolve_epoch_loop())
    ckpt_dir = os.path.join(out, CHECKPOINTS)
    os.makedirs(out, exist_ok=True)
    dev = place_train_data(data, train.make_mesh() if mesh is None else mesh)
    if cfg.batch_size % dev.mesh.size:
        raise ValueError(f"batch_size {cfg.batch_size} not divisible by {dev.mesh.size} devices")
    results = _new_results(cfg, data, dev.mesh.size)
    state, mem, start = None, {}, 0
    completed = ckpt.completed_steps(ckpt_dir)
    if completed and not resume:
        raise ValueError(
            f"{ckpt_dir} already holds steps {completed}: pass --resume (resume=True) or a new "
            "--out"
        )
    done = ckpt.latest_verified_step(ckpt_dir) if completed else None
    for s in completed:
        if done is None or s > done:
            ckpt.move_aside_step(ckpt_dir, s, "newer than the last good step")
    if completed and done is None:
        _log.warning("no checkpoint step in %s verifies: starting from step 0", ckpt_dir)
    if done is not None:
        check_resume_config(ckpt.restore_meta(ckpt_dir, done)["config"], cfg)
        state, mem, meta = restore_state(ckpt_dir, cfg, step=done, image_shape=data.image_shape)
        if meta.get("class_order") not in (None, results["class_order"]):
            raise ValueError(f"{ckpt_dir} step {done} was written with another class order")
        results, start = meta["results"], done + 1
        if start >= len(data.sizes):
            _log.info("all %d steps already done", len(data.sizes))
        _log.info("resumed after step %d from %s", done, ckpt_dir)
    results_path = os.path.join(out, RESULTS)
    for t in range(start, len(data.sizes)):
        state, mem, report = learn_step(
            state, mem, data, cfg, step_key(cfg, t), step=t, device_data=dev, progress=progress
        )
        _append(results, report)
        _log.info(
            "after step %d: average incremental accuracy %.2f",
            t,
            results["avg_incremental_accuracy"],
        )
        save_state(ckpt_dir, t, state, mem, results, cfg=cfg, image_shape=data.image_shape)
        ckpt.write_json_atomic(results_path, results)
        if on_step is not None:
            on_step(t, results)
    ckpt.write_json_atomic(results_path, results)
    return results
