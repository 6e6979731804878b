"""Speed of the JAX DER train step at incremental steps t = 1..T (and PyTorch with --torch).

At step t the step runs the t-1 frozen ResNet-32 backbones forward (inference BN, stop
gradient) and the new one forward + backward, on a batch gathered from a device-resident
uint8 dataset and augmented on the device (``den_jax.der.train.make_train_step``). For
every t, batch size and compute dtype it records:

* ``step``: images/s of the jitted step, one dispatch per batch, timed over ``--iters``
  steps after compilation and ``--warmup`` steps, ``jax.block_until_ready`` at the end
  (no host sync in between: the best case of the per-step loop);
* ``sync_images_per_s``: the same loop but with the metrics read back to the host after
  every step, as ``train.run_epoch`` (the protocol's ``--epoch-loop step``) does;
* ``epoch``: images/s of the scanned epoch (``train.make_train_epoch``: S batches in one
  ``lax.scan`` dispatch, S = ``--epoch-images`` // batch), when the library has it;
* compile seconds of each shape (``jit(...).lower(...).compile()``), XLA's flop count and
  memory analysis of the compiled step, and the device's peak memory
  (``memory_stats()["peak_bytes_in_use"]``, a running maximum over the process; None on
  CPU).

``--torch`` also runs ``benchmarks.der_torch`` (eager, torch.compile, channels_last,
bf16 autocast) in the same invocation on the same kind of device and reports JAX /
PyTorch ratios. By default PyTorch runs first, before JAX claims its GPU memory pool;
``--interleave`` (set by ``--small``) times PyTorch and JAX blocks in turn at each
configuration instead, so that on a shared CPU both see the same load. Per-step
figures are the best of ``--repeats`` blocks (median beside it). The issue's must-show
figures: JAX >= 5x PyTorch eager at batch 128 on the same GPU, and >= 100k images/s at
t = 1 (one backbone), bfloat16, batch 1024 on one H100.

Data are synthetic CIFAR-shaped uint8 images (real CIFAR-100 is not needed for speed)::

    python -m benchmarks.der_step --small --torch          # CPU preset, ~10 min on 2 cores
    python -m benchmarks.der_step --torch                   # GPU: t 1,2,5,10; batch 128-1024
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks import _common
from den_jax.der import augment, model, resnet, train

NOTE = (
    "Synthetic CIFAR-shaped uint8 data (32x32x3, random pixels and labels): real CIFAR-100 "
    "is not available here and is not needed for speed; the figures are for speed only, "
    "not accuracy."
)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BN_MOMENTUM = 0.9  # flax momentum of den_jax.der.resnet's BatchNorm (torch's 0.1)
SMALL = dict(
    steps_t="1,2",
    batch_sizes="32,64",
    iters=3,
    warmup=1,
    repeats=2,
    epoch_batches=2,
    epoch_dtypes="float32",
    scan_epochs=0,
    dataset_size=1024,
    torch_compile_steps_t="1",
    torch_compile_batch_sizes="32",
    torch_modes="eager,compile,channels_last,amp",
    interleave=True,
)


# ----------------------------------------------------------------------------- helpers


def library_features() -> dict:
    """Which optional speed features the installed ``den_jax.der`` has (signature checks)."""
    step_params = inspect.signature(train.make_train_step).parameters
    epoch_fn = getattr(train, "make_train_epoch", None)
    return {
        "compute_dtype": "compute_dtype" in step_params,
        "donate": "donate" in step_params,
        "make_train_epoch": epoch_fn is not None,
        "run_epoch_scanned": hasattr(train, "run_epoch_scanned"),
        "donate_resolved": (
            train.resolve_donate(None) if hasattr(train, "resolve_donate") else False
        ),
    }


def calibrate_batch_stats(backbone: dict, base_width: int, x: jax.Array) -> dict:
    """Sets a backbone's BN running statistics to the batch statistics of ``x``.

    One train-mode pass gives ``running' = m * running + (1 - m) * batch`` (flax momentum
    m = ``BN_MOMENTUM``), so ``batch = (running' - m * running) / (1 - m)``. Fresh
    backbones in eval mode (mean 0, variance 1) blow the features up through 15 residual
    blocks; frozen backbones of a real run carry trained statistics. Speed does not depend
    on it, but the reported losses stay sane.
    """
    net = resnet.ResNet32(base_width)
    _, upd = net.apply(backbone, x, train=True, mutable=["batch_stats"])
    m = BN_MOMENTUM
    stats = jax.tree.map(
        lambda new, old: (new - m * old) / (1.0 - m), upd["batch_stats"], backbone["batch_stats"]
    )
    return {"params": backbone["params"], "batch_stats": stats}


def build_state(
    t: int,
    *,
    base_width: int,
    num_total: int,
    classes_per_step: int,
    seed: int = 0,
    calib_x: jax.Array | None = None,
) -> model.DERState:
    """DER state at step t (t-1 frozen backbones), built with ``init_der_state`` + ``expand``.

    With ``calib_x`` (normalised images) the backbone's BN statistics are calibrated on
    it first, so the frozen copies made by ``expand`` carry realistic statistics.
    """
    if t < 1 or t * classes_per_step > num_total:
        raise ValueError(f"t={t} x {classes_per_step} classes exceeds --num-total {num_total}")
    key = jax.random.key(seed)
    state = model.init_der_state(
        key,
        base_width=base_width,
        in_channels=3,
        image_size=32,
        num_first=classes_per_step,
        num_total=num_total,
    )
    if calib_x is not None:
        state = state.replace(new=calibrate_batch_stats(state.new, base_width, calib_x))
    for i in range(1, t):
        state = model.expand(state, jax.random.fold_in(key, i), classes_per_step)
    return state


def _builder_kwargs(builder: Callable, compute_dtype: Any) -> dict:
    """Keyword arguments of ``make_train_step``/``make_train_epoch`` this library accepts."""
    params = inspect.signature(builder).parameters
    kw: dict = {}
    if compute_dtype is not jnp.float32:
        if "compute_dtype" not in params:
            raise NotImplementedError("make_train_step has no compute_dtype keyword")
        kw["compute_dtype"] = compute_dtype
    return kw


def _aot(fn: Callable, args: tuple) -> tuple[Callable, float, Any]:
    """Compiles ``fn`` for ``args`` ahead of time; returns (callable, seconds, compiled|None).

    Falls back to the first call's time when ``fn`` is not a ``jax.jit`` object (then the
    figure includes one execution).
    """
    t0 = time.perf_counter()
    if hasattr(fn, "lower"):
        compiled = fn.lower(*args).compile()
        return compiled, time.perf_counter() - t0, compiled
    jax.block_until_ready(fn(*_copy(args)))
    return fn, time.perf_counter() - t0, None


def _copy(tree):
    """Fresh device buffers (a donated state must not be reused by the next run)."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def _analysis(compiled: Any) -> dict:
    """XLA's flop count and memory analysis of a compiled executable (None where missing)."""
    out: dict = {"xla_flops": None, "memory_analysis": None}
    if compiled is None:
        return out
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        out["xla_flops"] = float(cost.get("flops")) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 -- optional figure
        pass
    try:
        m = compiled.memory_analysis()
        if m is not None:
            out["memory_analysis"] = {
                k: int(getattr(m, k))
                for k in (
                    "argument_size_in_bytes",
                    "output_size_in_bytes",
                    "alias_size_in_bytes",
                    "temp_size_in_bytes",
                    "generated_code_size_in_bytes",
                )
                if hasattr(m, k)
            }
    except Exception:  # noqa: BLE001
        pass
    return out


