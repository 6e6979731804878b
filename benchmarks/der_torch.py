"""Plain-PyTorch reference of the DER train step (the speed baseline of ``der_step``).

The same work as ``den_jax.der.train.make_train_step`` at incremental step t:

* CIFAR ResNet-32 (3 stages x 5 BasicBlocks, widths w, 2w, 4w with w = ``base_width``,
  option-A shortcuts = stride-2 subsample + zero channels, BN momentum 0.1 / eps 1e-5,
  ``4w``-d feature);
* t-1 frozen backbones in eval mode under ``torch.no_grad()``, the new backbone in train
  mode, forward + backward;
* main head over the concatenated features, padded to ``num_total`` outputs with unseen
  logits masked; auxiliary head with ``|Y_t|+1`` outputs; loss CE + lambda_a CE_aux
  (lambda_a = 0 at t = 1, 1 after, as in the JAX step);
* SGD (lr 0.1, momentum 0.9, weight decay 5e-4) over the new backbone and both heads;
* augmentation on the device on uint8 batches gathered from a device-resident uint8
  dataset: random crop with 4-pixel zero padding, horizontal flip, brightness jitter
  x U(1 - 63/255, 1 + 63/255), normalisation (the JAX step does exactly these).

Modes (``MODES``): ``eager``; ``compile`` (``torch.compile``, default mode, over
augmentation + forward + loss, so AOTAutograd also compiles the backward);
``channels_last``; ``amp`` (autocast bfloat16); ``compile_cl_amp`` (all three: the
strongest plain-PyTorch setting); ``compile_cudagraphs`` (``mode="reduce-overhead"``,
CUDA only, not run by default).

Importable (``der_step --torch`` calls :func:`run_torch_benchmarks`) or standalone::

    python -m benchmarks.der_torch --steps-t 1,2 --batch-sizes 32 --iters 5
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _common

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
NEG = -1e9  # logit of classes not seen yet (as den_jax.der.model.NEG)


@dataclass(frozen=True)
class Mode:
    """One PyTorch execution setting.

    Attributes:
      compile: wrap augmentation + forward + loss in ``torch.compile``.
      channels_last: NHWC memory format for the backbones and the input batch.
      amp: ``torch.autocast(dtype=torch.bfloat16)`` around the forward pass.
      compile_mode: ``torch.compile``'s ``mode`` (None = default).
      cuda_only: skip on CPU.
    """

    compile: bool = False
    channels_last: bool = False
    amp: bool = False
    compile_mode: str | None = None
    cuda_only: bool = False


MODES: dict[str, Mode] = {
    "eager": Mode(),
    "compile": Mode(compile=True),
    "channels_last": Mode(channels_last=True),
    "amp": Mode(amp=True),
    "compile_cl_amp": Mode(compile=True, channels_last=True, amp=True),
    "compile_cudagraphs": Mode(compile=True, compile_mode="reduce-overhead", cuda_only=True),
}
DEFAULT_MODES = ("eager", "compile", "channels_last", "amp", "compile_cl_amp")


# ----------------------------------------------------------------------------- model


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN -> + option-A shortcut -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
        self.stride = stride
        self.pad = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        sc = x
        if self.stride != 1 or self.pad:
            # Option A (PyCIL DownsampleA): subsample, append zero channels.
            sc = x[:, :, :: self.stride, :: self.stride]
            if self.pad:
                sc = torch.cat([sc, sc.new_zeros(sc.shape[0], self.pad, *sc.shape[2:])], 1)
        return F.relu(h + sc)


class ResNet32(nn.Module):
    """CIFAR ResNet-32 feature extractor: ``[B, 3, H, W]`` -> ``[B, 4 * base_width]``."""

    def __init__(self, base_width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = base_width
        self.conv0 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(w, eps=1e-5, momentum=0.1)
        blocks, c_in = [], w
        for s, c in enumerate((w, 2 * w, 4 * w)):
            for b in range(5):
                blocks.append(BasicBlock(c_in, c, 2 if (s > 0 and b == 0) else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = 4 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.bn0(self.conv0(x))))
        return h.mean(dim=(2, 3))


class DERNet(nn.Module):
    """DER at step t: ``t - 1`` frozen backbones, one trained backbone, two heads.

    Args:
      t: number of backbones (1-based incremental step).
      base_width: ResNet-32 base width.
      num_total: classes over the whole stream (main head is padded to this).
      classes_per_step: classes added per step (|Y_t|).
    """

    def __init__(self, t: int, base_width: int, num_total: int, classes_per_step: int) -> None:
        super().__init__()
        if t < 1 or t * classes_per_step > num_total:
            raise ValueError(f"t={t} x {classes_per_step} classes exceeds num_total={num_total}")
        self.old = nn.ModuleList([ResNet32(base_width) for _ in range(t - 1)])
        for bb in self.old:
            bb.eval()
            bb.requires_grad_(False)
        self.new = ResNet32(base_width)
        f = self.new.feature_dim
        self.fc = nn.Linear(f * t, num_total)
        self.aux = nn.Linear(f, classes_per_step + 1)
        self.num_old = (t - 1) * classes_per_step
        self.num_seen = t * classes_per_step
        self.num_total = num_total
        self.register_buffer("seen", torch.arange(num_total) < self.num_seen, persistent=False)

    def train(self, mode: bool = True) -> DERNet:
        """Only the new backbone and the heads switch mode; old backbones stay in eval."""
        super().train(mode)
        for bb in self.old:
            bb.eval()
        return self

    @torch.no_grad()
    def calibrate_old(self, x: torch.Tensor) -> None:
        """Sets the frozen backbones' BN running statistics to the statistics of batch ``x``.

        Freshly initialised backbones in eval mode (mean 0, variance 1) blow the features up
        through 15 residual blocks; real frozen backbones carry trained statistics. Speed
        does not depend on it, but the reported losses stay sane.
        """
        for bb in self.old:
            bns = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one batch -> its statistics
            bb.train()
            bb(x)
            for m in bns:
                m.momentum = 0.1
            bb.eval()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.new.parameters(), *self.fc.parameters(), *self.aux.parameters()]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            old = [bb(x) for bb in self.old]
        new = self.new(x)
        u = torch.cat([*old, new], dim=1)
        logits = self.fc(u).masked_fill(~self.seen, NEG)
        return logits, self.aux(new)


# ----------------------------------------------------------------------------- data


def augment(
    data_x: torch.Tensor,
    idx: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    pad: int = 4,
    brightness: float = 63.0 / 255.0,
    channels_last: bool = False,
) -> torch.Tensor:
    """Gathers a uint8 NHWC batch on the device and augments it (as ``den_jax.der.augment``).

    Random crop with ``pad`` zero padding, horizontal flip (p = 1/2), brightness x
    U(1-b, 1+b) clipped to [0, 1], ``(x - mean) / std``.

    Returns:
      float32 ``[B, C, H, W]`` (NCHW-contiguous, or channels_last-strided).
    """
    xb = data_x[idx]  # [B, H, W, C] uint8
    b, h, w, _ = xb.shape
    dev = xb.device
    x = xb.float() / 255.0
    if pad:
        x = F.pad(x, (0, 0, pad, pad, pad, pad))  # pad W and H of NHWC
        offs = torch.randint(0, 2 * pad + 1, (b, 2), device=dev)
        rows = (offs[:, :1] + torch.arange(h, device=dev))[:, :, None]  # [B, H, 1]
        cols = (offs[:, 1:] + torch.arange(w, device=dev))[:, None, :]  # [B, 1, W]
        x = x[torch.arange(b, device=dev)[:, None, None], rows, cols]  # [B, H, W, C]
    flip = torch.rand(b, 1, 1, 1, device=dev) < 0.5
    x = torch.where(flip, x.flip(2), x)
    if brightness > 0:
        lo = max(0.0, 1.0 - brightness)
        factor = lo + (1.0 + brightness - lo) * torch.rand(b, 1, 1, 1, device=dev)
        x = (x * factor).clamp(0.0, 1.0)
    x = (x - mean) / std
    x = x.permute(0, 3, 1, 2)  # NCHW view with channels_last strides
    return x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def synthetic_data(
    n: int, num_classes: int, device: torch.device, seed: int = 0, image_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic CIFAR-shaped uint8 images ``[n, 32, 32, 3]`` and int64 labels, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, image_size, image_size, 3), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- step


def make_step(
    net: DERNet,
    data_x: torch.Tensor,
    data_y: torch.Tensor,
    mode: Mode,
    *,
    aux_weight: float,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Builds ``step(idx) -> loss`` (one SGD step of the DER loss on batch ``data[idx]``)."""
    dev = data_x.device
    mean = torch.tensor(CIFAR100_MEAN, device=dev)
    std = torch.tensor(CIFAR100_STD, device=dev)
    opt = torch.optim.SGD(
        net.trainable_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    num_old = net.num_old
    amp = (
        (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16))
        if mode.amp
        else contextlib.nullcontext
    )

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = augment(data_x, idx, mean, std, channels_last=mode.channels_last)
        y = data_y[idx]
        y_aux = torch.where(y < num_old, torch.zeros_like(y), y - num_old + 1)
        with amp():
            logits, aux_logits = net(x)
        ce = F.cross_entropy(logits.float(), y)
        aux = F.cross_entropy(aux_logits.float(), y_aux)
        return ce + aux_weight * aux

    if mode.compile:
        kw = {"dynamic": False}
        if mode.compile_mode:
            kw["mode"] = mode.compile_mode
        loss_fn = torch.compile(loss_fn, **kw)

    def step(idx: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Prepared:
    """A configuration made ready to time: ``block(iters)`` runs ``iters`` steps.

    Attributes:
      rec: the configuration's record (filled by :func:`finalize`).
      block: runs ``iters`` steps between two device synchronisations; returns seconds.
        None when the configuration was skipped or failed (``rec`` says why).
      blocks: seconds of the blocks timed so far.
    """

    rec: dict
    block: Callable[[int], float] | None
    blocks: list[float] = field(default_factory=list)


def prepare_config(
    mode_name: str,
    *,
    t: int,
    batch_size: int,
    base_width: int,
    num_total: int,
    classes_per_step: int,
    warmup: int,
    device: torch.device,
    data: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
) -> Prepared:
    """Builds one (mode, t, batch) configuration and runs its first ``warmup`` steps.

    The first step's time (compilation for torch.compile, cuDNN autotuning, allocator
    warm-up) is recorded as ``first_step_s``; the warm-up steps are not timed.
    """
    mode = MODES[mode_name]
    rec: dict = {"mode": mode_name, "t": t, "batch_size": batch_size}
    if mode.cuda_only and device.type != "cuda":
        rec["skipped"] = "CUDA only"
        return Prepared(rec, None)
    torch.manual_seed(seed + t)
    if mode.compile:
        torch._dynamo.reset()
    net = DERNet(t, base_width, num_total, classes_per_step).to(device)
    if mode.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    data_x, data_y = data[0], data[1] % net.num_seen  # labels of the classes seen at step t
    step = make_step(net, data_x, data_y, mode, aux_weight=0.0 if t == 1 else 1.0)
    g = torch.Generator(device=device).manual_seed(seed)
    pool = [
        torch.randint(0, len(data_x), (batch_size,), device=device, generator=g) for _ in range(8)
    ]
    mean = torch.tensor(CIFAR100_MEAN, device=device)
    std = torch.tensor(CIFAR100_STD, device=device)
    net.calibrate_old(augment(data_x, pool[-1], mean, std, channels_last=mode.channels_last))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _sync(device)
        t0 = time.perf_counter()
        loss = step(pool[0])
        _sync(device)
        rec["first_step_s"] = time.perf_counter() - t0
        for i in range(1, max(warmup, 1)):
            loss = step(pool[i % len(pool)])
        _sync(device)
    except Exception as e:  # noqa: BLE001 -- record why a mode cannot run here
        _record_error(rec, e)
        return Prepared(rec, None)
    rec.update(warmup=max(warmup, 1), final_loss=float(loss))

    def block(iters: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for i in range(iters):
            loss = step(pool[i % len(pool)])
        _sync(device)
        sec = time.perf_counter() - t0
        rec["final_loss"] = float(loss)
        return sec

    return Prepared(rec, block)


def _record_error(rec: dict, e: Exception) -> None:
    rec["error"] = f"{type(e).__name__}: {e}"[:2000]
    rec["traceback_tail"] = traceback.format_exc()[-1500:]


def time_block(prep: Prepared, iters: int) -> None:
    """Times one block of ``iters`` steps (an error ends the configuration, recorded)."""
    if prep.block is None:
        return
    try:
        prep.blocks.append(prep.block(iters))
    except Exception as e:  # noqa: BLE001
        _record_error(prep.rec, e)
        prep.block = None


def finalize(prep: Prepared, iters: int, device: torch.device) -> dict:
    """Fills the record from the timed blocks: best (``images_per_s``) and median."""
    rec = prep.rec
    if not prep.blocks or "error" in rec:
        return rec
    blocks = prep.blocks
    sec = min(blocks)  # best block: the least disturbed by other work on the host
    step_s = sec / iters
    rec.update(
        images_per_s=rec["batch_size"] * iters / sec,
        images_per_s_median=rec["batch_size"] * iters / sorted(blocks)[len(blocks) // 2],
        step_ms=1e3 * step_s,
        iters=iters,
        repeats=len(blocks),
        compile_s=(rec["first_step_s"] - step_s) if MODES[rec["mode"]].compile else None,
        peak_memory_bytes=(
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
    )
    if not math.isfinite(rec["final_loss"]):
        rec["warning"] = "non-finite loss"
    return rec


def bench_config(
    mode_name: str,
    *,
    iters: int,
    repeats: int = 1,
    device: torch.device,
    **kwargs,
) -> dict:
    """Times one (mode, t, batch) configuration: :func:`prepare_config`, blocks, finalize.

    ``repeats`` blocks of ``iters`` steps are timed, each between two device
    synchronisations; ``images_per_s`` comes from the fastest block
    (``images_per_s_median`` from the median one).

    Returns:
      dict with ``images_per_s``, ``step_ms``, ``first_step_s`` (time of the first call),
      ``compile_s`` (first call minus one steady step; torch.compile modes only),
      ``peak_memory_bytes`` (CUDA only), ``final_loss``, or ``error`` / ``skipped``.
    """
    prep = prepare_config(mode_name, device=device, **kwargs)
    for _ in range(max(repeats, 1)):
        time_block(prep, iters)
    return finalize(prep, iters, device)


def log_record(rec: dict, log: Callable[[str], None]) -> None:
    """One progress line per configuration."""
    head = f"torch {rec['mode']:<18} t={rec['t']:<2} batch={rec['batch_size']:<5}"
    if "images_per_s" in rec:
        log(f"{head} {rec['images_per_s']:10.1f} img/s  first step {rec['first_step_s']:.1f} s")
    else:
        log(f"{head} {rec.get('error') or rec.get('skipped')}")


def use_fresh_compile_cache() -> dict:
    """Points Inductor's and Triton's on-disk caches at a new temporary folder.

    Without this a second run finds the compiled kernels of the first one and
    ``torch.compile`` reports a few seconds instead of a cold compilation.
    """
    folder = tempfile.mkdtemp(prefix="der_torch_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
    return {"fresh_dir": folder, "note": "cold torch.compile: empty Inductor/Triton caches"}


def torch_device_info(device: torch.device) -> dict:
    """Name and settings of the torch device (what the figures depend on)."""
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        info.update(
            name=torch.cuda.get_device_name(device),
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        info["name"] = _common.machine_info()["cpu_model"] or "cpu"
    return info


def amp_cpu_probe(device: torch.device) -> dict:
    """Checks whether bfloat16 autocast runs a conv + backward on this device."""
    try:
        conv = nn.Conv2d(3, 4, 3, padding=1).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            y = conv(torch.randn(2, 3, 8, 8, device=device))
        y.float().sum().backward()
        return {"works": True, "output_dtype": str(y.dtype)}
    except Exception as e:  # noqa: BLE001
        return {"works": False, "error": f"{type(e).__name__}: {e}"[:500]}


def setup(
    modes: Sequence[str],
    *,
    num_total: int,
    dataset_size: int,
    device: str | None = None,
    fresh_compile_cache: bool = True,
) -> tuple[torch.device, tuple[torch.Tensor, torch.Tensor], dict]:
    """Device, device-resident synthetic data and the result header of a PyTorch run.

    Args:
      modes: names in :data:`MODES` (checked).
      num_total: label range of the synthetic data.
      dataset_size: images of the device-resident synthetic uint8 dataset.
      device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
      fresh_compile_cache: point Inductor and Triton at a new, empty cache folder, so
        ``compile_s`` is a cold compilation (as JAX's, which has no persistent cache here).

    Returns:
      ``(device, (data_x, data_y), {"device", "amp_probe", "compile_cache", "runs": []})``.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown torch modes {unknown}; expected some of {sorted(MODES)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cache = None
    if fresh_compile_cache and any(MODES[m].compile for m in modes):
        cache = use_fresh_compile_cache()
    data = synthetic_data(dataset_size, num_total, dev)
    out = {
        "device": torch_device_info(dev),
        "amp_probe": amp_cpu_probe(dev),
        "compile_cache": cache or "default (warm caches make compile_s small)",
        "runs": [],
    }
    return dev, data, out


def run_torch_benchmarks(
    *,
    steps_t: Sequence[int],
    batch_sizes: Sequence[int],
    modes: Sequence[str],
    base_width: int,
    num_total: int,
    classes_per_step: int,
    iters: int,
    warmup: int,
    dataset_size: int,
    repeats: int = 1,
    device: str | None = None,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
    fresh_compile_cache: bool = True,
) -> dict:
    """Runs every (t, batch, mode) configuration on one device, one after the other.

    Args:
      steps_t: incremental steps t (number of backbones).
      batch_sizes: batch sizes.
      modes: names in :data:`MODES`.
      base_width, num_total, classes_per_step: model shape.
      iters, warmup: timed and excluded steps.
      dataset_size: images of the device-resident synthetic uint8 dataset.
      repeats: timed blocks of ``iters`` steps (best and median reported).
      device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
      log: progress printer.
      deadline: ``time.perf_counter()`` value after which configurations are skipped.
      fresh_compile_cache: see :func:`setup`.

    Returns:
      ``{"device": ..., "amp_probe": ..., "compile_cache": ..., "runs": [dicts]}``.
    """
    dev, data, out = setup(
        modes,
        num_total=num_total,
        dataset_size=dataset_size,
        device=device,
        fresh_compile_cache=fresh_compile_cache,
    )
    for t in steps_t:
        for b in batch_sizes:
            for m in modes:
                if deadline is not None and time.perf_counter() > deadline:
                    rec = {"mode": m, "t": t, "batch_size": b, "skipped": "time budget exhausted"}
                    out["runs"].append(rec)
                    continue
                rec = bench_config(
                    m,
                    t=t,
                    batch_size=b,
                    base_width=base_width,
                    num_total=num_total,
                    classes_per_step=classes_per_step,
                    iters=iters,
                    warmup=warmup,
                    device=dev,
                    data=data,
                    repeats=repeats,
                )
                out["runs"].append(rec)
                log_record(rec, log)
    del data
    release_memory(dev)
    return out


def release_memory(device: torch.device) -> None:
    """Returns PyTorch's cached GPU memory to the driver (before JAX takes its pool)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps-t", default="1,2", help="incremental steps t (comma list)")
    p.add_argument("--batch-sizes", default="128")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"some of {sorted(MODES)}")
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--num-total", type=int, default=100)
    p.add_argument("--classes-per-step", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dataset-size", type=int, default=10000)
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: CUDA when available")
    p.add_argument("--out", help="default benchmarks/results/der_torch_<device>.json")
    a = p.parse_args(argv)
    prov = _common.provenance("benchmarks.der_torch", ["torch", "numpy"], argv)
    res = run_torch_benchmarks(
        steps_t=_common.parse_int_list(a.steps_t),
        batch_sizes=_common.parse_int_list(a.batch_sizes),
        modes=_common.parse_str_list(a.modes),
        base_width=a.base_width,
        num_total=a.num_total,
        classes_per_step=a.classes_per_step,
        iters=a.iters,
        warmup=a.warmup,
        dataset_size=a.dataset_size,
        repeats=a.repeats,
        device=a.device,
    )
    slug = _common.device_slug(
        res["device"].get("name", "cpu") if "cuda" in res["device"]["device"] else "cpu"
    )
    out = a.out or os.path.join(_common.RESULTS_DIR, f"der_torch_{slug}.json")
    result = {
        **prov,
        "note": "Synthetic CIFAR-shaped uint8 data; figures are for speed only.",
        "settings": vars(a),
        "torch": res,
    }
    print(f"wrote {_common.write_json(out, result)}")


if __name__ == "__main__":
    main()
