"""Shared pieces of the baselines: config, task loss, the shared-parameter view, training.

All baselines train on the same :class:`~den_jax.network.ExpandableNet` as DEN and run
through :func:`den_jax.training.train_steps` (one compiled loop per task). A *shared*
parameter is one that more than one task uses: the shared input layer (if the network has
one) and every hidden layer. A task's own input head and output head are private to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from den_jax.network import SHARED_INPUT, ExpandableNet, apply, resolve_task
from den_jax.training import evaluate_loss, train_steps

LOSSES = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Training budget and penalties of the baselines.

    Attributes:
      steps: optimizer steps per task (DEN's official phase length is 4300).
      batch_size: examples per step (256 officially).
      learning_rate: Adam's initial learning rate.
      lr_decay: multiplied into the rate every ``decay_every`` examples (official 0.95
        per 55,000 examples, i.e. per epoch).
      decay_every: examples between decays; 0 disables the decay.
      weight_decay: coefficient of ``sum(0.5 * ||v||^2)`` over the parameters the task
        trains (the official ``l2_lambda`` = 1e-4).
      loss: ``"softmax"`` (cross-entropy on integer labels) or ``"sigmoid"`` (the official
        code's per-class sigmoid cross-entropy on one-hot labels).
      l2_lambda: L2-transfer strength ``lam/2 * ||theta - theta_prev||^2`` on shared
        parameters.
      ewc_lambda: EWC strength ``lam/2 * sum F (theta - theta*)^2`` (Kirkpatrick et al.
        2017, Eq. 3).
      fisher_samples: training examples used to estimate the diagonal Fisher.
    """

    steps: int = 4300
    batch_size: int = 256
    learning_rate: float = 1e-3
    lr_decay: float = 0.95
    decay_every: int = 55000
    weight_decay: float = 1e-4
    loss: str = "softmax"
    l2_lambda: float = 0.5
    ewc_lambda: float = 1000.0
    fisher_samples: int = 1024

    def __post_init__(self):
        for name in ("steps", "batch_size", "fisher_samples"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"BaselineConfig.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.decay_every, (int, np.integer)) or self.decay_every < 0:
            raise ValueError(f"BaselineConfig.decay_every must be >= 0, got {self.decay_every!r}")
        for name in ("learning_rate", "lr_decay"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"BaselineConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "l2_lambda", "ewc_lambda"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"BaselineConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.loss not in LOSSES:
            raise ValueError(f"BaselineConfig.loss must be one of {LOSSES}, got {self.loss!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BaselineConfig:
        """Builds a config from a dict; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown baseline config key(s) {unknown}; expected {sorted(known)}")
        return cls(**dict(data))

    def schedule(self, batch_size: int | None = None) -> optax.Schedule:
        """``lr * decay ** floor(step * batch / decay_every)`` (official DEN, L344-351)."""
        b = self.batch_size if batch_size is None else batch_size
        if self.decay_every == 0:
            return optax.constant_schedule(self.learning_rate)
        lr, decay, every = self.learning_rate, self.lr_decay, self.decay_every
        return lambda step: lr * decay ** jnp.floor(step * b / every)


def task_loss(logits: jax.Array, y: jax.Array, kind: str) -> jax.Array:
    """Mean loss of a batch: ``logits [B, C]``, integer ``y [B]``."""
    if kind == "softmax":
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    onehot = jax.nn.one_hot(y, logits.shape[-1])
    return optax.sigmoid_binary_cross_entropy(logits, onehot).sum(-1).mean()


def shared_params(params: dict) -> dict:
    """The parameters several tasks use: ``{"input": shared input head or {}, "hidden": [...]}``."""
    heads = params["input_heads"]
    return {
        "input": dict(heads[SHARED_INPUT]) if SHARED_INPUT in heads else {},
        "hidden": params["hidden"],
    }


def trainable_mask(net: ExpandableNet, task: str, *, shared: bool = True) -> dict:
    """0/1 tree like ``net.params``: 1 on ``task``'s own heads (and shared layers if asked)."""
    spec = resolve_task(net.meta, task)

    def fill(tree, value):
        return jax.tree.map(lambda x: jnp.full((), value, jnp.float32), tree)

    p = net.params
    mask = {
        "input_heads": {
            k: fill(v, 1.0 if (k == spec.input_key and (shared or k != SHARED_INPUT)) else 0.0)
            for k, v in p["input_heads"].items()
        },
        "hidden": fill(p["hidden"], 1.0 if shared else 0.0),
        "output_heads": {
            k: fill(v, 1.0 if k == spec.name else 0.0) for k, v in p["output_heads"].items()
        },
    }
    return mask


def make_loss_fn(net: ExpandableNet, task: str, cfg: BaselineConfig, penalty=None):
    """``loss(params, x, y, aux)``: task loss + weight decay on the trained parts + penalty.

    Args:
      net: the network (its static part is captured).
      task: the task trained.
      cfg: config (loss kind, weight decay).
      penalty: optional ``penalty(shared_params, aux) -> scalar``.
    """
    meta = net.meta
    spec = resolve_task(meta, task)

    def loss_fn(params, x, y, aux):
        logits = apply(ExpandableNet(params=params, meta=meta), x, spec.name)
        loss = task_loss(logits, y, cfg.loss)
        if cfg.weight_decay:
            used = [params["hidden"], params["output_heads"][spec.name]]
            used.append(params["input_heads"][spec.input_key])
            loss = loss + cfg.weight_decay * 0.5 * sum(jnp.sum(v**2) for v in jax.tree.leaves(used))
        if penalty is not None:
            loss = loss + penalty(shared_params(params), aux)
        return loss

    return loss_fn


def train_task(
    net: ExpandableNet,
    key: jax.Array,
    task: str,
    train: tuple[Any, Any],
    cfg: BaselineConfig,
    *,
    penalty=None,
    aux: Any = None,
    train_shared: bool = True,
) -> tuple[ExpandableNet, dict]:
    """Trains ``task``'s heads (and the shared layers) for ``cfg.steps`` Adam steps.

    Returns:
      ``(net, report)`` with ``report = {"steps", "loss_first", "loss_last"}`` (mean loss
      over the first and last quarter of the steps, at most 100 each).
    """
    x, y = train
    batch = min(cfg.batch_size, int(np.shape(x)[0]))
    tx = optax.adam(cfg.schedule(batch))
    loss_fn = make_loss_fn(net, task, cfg, penalty)
    aux = {} if aux is None else aux
    params, _, losses = train_steps(
        net.params,
        tx.init(net.params),
        tx=tx,
        loss_fn=loss_fn,
        x=x,
        y=y,
        key=key,
        num_steps=cfg.steps,
        batch_size=batch,
        update_mask=trainable_mask(net, task, shared=train_shared),
        loss_aux=aux,
    )
    losses = np.asarray(losses)
    w = max(1, min(100, len(losses) // 4))
    report = {
        "steps": int(cfg.steps),
        "loss_first": float(losses[:w].mean()),
        "loss_last": float(losses[-w:].mean()),
    }
    return net.replace(params=params), report


def validation_loss(net: ExpandableNet, task: str, valid: tuple[Any, Any], cfg: BaselineConfig):
    """Mean task loss (no penalties) on ``valid``; NaN when it has no rows."""
    x, y = valid
    if np.shape(x)[0] == 0:
        return float("nan")
    meta, name = net.meta, task

    def loss_fn(params, xb, yb):
        return task_loss(apply(ExpandableNet(params=params, meta=meta), xb, name), yb, cfg.loss)

    return evaluate_loss(loss_fn, net.params, x, y)