def peak_device_bytes() -> int | None:
    """``peak_bytes_in_use`` of the first device (running max of the process), or None."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


# ----------------------------------------------------------------------------- benchmarks


@dataclass
class StepPrepared:
    """A compiled and warmed-up step configuration, ready to time.

    Attributes:
      rec: the configuration's record (filled by :func:`finalize_step`).
      block: ``block(iters, sync)`` runs ``iters`` steps (reading the metrics back after
        each one when ``sync``) and returns seconds; None when skipped.
      blocks, sync_blocks: seconds of the blocks timed so far.
    """

    rec: dict
    block: Callable[[int, bool], float] | None
    blocks: list[float] = field(default_factory=list)
    sync_blocks: list[float] = field(default_factory=list)


def prepare_step(
    state0: model.DERState,
    *,
    t: int,
    batch_size: int,
    dtype_name: str,
    warmup: int,
    data: tuple,
    mesh,
) -> StepPrepared:
    """Compiles the jitted per-batch step ahead of time and runs ``warmup`` steps."""
    rec: dict = {"path": "step", "t": t, "batch_size": batch_size, "dtype": dtype_name}
    dtype = DTYPES[dtype_name]
    try:
        kw = _builder_kwargs(train.make_train_step, dtype)
    except NotImplementedError as e:
        rec["skipped"] = f"{e} (library without bf16 support at this commit)"
        return StepPrepared(rec, None)
    tx = _optimizer(state0)
    aux_w = 0.0 if t == 1 else 1.0
    mean, std = augment.CIFAR100_MEAN, augment.CIFAR100_STD
    step_fn = train.make_train_step(tx, aux_weight=aux_w, mean=mean, std=std, **kw)
    data_x, data_y = data
    rng = np.random.default_rng(t * 1000 + batch_size)
    pool = [
        train.shard_batch(rng.integers(0, data_x.shape[0], batch_size).astype(np.int32), mesh)
        for _ in range(8)
    ]
    keys = [jax.random.fold_in(jax.random.key(1), i) for i in range(8)]
    s = jnp.float32(1.0)
    state = train.replicate(_copy(state0), mesh)
    opt_state = train.replicate(tx.init(model.trainable(state)), mesh)
    args = (state, opt_state, data_x, data_y, pool[0], keys[0], s)
    fn, compile_s, compiled = _aot(step_fn, args)
    rec.update(compile_s=compile_s, aot=compiled is not None, **_analysis(compiled))
    carry = {"state": state, "opt_state": opt_state}

    def block(n: int, sync: bool) -> float:
        st, op, m = carry["state"], carry["opt_state"], None
        t0 = time.perf_counter()
        for i in range(n):
            st, op, m = fn(st, op, data_x, data_y, pool[i % 8], keys[i % 8], s)
            if sync:  # as train.run_epoch: every metric back to the host after every step
                m = {k: float(v) for k, v in m.items()}
        jax.block_until_ready((st, op, m))
        sec = time.perf_counter() - t0
        carry.update(state=st, opt_state=op)
        if m is not None:
            rec["final_loss"] = float(m["loss"])
        return sec

    rec["first_call_s"] = block(1, False)
    block(max(warmup - 1, 0), False)
    rec["warmup"] = max(warmup, 1)
    return StepPrepared(rec, block)


def finalize_step(prep: StepPrepared, iters: int) -> dict:
    """Fills the record from the timed blocks: best (``images_per_s``) and median."""
    rec = prep.rec
    if not prep.blocks:
        return rec
    b = rec["batch_size"]
    sec = min(prep.blocks)  # best block: the least disturbed by other work on the host
    rec.update(
        images_per_s=b * iters / sec,
        images_per_s_median=b * iters / float(np.median(prep.blocks)),
        step_ms=1e3 * sec / iters,
        iters=iters,
        repeats=len(prep.blocks),
    )
    if rec["xla_flops"]:
        rec["xla_tflops_per_s"] = rec["xla_flops"] * iters / sec / 1e12
    if prep.sync_blocks:
        rec["sync_images_per_s"] = b * iters / min(prep.sync_blocks)
        rec["sync_images_per_s_median"] = b * iters / float(np.median(prep.sync_blocks))
    rec["peak_bytes_in_use"] = peak_device_bytes()
    if not math.isfinite(rec.get("final_loss", 0.0)):
        rec["warning"] = "non-finite loss"
    return rec


def time_step_block(prep: StepPrepared, iters: int, sync_variant: bool) -> None:
    """One timed block of the async loop (and one of the synced loop)."""
    if prep.block is None:
        return
    prep.blocks.append(prep.block(iters, False))
    if sync_variant:
        prep.sync_blocks.append(prep.block(iters, True))


def bench_step(
    state0: model.DERState,
    *,
    iters: int,
    sync_variant: bool,
    repeats: int = 1,
    **kwargs,
) -> dict:
    """Times the jitted per-batch step (and its host-synced variant) at one shape.

    ``repeats`` blocks of ``iters`` steps are timed; ``images_per_s`` comes from the
    fastest block, ``images_per_s_median`` from the median one. ``kwargs`` go to
    :func:`prepare_step`.
    """
    prep = prepare_step(state0, **kwargs)
    for _ in range(max(repeats, 1)):
        time_step_block(prep, iters, sync_variant)
    return finalize_step(prep, iters)


def bench_epoch(
    state0: model.DERState,
    *,
    t: int,
    batch_size: int,
    dtype_name: str,
    epoch_images: int,
    epochs: int,
    data: tuple,
    mesh,
    epoch_batches: int | None = None,
) -> dict:
    """Times the scanned epoch (one dispatch of S = epoch_images // batch batches)."""
    num_batches = epoch_batches or max(1, epoch_images // batch_size)
    rec: dict = {
        "path": "epoch",
        "t": t,
        "batch_size": batch_size,
        "dtype": dtype_name,
        "batches_per_dispatch": num_batches,
    }
    if not hasattr(train, "make_train_epoch"):
        rec["skipped"] = "den_jax.der.train.make_train_epoch not present at this commit"
        return rec
    dtype = DTYPES[dtype_name]
    try:
        kw = _builder_kwargs(train.make_train_epoch, dtype)
    except NotImplementedError as e:
        rec["skipped"] = str(e)
        return rec
    tx = _optimizer(state0)
    aux_w = 0.0 if t == 1 else 1.0
    mean, std = augment.CIFAR100_MEAN, augment.CIFAR100_STD
    epoch_fn = train.make_train_epoch(tx, aux_weight=aux_w, mean=mean, std=std, **kw)
    data_x, data_y = data
    rng = np.random.default_rng(t * 1000 + batch_size + 1)
    sharding = NamedSharding(mesh, PartitionSpec(None, "data"))
    idx = [
        jax.device_put(
            rng.integers(0, data_x.shape[0], (num_batches, batch_size)).astype(np.int32), sharding
        )
        for _ in range(2)
    ]
    s_values = train.replicate(np.ones(num_batches, np.float32), mesh)
    keys = [jax.random.fold_in(jax.random.key(2), i) for i in range(2)]
    state = train.replicate(_copy(state0), mesh)
    opt_state = train.replicate(tx.init(model.trainable(state)), mesh)
    args = (state, opt_state, data_x, data_y, idx[0], keys[0], s_values)
    fn, compile_s, compiled = _aot(epoch_fn, args)
    rec.update(compile_s=compile_s, aot=compiled is not None)
    if compiled is not None:
        rec["memory_analysis"] = _analysis(compiled)["memory_analysis"]
    t0 = time.perf_counter()
    state, opt_state, m = fn(state, opt_state, data_x, data_y, idx[1], keys[1], s_values)
    jax.block_until_ready((state, opt_state, m))
    rec["first_call_s"] = time.perf_counter() - t0
    sec = rec["first_call_s"]
    if epochs > 0:  # else: the first call (already compiled ahead of time) is the timing
        t0 = time.perf_counter()
        for e in range(epochs):
            state, opt_state, m = fn(
                state, opt_state, data_x, data_y, idx[e % 2], keys[e % 2], s_values
            )
        jax.block_until_ready((state, opt_state, m))
        sec = time.perf_counter() - t0
    timed = max(epochs, 1)
    rec.update(
        images_per_s=num_batches * batch_size * timed / sec,
        dispatch_s=sec / timed,
        epochs=epochs,
        timed="first call after AOT compilation" if epochs == 0 else f"{epochs} calls",
        final_loss=float(np.asarray(m["loss"])[-1]),
        peak_bytes_in_use=peak_device_bytes(),
    )
    return rec


def _optimizer(state: model.DERState):
    """The protocol's optimizer: SGD 0.1, momentum 0.9, coupled weight decay 5e-4."""
    return train.make_optimizer(
        lr=0.1,
        milestones=[],
        steps_per_epoch=1,
        weight_decay=5e-4,
        decay_mask=train.decay_mask_for(model.trainable(state)),
    )


@dataclass
class TorchSide:
    """PyTorch configurations timed in turn with the JAX ones (``--interleave``).

    Attributes:
      mod: the ``benchmarks.der_torch`` module (imported only with ``--torch``).
      device: the torch device.
      data: its device-resident synthetic data.
      out: the PyTorch result dict (``runs`` is appended to).
      modes_for: ``(t, batch) -> [mode names]`` to run at that configuration.
      iters: timed steps per block.
      warmup: untimed steps after the first.
    """

    mod: Any
    device: Any
    data: tuple
    out: dict
    modes_for: Callable[[int, int], list[str]]
    iters: int
    warmup: int


def run_jax_benchmarks(
    a: argparse.Namespace,
    log: Callable[[str], None],
    on_record: Callable[[dict], None],
    start: float,
    torch_side: TorchSide | None = None,
) -> list[dict]:
    """Runs every (t, batch, dtype) configuration of the step and scanned-epoch paths.

    At each (t, batch) the per-step configurations of all dtypes (and, with
    ``torch_side``, the PyTorch modes) are compiled and warmed up first, then timed in
    turn, one block each per round, ``--repeats`` rounds: on a shared host every
    configuration sees the same mix of quiet and busy moments. The scanned epochs follow.

    ``on_record`` is called after each configuration (the caller rewrites the JSON, so a
    run that is killed keeps what it measured). Configurations are skipped, with a note,
    once ``--time-budget-s`` has passed.
    """
    mesh = train.make_mesh()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (a.dataset_size, 32, 32, 3), dtype=np.uint8)
    y_all = rng.integers(0, a.num_total, a.dataset_size)
    data_x = train.replicate(jnp.asarray(x), mesh)
    calib_x = augment.normalize(jnp.asarray(x[:64]), augment.CIFAR100_MEAN, augment.CIFAR100_STD)
    records: list[dict] = []

    def emit(rec: dict) -> None:
        records.append(rec)
        on_record(rec)
        log(_fmt(rec))

    def over_budget() -> bool:
        return bool(a.time_budget_s) and time.perf_counter() - start > a.time_budget_s

    skipped = f"--time-budget-s {a.time_budget_s} exhausted"
    for t in a.steps_t:
        state0 = build_state(
            t,
            base_width=a.base_width,
            num_total=a.num_total,
            classes_per_step=a.classes_per_step,
            calib_x=calib_x,
        )
        # labels of the classes seen at step t
        data_y = train.replicate(jnp.asarray((y_all % state0.num_seen).astype(np.int32)), mesh)
        data = (data_x, data_y)
        for b in a.batch_sizes:
            if b % mesh.size:
                raise ValueError(f"batch {b} not divisible by {mesh.size} devices")
            t_modes = torch_side.modes_for(t, b) if torch_side else []
            if over_budget():
                for d in a.dtypes:
                    emit({"path": "step", "t": t, "batch_size": b, "dtype": d, "skipped": skipped})
                for m in t_modes:
                    torch_side.out["runs"].append(
                        {"mode": m, "t": t, "batch_size": b, "skipped": skipped}
                    )
            else:
                preps = [
                    prepare_step(
                        state0,
                        t=t,
                        batch_size=b,
                        dtype_name=d,
                        warmup=a.warmup,
                        data=data,
                        mesh=mesh,
                    )
                    for d in a.dtypes
                ]
                tpreps = [
                    torch_side.mod.prepare_config(
                        m,
                        t=t,
                        batch_size=b,
                        base_width=a.base_width,
                        num_total=a.num_total,
                        classes_per_step=a.classes_per_step,
                        warmup=torch_side.warmup,
                        device=torch_side.device,
                        data=torch_side.data,
                    )
                    for m in t_modes
                ]
                for _ in range(max(a.repeats, 1)):
                    for p in preps:
                        time_step_block(p, a.iters, a.sync_variant)
                    for tp in tpreps:
                        torch_side.mod.time_block(tp, torch_side.iters)
                for p in preps:
                    emit(finalize_step(p, a.iters))
                for tp in tpreps:
                    rec = torch_side.mod.finalize(tp, torch_side.iters, torch_side.device)
                    torch_side.out["runs"].append(rec)
                    torch_side.mod.log_record(rec, log)
            if not a.epoch_path:
                continue
            for d in a.epoch_dtypes:
                if over_budget():
                    emit({"path": "epoch", "t": t, "batch_size": b, "dtype": d, "skipped": skipped})
                    continue
                emit(
                    bench_epoch(
                        state0,
                        t=t,
                        batch_size=b,
                        dtype_name=d,
                        epoch_images=a.epoch_images,
                        epochs=a.scan_epochs,
                        epoch_batches=a.epoch_batches,
                        data=data,
                        mesh=mesh,
                    )
                )
    return records


def _fmt(rec: dict) -> str:
    head = f"jax {rec['path']:<5} t={rec['t']:<2} batch={rec['batch_size']:<5} {rec['dtype']:<8}"
    if "skipped" in rec:
        return f"{head} skipped: {rec['skipped']}"
    extra = ""
    if rec.get("sync_images_per_s"):
        extra = f"  (synced {rec['sync_images_per_s']:.1f})"
    return (
        f"{head} {rec['images_per_s']:10.1f} img/s{extra}  compile {rec['compile_s']:.1f} s"
        f"  first call {rec['first_call_s']:.2f} s"
    )


# ----------------------------------------------------------------------------- comparison


def compare(jax_runs: Sequence[dict], torch_runs: Sequence[dict], same_device: bool) -> dict:
    """JAX / PyTorch ratios per (t, batch) and the issue's two must-show figures."""

    def ips(r: dict) -> float | None:
        return r.get("images_per_s")

    table = []
    keys = sorted({(r["t"], r["batch_size"]) for r in jax_runs})
    for t, b in keys:
        row: dict = {"t": t, "batch_size": b}
        for r in jax_runs:
            if (r["t"], r["batch_size"]) == (t, b) and ips(r):
                row[f"jax_{r['path']}_{r['dtype']}"] = ips(r)
        for r in torch_runs:
            if (r["t"], r["batch_size"]) == (t, b) and ips(r):
                row[f"torch_{r['mode']}"] = ips(r)
        jax_vals = {k: v for k, v in row.items() if k.startswith("jax_")}
        torch_vals = {k: v for k, v in row.items() if k.startswith("torch_")}
        if jax_vals:
            best_jax = max(jax_vals, key=jax_vals.get)
            row["jax_best"] = best_jax
        if jax_vals and torch_vals:
            best_torch = max(torch_vals, key=torch_vals.get)
            row["torch_best"] = best_torch
            eager = row.get("torch_eager")
            if eager:
                row["ratio_jax_best_over_torch_eager"] = jax_vals[best_jax] / eager
                if "jax_step_float32" in row:
                    row["ratio_jax_step_f32_over_torch_eager"] = row["jax_step_float32"] / eager
            row["ratio_jax_best_over_torch_best"] = jax_vals[best_jax] / torch_vals[best_torch]
        table.append(row)

    at128 = {
        r["t"]: r.get("ratio_jax_best_over_torch_eager") for r in table if r["batch_size"] == 128
    }
    at128 = {t: v for t, v in at128.items() if v is not None}
    one_bb = [
        r
        for r in jax_runs
        if r["t"] == 1 and r["batch_size"] == 1024 and r["dtype"] == "bfloat16" and ips(r)
    ]
    best_1024 = max((ips(r) for r in one_bb), default=None)
    must = {
        "jax_best_over_torch_eager_at_batch_128": at128 or None,
        "target_ratio": 5.0,
        "ratio_target_met": (min(at128.values()) >= 5.0) if at128 else None,
        "single_backbone_bf16_batch_1024_images_per_s": best_1024,
        "target_images_per_s": 100_000,
        "images_target_met": None if best_1024 is None else best_1024 >= 100_000,
        "same_device_for_both": same_device,
        "comment": (
            "Targets apply to one H100 (ratio: any GPU, both sides on it). 'jax best' = the "
            "faster of the per-step and scanned-epoch paths over the measured dtypes; the "
            "float32 per-step ratio is listed beside it. None = not measured in this run."
        ),
    }
    return {"table": table, "must_show": must}


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--steps-t", default="1,2,5,10", help="incremental steps t (1 = one backbone)")
    p.add_argument("--batch-sizes", default="128,512,1024")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (params f32)")
    p.add_argument("--base-width", type=int, default=16, help="ResNet-32 base width (16)")
    p.add_argument("--iters", type=int, default=50, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps after compilation")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks (best and median kept)")
    p.add_argument("--num-total", type=int, default=100, help="classes over the stream")
    p.add_argument("--classes-per-step", type=int, default=10)
    p.add_argument("--dataset-size", type=int, default=10000, help="device-resident images")
    p.add_argument(
        "--epoch-images",
        type=int,
        default=7000,
        help="images per scanned epoch (S = this // batch; B0-10: 5000 new + 2000 memory)",
    )
    p.add_argument("--epoch-batches", type=int, help="fixed S (overrides --epoch-images)")
    p.add_argument(
        "--scan-epochs", type=int, default=3, help="timed scanned epochs (0: time the first call)"
    )
    p.add_argument("--no-epoch-path", dest="epoch_path", action="store_false")
    p.add_argument("--epoch-dtypes", help="dtypes of the scanned-epoch path (default: --dtypes)")
    p.add_argument("--no-sync-variant", dest="sync_variant", action="store_false")
    p.add_argument(
        "--time-budget-s",
        type=float,
        help="skip the remaining configurations (torch and JAX) after this many seconds",
    )
    p.add_argument("--small", action="store_true", help="CPU preset: " + repr(SMALL))
    p.add_argument("--torch", action="store_true", help="also run benchmarks.der_torch")
    p.add_argument("--torch-modes", default="eager,compile,channels_last,amp,compile_cl_amp")
    p.add_argument("--torch-iters", type=int, help="default: --iters")
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="time PyTorch and JAX blocks in turn per configuration (for a shared CPU; "
        "on a GPU the default order, PyTorch first, keeps JAX's memory pool out of its way)",
    )
    p.add_argument("--torch-steps-t", help="default: --steps-t")
    p.add_argument("--torch-batch-sizes", help="default: --batch-sizes")
    p.add_argument("--torch-compile-steps-t", help="torch.compile modes only at these t")
    p.add_argument("--torch-compile-batch-sizes", default="128", help="... and these batches")
    p.add_argument("--out", help="default benchmarks/results/der_step_<devicekind>.json")
    a = p.parse_args(argv)
    if a.small:
        given = {
            x.split("=")[0].lstrip("-").replace("-", "_").removeprefix("no_")
            for x in (argv if argv is not None else sys.argv[1:])
            if x.startswith("--")
        }
        for k, v in SMALL.items():
            if k not in given:
                setattr(a, k, v)
    a.steps_t = _common.parse_int_list(str(a.steps_t))
    a.batch_sizes = _common.parse_int_list(str(a.batch_sizes))
    a.dtypes = _common.parse_str_list(a.dtypes)
    a.epoch_dtypes = _common.parse_str_list(a.epoch_dtypes) if a.epoch_dtypes else a.dtypes
    bad = [d for d in a.dtypes if d not in DTYPES]
    if bad:
        p.error(f"unknown dtypes {bad}; expected some of {sorted(DTYPES)}")
    return a


