"""Eager-PyTorch reference of the whole DER class-incremental protocol (``den_jax.der``).

At every incremental step t it does what ``den_jax.der.step.learn_step`` does:

* **model**: a new CIFAR ResNet-32 (``benchmarks.der_torch.ResNet32``); at t > 0 the
  finished backbone is frozen (eval mode, ``requires_grad=False``, run under
  ``torch.no_grad``) and the new one starts as its copy (weights and BN statistics); the
  main head over the concatenated features inherits the [old features x old classes]
  block (PyCIL ``update_fc``), everything else is fresh (kaiming-uniform, bias 0); a fresh
  auxiliary head with ``|Y_t| + 1`` outputs (old classes -> 0);
* **training** on the new classes' images plus the memory: CE + lambda_a CE_aux
  (lambda_a = 0 at the first step), SGD (momentum 0.9, coupled weight decay, first-step
  and later lr / weight decay), ``MultiStepLR`` (x0.1) when there are milestones,
  shuffled batches with the last partial batch kept, augmentation on uint8 batches
  (``benchmarks.der_torch.augment``: random crop with 4-pixel zero padding, flip,
  brightness x U(1 - 63/255, 1 + 63/255), normalisation);
* **weight alignment** of the main head (t > 0): the new classes' rows scaled by
  mean ||W_old row|| / mean ||W_new row|| (``den_jax.der.bias_correction.weight_align``);
* **herding** (iCaRL) with a fixed total memory: ``memory // seen`` exemplars per class,
  old classes cut to their first ones, new classes herded on the L2-normalised
  concatenated features of the final model (eval mode, normalisation only);
* **evaluation**: top-1 / top-5 on the test images of all classes seen so far, and NME on
  the memory's class means (as ``learn_step`` reports).

Per step it records the seconds (model set-up to evaluation, as ``learn_step``'s
``seconds``), the part spent training, the training images (pool x epochs) and the
accuracies. No checkpoints are written.

Data: MNIST-format idx files (``benchmarks.mnist_stream.load_stream``: the same class
order and training subset as ``experiments.cifar100_der --dataset mnist``)::

    python -m benchmarks.der_torch_protocol --data-dir ../shared/data/mnist \\
        --init-classes 2 --increment 2 --epochs 4 --batch-size 32 --memory 100 \\
        --train-per-class 300 --base-width 16 --out /tmp/der_torch_protocol.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _common, mnist_stream
from benchmarks.der_torch import ResNet32, augment, torch_device_info
from den_jax.der.memory import herding

__all__ = [
    "DERNetwork",
    "ProtocolConfig",
    "build_parser",
    "config_from_args",
    "main",
    "run_protocol",
    "weight_align",
]


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Settings of a reference run (names as ``den_jax.der.config.DERConfig``).

    Attributes:
      base_width: ResNet-32 first-stage channels.
      first_epochs, first_lr, first_milestones, first_wd: schedule of step 0.
      later_epochs, later_lr, later_milestones, later_wd: schedule of steps >= 1.
      momentum: SGD momentum.
      batch_size: images per optimizer step.
      memory: exemplars in total (fixed-total mode).
      aux_weight: lambda_a (0 at step 0 whatever this says).
      bias_correction: ``"weight_align"`` or ``"none"``.
      seed: torch seed (initialisation, augmentation) and numpy shuffling seed.
      eval_batch_size: batch of evaluation and feature extraction.
      mean, std: per-channel normalisation constants.
    """

    base_width: int = 16
    first_epochs: int = 4
    first_lr: float = 0.1
    first_milestones: tuple[int, ...] = ()
    first_wd: float = 5e-4
    later_epochs: int = 4
    later_lr: float = 0.1
    later_milestones: tuple[int, ...] = ()
    later_wd: float = 2e-4
    momentum: float = 0.9
    batch_size: int = 32
    memory: int = 100
    aux_weight: float = 1.0
    bias_correction: str = "weight_align"
    seed: int = 1993
    eval_batch_size: int = 256
    mean: tuple[float, ...] = mnist_stream.MNIST_MEAN
    std: tuple[float, ...] = mnist_stream.MNIST_STD

    def schedule(self, t: int) -> dict:
        """``{"epochs", "lr", "milestones", "weight_decay", "aux_weight"}`` of step ``t``."""
        p = "first" if t == 0 else "later"
        epochs = getattr(self, f"{p}_epochs")
        return {
            "epochs": epochs,
            "lr": getattr(self, f"{p}_lr"),
            "milestones": [m for m in getattr(self, f"{p}_milestones") if 0 < m < epochs],
            "weight_decay": getattr(self, f"{p}_wd"),
            "aux_weight": 0.0 if t == 0 else self.aux_weight,
        }