def _torch_plan(a: argparse.Namespace, der_torch: Any) -> tuple[list[str], Callable, dict]:
    """Which PyTorch modes run where: ``(modes, modes_for(t, batch), summary)``.

    The plain modes run at every ``--torch-steps-t`` x ``--torch-batch-sizes``; the
    ``torch.compile`` modes (slow to compile) only at ``--torch-compile-steps-t`` x
    ``--torch-compile-batch-sizes``.
    """
    modes = _common.parse_str_list(a.torch_modes)
    unknown = [m for m in modes if m not in der_torch.MODES]
    if unknown:
        raise SystemExit(
            f"unknown --torch-modes {unknown}; expected some of {sorted(der_torch.MODES)}"
        )
    steps_t = _common.parse_int_list(a.torch_steps_t) if a.torch_steps_t else a.steps_t
    batches = _common.parse_int_list(a.torch_batch_sizes) if a.torch_batch_sizes else a.batch_sizes
    c_steps = (
        _common.parse_int_list(a.torch_compile_steps_t) if a.torch_compile_steps_t else steps_t
    )
    c_batches = _common.parse_int_list(a.torch_compile_batch_sizes)

    def modes_for(t: int, b: int) -> list[str]:
        if t not in steps_t or b not in batches:
            return []
        return [
            m for m in modes if not der_torch.MODES[m].compile or (t in c_steps and b in c_batches)
        ]

    summary = {
        "modes": modes,
        "steps_t": steps_t,
        "batch_sizes": batches,
        "compile_modes_at": {
            "steps_t": [t for t in c_steps if t in steps_t],
            "batch_sizes": [b for b in c_batches if b in batches],
        },
        "interleaved_with_jax": bool(a.interleave),
    }
    return modes, modes_for, summary