def _linear(fan_in: int, fan_out: int) -> nn.Linear:
    """PyCIL ``SimpleLinear``: kaiming-uniform (nonlinearity 'linear'), bias 0."""
    lin = nn.Linear(fan_in, fan_out)
    nn.init.kaiming_uniform_(lin.weight, nonlinearity="linear")
    nn.init.zeros_(lin.bias)
    return lin


class DERNetwork(nn.Module):
    """DER at one step: frozen old backbones, the trained one, main and auxiliary heads.

    Args:
      old: frozen backbones (put in eval mode, gradients off).
      new: the backbone trained at this step.
      fc: main head, ``Linear(F * (len(old) + 1) -> num_seen)``.
      aux: auxiliary head, ``Linear(F -> num_seen - num_old + 1)``.
      num_old: classes seen before this step.
    """

    def __init__(
        self, old: Sequence[nn.Module], new: nn.Module, fc: nn.Linear, aux: nn.Linear, num_old: int
    ) -> None:
        super().__init__()
        self.old = nn.ModuleList(old)
        for bb in self.old:
            bb.eval()
            bb.requires_grad_(False)
        self.new, self.fc, self.aux = new, fc, aux
        self.num_old = num_old
        self.num_seen = fc.out_features

    @classmethod
    def first(cls, base_width: int, in_channels: int, num_first: int) -> DERNetwork:
        """The network of step 0: one fresh backbone."""
        new = ResNet32(base_width, in_channels)
        f = new.feature_dim
        return cls([], new, _linear(f, num_first), _linear(f, num_first + 1), 0)

    def expand(self, num_new: int) -> DERNetwork:
        """The next step's network (see the module docstring); ``self`` is left as it is."""
        f, t = self.new.feature_dim, len(self.old) + 1
        frozen = copy.deepcopy(self.new)
        fc = _linear(f * (t + 1), self.num_seen + num_new)
        with torch.no_grad():
            fc.weight[: self.num_seen, : f * t] = self.fc.weight
            fc.bias[: self.num_seen] = self.fc.bias
        return DERNetwork(
            [*self.old, frozen], copy.deepcopy(self.new), fc, _linear(f, num_new + 1), self.num_seen
        )

    def train(self, mode: bool = True) -> DERNetwork:
        """Only the new backbone and the heads switch mode; old backbones stay in eval."""
        super().train(mode)
        for bb in self.old:
            bb.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """New backbone and both heads (what the optimizer updates)."""
        return [*self.new.parameters(), *self.fc.parameters(), *self.aux.parameters()]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B, num_seen], aux_logits [B, num_new + 1], features [B, F * t])``."""
        with torch.no_grad():
            old = [bb(x) for bb in self.old]
        new = self.new(x)
        u = torch.cat([*old, new], dim=1)
        return self.fc(u), self.aux(new), u


def weight_align(net: DERNetwork) -> float:
    """Scales the new classes' head rows to the old rows' mean norm; returns gamma."""
    if net.num_old == 0:
        return 1.0
    with torch.no_grad():
        norms = net.fc.weight.norm(dim=1)
        gamma = norms[: net.num_old].mean() / norms[net.num_old :].mean()
        net.fc.weight[net.num_old :] *= gamma
    return float(gamma)


@torch.no_grad()
def _predict(
    net: DERNetwork, x_u8: torch.Tensor, mean, std, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits and concatenated features of uint8 NHWC images (normalise only)."""
    net.eval()
    logits, feats = [], []
    for i in range(0, len(x_u8), batch):
        x = ((x_u8[i : i + batch].float() / 255.0 - mean) / std).permute(0, 3, 1, 2)
        lg, _, u = net(x.contiguous())
        logits.append(lg)
        feats.append(u)
    return torch.cat(logits), torch.cat(feats)