def _torch_part(a: argparse.Namespace, log: Callable[[str], None], start: float) -> dict:
    """Runs the PyTorch reference before JAX (imported only here: torch is optional)."""
    from benchmarks import der_torch

    modes, modes_for, summary = _torch_plan(a, der_torch)
    dev, data, res = der_torch.setup(modes, num_total=a.num_total, dataset_size=a.dataset_size)
    deadline = None if not a.time_budget_s else start + a.time_budget_s
    iters = a.torch_iters or a.iters
    for t in summary["steps_t"]:
        for b in summary["batch_sizes"]:
            for m in modes_for(t, b):
                if deadline is not None and time.perf_counter() > deadline:
                    rec = {"mode": m, "t": t, "batch_size": b, "skipped": "time budget exhausted"}
                else:
                    rec = der_torch.bench_config(
                        m,
                        t=t,
                        batch_size=b,
                        base_width=a.base_width,
                        num_total=a.num_total,
                        classes_per_step=a.classes_per_step,
                        iters=iters,
                        warmup=a.warmup,
                        device=dev,
                        data=data,
                        repeats=a.repeats,
                    )
                res["runs"].append(rec)
                der_torch.log_record(rec, log)
    del data
    der_torch.release_memory(dev)
    res["plan"] = summary
    return res


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    prov = _common.provenance(
        "benchmarks.der_step",
        [
            "jax",
            "jaxlib",
            "jax-cuda12-plugin",
            "jax-cuda13-plugin",
            "flax",
            "optax",
            "numpy",
            "torch",
        ],
        argv,
    )
    result: dict = {**prov, "note": NOTE}

    def log(msg: str) -> None:
        print(msg, flush=True)

    start = time.perf_counter()
    torch_res, torch_side = None, None
    if a.torch and not a.interleave:
        # first: before JAX initialises its backend (and its GPU memory pool)
        torch_res = _torch_part(a, log, start)
        torch_res["elapsed_s"] = time.perf_counter() - start
    elif a.torch:
        from benchmarks import der_torch

        modes, modes_for, summary = _torch_plan(a, der_torch)
        dev_t, data_t, torch_res = der_torch.setup(
            modes, num_total=a.num_total, dataset_size=a.dataset_size
        )
        torch_res["plan"] = summary
        torch_side = TorchSide(
            der_torch, dev_t, data_t, torch_res, modes_for, a.torch_iters or a.iters, a.warmup
        )
    dev = _common.jax_device_info()
    out = a.out or os.path.join(
        _common.RESULTS_DIR, f"der_step_{_common.device_slug(dev['device_kind'])}.json"
    )
    if dev["platform"] == "cpu":
        result["note"] += (
            " CPU run: the host's cores are shared with other jobs, so the figures are noisy "
            "and only indicative; the targets are for one H100."
        )
    result.update(
        device=dev,
        library_features=library_features(),
        settings={k: v for k, v in vars(a).items()},
        jax_x64=bool(jax.config.jax_enable_x64),
        jax_default_matmul_precision=jax.config.jax_default_matmul_precision,
        xla_flags=os.environ.get("XLA_FLAGS"),
        jax=[],
    )
    if torch_res is not None:
        result["torch"] = torch_res

    def on_record(rec: dict) -> None:
        result["jax"].append(rec)
        result["elapsed_s"] = time.perf_counter() - start
        _common.write_json(out, result)

    run_jax_benchmarks(a, log, on_record, start, torch_side)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    if torch_res is not None:
        torch_dev = torch_res["device"]["device"]
        same = (torch_dev.startswith("cuda") and dev["platform"] == "gpu") or (
            torch_dev == "cpu" and dev["platform"] == "cpu"
        )
        result["comparison"] = compare(result["jax"], torch_res["runs"], same)
    result["elapsed_s"] = time.perf_counter() - start
    print(f"wrote {_common.write_json(out, result)}")


if __name__ == "__main__":
    main()