def _topk(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float(100.0 * (top == y[:, None]).any(1).float().mean())


def _class_means(feats: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    f = feats.astype(np.float64)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
    out = np.zeros((n, f.shape[1]))
    for c in range(n):
        if (labels == c).any():
            m = f[labels == c].mean(0)
            out[c] = m / np.linalg.norm(m)
    return out


def _train_step_epochs(net, data_x, data_y, pool, cfg, t, mean, std, rng) -> list[dict]:
    """The step's epochs; metrics accumulate as tensors and are read once per epoch."""
    sched = cfg.schedule(t)
    opt = torch.optim.SGD(
        net.trainable_parameters(),
        lr=sched["lr"],
        momentum=cfg.momentum,
        weight_decay=sched["weight_decay"],
    )
    lr_sched = (
        torch.optim.lr_scheduler.MultiStepLR(opt, sched["milestones"], gamma=0.1)
        if sched["milestones"]
        else None
    )
    aux_w, num_old = sched["aux_weight"], net.num_old
    history = []
    for _ in range(sched["epochs"]):
        net.train()
        perm = torch.from_numpy(pool[rng.permutation(len(pool))].astype(np.int64))
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x = augment(data_x, idx, mean, std)
            y = data_y[idx]
            y_aux = torch.where(y < num_old, torch.zeros_like(y), y - num_old + 1)
            logits, aux_logits, _ = net(x)
            loss = F.cross_entropy(logits, y) + aux_w * F.cross_entropy(aux_logits, y_aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        if lr_sched is not None:
            lr_sched.step()
        history.append(
            {"loss": float(loss_sum) / len(perm), "acc": 100.0 * float(correct) / len(perm)}
        )
    return history


def run_protocol(
    stream: mnist_stream.Stream,
    cfg: ProtocolConfig,
    *,
    log: Callable[[str], None] = print,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Runs every step of ``stream``; returns the per-step figures (JSON-friendly).

    Args:
      stream: the data (``benchmarks.mnist_stream.Stream``: uint8 NHWC images, labels
        as positions in the class order).
      cfg: the settings.
      log: progress printer (one line per step).
      on_step: called with the figures so far after every step (partial results).

    Returns:
      ``{"steps", "num_seen", "pool_sizes", "train_images", "seconds", "train_seconds",
      "images_per_s", "top1_curve", "top5_curve", "nme_top1_curve",
      "avg_incremental_accuracy", "weight_align_gamma", "memory_sizes", "epochs",
      "backbone_params"}``.
    """
    if cfg.bias_correction not in ("weight_align", "none"):
        raise ValueError(
            f"bias_correction must be 'weight_align' or 'none', got {cfg.bias_correction!r}"
        )
    torch.manual_seed(cfg.seed)
    c = stream.x_train.shape[-1]
    if len(cfg.mean) != c or len(cfg.std) != c:
        raise ValueError(f"mean/std need {c} values (image channels), got {cfg.mean}, {cfg.std}")
    mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
    data_x = torch.from_numpy(np.ascontiguousarray(stream.x_train))
    data_y = torch.from_numpy(np.asarray(stream.y_train, np.int64))
    x_test = torch.from_numpy(np.ascontiguousarray(stream.x_test))
    y_test = torch.from_numpy(np.asarray(stream.y_test, np.int64))
    y_np = np.asarray(stream.y_train)
    out: dict = {k: [] for k in _RESULT_LISTS}
    out["steps"] = list(stream.sizes)
    net: DERNetwork | None = None
    mem: dict[int, np.ndarray] = {}
    lo = 0
    for t, hi in enumerate(stream.bounds):
        t0 = time.perf_counter()
        net = (
            DERNetwork.first(cfg.base_width, c, hi) if net is None else net.expand(stream.sizes[t])
        )
        new_idx = np.flatnonzero((y_np >= lo) & (y_np < hi))
        mem_idx = np.concatenate([v for v in mem.values()]) if mem else np.zeros(0, np.int64)
        pool = np.concatenate([new_idx, mem_idx]).astype(np.int64)
        rng = np.random.default_rng([cfg.seed, t])
        history = _train_step_epochs(net, data_x, data_y, pool, cfg, t, mean, std, rng)
        t_train = time.perf_counter() - t0
        gamma = weight_align(net) if cfg.bias_correction == "weight_align" and t > 0 else None
        quota = cfg.memory // hi
        mem = {k: v[:quota] for k, v in mem.items()}
        for cls in range(lo, hi):
            idx = np.flatnonzero(y_np == cls)
            feats = _predict(net, data_x[idx], mean, std, cfg.eval_batch_size)[1].numpy()
            mem[cls] = idx[herding(feats, quota)]
        all_mem = np.concatenate(list(mem.values()))
        mem_feats = _predict(net, data_x[all_mem], mean, std, cfg.eval_batch_size)[1].numpy()
        means = _class_means(mem_feats, y_np[all_mem], hi)
        sel = y_test < hi
        logits, feats = _predict(net, x_test[sel], mean, std, cfg.eval_batch_size)
        f = feats.numpy().astype(np.float64)
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
        dist = np.sum(f**2, 1)[:, None] - 2 * f @ means.T + np.sum(means**2, 1)[None, :]
        nme_pred = np.argmin(dist, axis=1)  # PyCIL NME: nearest normalised class mean
        sec = time.perf_counter() - t0
        images = len(pool) * cfg.schedule(t)["epochs"]
        out["num_seen"].append(hi)
        out["pool_sizes"].append(int(len(pool)))
        out["train_images"].append(int(images))
        out["seconds"].append(sec)
        out["train_seconds"].append(t_train)
        out["images_per_s"].append(images / sec)
        out["top1_curve"].append(_topk(logits, y_test[sel], 1))
        out["top5_curve"].append(_topk(logits, y_test[sel], 5))
        out["nme_top1_curve"].append(float(100.0 * np.mean(nme_pred == y_test[sel].numpy())))
        out["weight_align_gamma"].append(gamma)
        out["memory_sizes"].append(int(len(all_mem)))
        out["epochs"].append(history)
        out["backbone_params"].append(sum(p.numel() for p in net.new.parameters()))
        log(
            f"torch step {t}: {hi} classes, top1 {out['top1_curve'][-1]:.2f}, last epoch loss "
            f"{history[-1]['loss'] if history else float('nan'):.4f} train acc "
            f"{history[-1]['acc'] if history else float('nan'):.1f}, "
            f"{sec:.1f} s ({t_train:.1f} s training, {images / sec:.0f} img/s)"
        )
        lo = hi
        out["avg_incremental_accuracy"] = float(np.mean(out["top1_curve"]))
        out["finite"] = all(math.isfinite(v) for v in out["top1_curve"])
        out["complete"] = t == len(stream.sizes) - 1
        if on_step is not None:
            on_step(out)
    return out


_RESULT_LISTS = (
    "num_seen",
    "pool_sizes",
    "train_images",
    "seconds",
    "train_seconds",
    "images_per_s",
    "top1_curve",
    "top5_curve",
    "nme_top1_curve",
    "weight_align_gamma",
    "memory_sizes",
    "epochs",
    "backbone_params",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add = p.add_argument
    add("--data-dir", required=True, help="MNIST-format idx files")
    add("--init-classes", type=int, default=2)
    add("--increment", type=int, default=2)
    add("--epochs", type=int, default=4, help="epochs of every step")
    add("--milestones", type=int, nargs="*", default=[], help="lr x0.1 at these epochs")
    add("--lr", type=float, default=0.1)
    add("--first-wd", type=float, default=5e-4)
    add("--later-wd", type=float, default=2e-4)
    add("--batch-size", type=int, default=32)
    add("--memory", type=int, default=100, help="total exemplars (fixed-total mode)")
    add("--train-per-class", type=int, default=None)
    add("--test-per-class", type=int, default=None)
    add("--base-width", type=int, default=16)
    add("--aux-weight", type=float, default=1.0)
    add("--bias-correction", choices=("weight_align", "none"), default="weight_align")
    add("--seed", type=int, default=1993, help="training seed (also the subsampling seed)")
    add("--order-seed", type=int, default=1993, help="class-order seed; -1 = natural")
    add("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    add("--out", help="default benchmarks/results/der_torch_protocol_cpu.json")
    return p


def config_from_args(a: argparse.Namespace) -> ProtocolConfig:
    """The :class:`ProtocolConfig` of parsed command-line options."""
    ms = tuple(a.milestones)
    return ProtocolConfig(
        base_width=a.base_width,
        first_epochs=a.epochs,
        first_lr=a.lr,
        first_milestones=ms,
        first_wd=a.first_wd,
        later_epochs=a.epochs,
        later_lr=a.lr,
        later_milestones=ms,
        later_wd=a.later_wd,
        batch_size=a.batch_size,
        memory=a.memory,
        aux_weight=a.aux_weight,
        bias_correction=a.bias_correction,
        seed=a.seed,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    prov = _common.provenance("benchmarks.der_torch_protocol", ["torch", "numpy"], argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    stream = mnist_stream.load_stream(
        a.data_dir,
        init_classes=a.init_classes,
        increment=a.increment,
        order_seed=a.order_seed,
        train_per_class=a.train_per_class,
        test_per_class=a.test_per_class,
        seed=a.seed,
    )
    cfg = config_from_args(a)
    out = a.out or os.path.join(_common.RESULTS_DIR, "der_torch_protocol_cpu.json")
    result = {
        **prov,
        "device": torch_device_info(torch.device("cpu")),
        "settings": vars(a),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
        "data": {
            "dir": a.data_dir,
            "image_shape": list(stream.x_train.shape[1:]),
            "train_images": int(len(stream.x_train)),
            "test_images": int(len(stream.x_test)),
            "class_order": stream.class_order.tolist(),
            "train_fingerprint": mnist_stream.fingerprint(
                stream.x_train, stream.y_train, stream.class_order
            ),
        },
        "results": None,
    }

    def save(res: dict) -> None:  # after every step: a run stopped early keeps its steps
        result["results"] = res
        _common.write_json(out, result)

    t0 = time.perf_counter()
    res = run_protocol(stream, cfg, on_step=save)
    res["protocol_seconds"] = time.perf_counter() - t0
    save(res)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
