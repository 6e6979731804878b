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

from den_jax.data.checks import check_finite, check_targets
from den_jax.losses import LOSSES, Loss, get_loss
from den_jax.masks import trainable_mask
from den_jax.network import SHARED_INPUT, ExpandableNet, apply, resolve_task
from den_jax.training import (
    Optimizer,
    as_arrays,
    evaluate_loss,
    resolve_optimizer,
    train_steps,
)

__all__ = [
    "FISHER_ESTIMATORS",
    "FISHER_NORMS",
    "check_task_data",
    "LOSS_ALIASES",
    "BaselineConfig",
    "loss_of",
    "make_loss_fn",
    "shared_params",
    "train_task",
    "validation_loss",
]

#: ``BaselineConfig.fisher_estimator`` values (:func:`den_jax.baselines.diagonal_fisher`).
FISHER_ESTIMATORS = ("exact", "sample")
#: ``BaselineConfig.fisher_norm`` values (:func:`den_jax.baselines.normalise_fisher`).
FISHER_NORMS = ("none", "mean")
#: Short names ``BaselineConfig.loss`` also accepts, with the :mod:`den_jax.losses` name.
LOSS_ALIASES = {"softmax": "softmax_ce", "sigmoid": "sigmoid_ce"}


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
      loss: a :func:`den_jax.losses.get_loss` name (``"softmax_ce"``, ``"sigmoid_ce"``:
        the official code's per-class sigmoid cross-entropy on one-hot labels, mean over
        batch and classes, ...) or the aliases ``"softmax"`` / ``"sigmoid"``.
      l2_lambda: L2-transfer strength ``lam/2 * ||theta - theta_prev||^2`` on shared
        parameters.
      ewc_lambda: EWC strength ``lam/2 * sum F (theta - theta*)^2`` (Kirkpatrick et al.
        2017, Eq. 3).
      fisher_samples: training examples used to estimate the diagonal Fisher.
      fisher_estimator: ``"exact"`` (expectation over every class of the task's
        predictive distribution) or ``"sample"`` (one sampled label per example).
      fisher_norm: ``"mean"`` (each task's Fisher divided by its mean entry before it is
        added to the sum, so ``ewc_lambda`` does not depend on how confident the model
        is) or ``"none"`` (Kirkpatrick et al.'s raw Fisher).
      pnn_adapter_dim: width of the hidden layer of Progressive Networks' non-linear
        lateral adapters (``V``'s output); 0: the receiving layer's width (Rusu et al.
        2016, Eq. 2: "a projection onto an n_l dimensional subspace").
      pnn_alpha_init: scale of the adapters' learned scalar ``alpha`` at initialisation
        (drawn uniformly in ``[0.5, 1.5] * pnn_alpha_init``: "a random small value").
      packnet_prune: PackNet's fraction of a task's free weights released (pruned) per
        layer after the task; a float for every task or a sequence (one per task, the
        last repeated). The paper uses 0.5-0.75.
      packnet_retrain_steps: PackNet's steps of retraining the kept weights after
        pruning; ``None``: ``steps // 4``.
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
    fisher_estimator: str = "exact"
    fisher_norm: str = "none"
    pnn_adapter_dim: int = 0
    pnn_alpha_init: float = 0.01
    packnet_prune: float | tuple[float, ...] = 0.75
    packnet_retrain_steps: int | None = None

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
        for name, allowed in (
            ("fisher_estimator", FISHER_ESTIMATORS),
            ("fisher_norm", FISHER_NORMS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"BaselineConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if LOSS_ALIASES.get(self.loss, self.loss) not in LOSSES:
            raise ValueError(
                f"BaselineConfig.loss must be one of {sorted(LOSSES) + sorted(LOSS_ALIASES)}, "
                f"got {self.loss!r}"
            )

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


def loss_of(cfg: BaselineConfig) -> Loss:
    """The batch loss ``(logits, y) -> scalar`` named by ``cfg.loss`` (aliases resolved)."""
    return get_loss(LOSS_ALIASES.get(cfg.loss, cfg.loss))


def shared_params(params: dict) -> dict:
    """The parameters several tasks use: ``{"input": shared input head or {}, "hidden": [...]}``."""
    heads = params["input_heads"]
    return {
        "input": dict(heads[SHARED_INPUT]) if SHARED_INPUT in heads else {},
        "hidden": params["hidden"],
    }


def make_loss_fn(
    net: ExpandableNet, task: str, cfg: BaselineConfig, penalty=None, *, loss: Loss | None = None
):
    """``loss(params, x, y, aux)``: task loss + weight decay on the trained parts + penalty.

    Args:
      net: the network (its static part is captured).
      task: the task trained.
      cfg: config (loss kind, weight decay).
      penalty: optional ``penalty(shared_params, aux) -> scalar``.
      loss: optional ``(logits, y) -> scalar`` batch loss replacing ``cfg.loss``.

    Returns:
      The objective for :func:`den_jax.training.train_steps`.
    """
    meta = net.meta
    spec = resolve_task(meta, task)
    batch_loss = loss_of(cfg) if loss is None else loss

    def loss_fn(params, x, y, aux):
        logits = apply(ExpandableNet(params=params, meta=meta), x, spec.name)
        loss = batch_loss(logits, y)
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
    loss: Loss | None = None,
    optimizer: Optimizer | None = None,
    method: str = "baseline",
) -> tuple[ExpandableNet, dict]:
    """Trains ``task``'s heads (and the shared layers) for ``cfg.steps`` optimizer steps.

    Args:
      net: the network holding ``task``.
      key: PRNG key (shuffling).
      task: the task's name.
      train: ``(x, y)`` arrays.
      cfg: the config.
      penalty: optional ``penalty(shared_params, aux) -> scalar``.
      aux: the penalty's arrays.
      train_shared: also train the shared layers.
      loss: optional ``(logits, y) -> scalar`` replacing ``cfg.loss``.
      optimizer: ``None`` (Adam on ``cfg.schedule``), an ``optax.GradientTransformation``
        or a factory ``schedule -> tx`` (:func:`den_jax.training.resolve_optimizer`).
      method: the learner's name, for error messages.

    Returns:
      ``(net, report)`` with ``report = {"steps", "loss_first", "loss_last"}`` (mean loss
      over the first and last quarter of the steps, at most 100 each).

    Raises:
      FloatingPointError: a loss became non-finite (names method, task and step).
    """
    x, y = train
    batch = min(cfg.batch_size, int(np.shape(x)[0]))
    tx = resolve_optimizer(optimizer, cfg.schedule(batch))
    loss_fn = make_loss_fn(net, task, cfg, penalty, loss=loss)
    aux = {} if aux is None else aux
    try:
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
    except FloatingPointError as err:
        raise FloatingPointError(f"{method} task {task!r}, phase 'train': {err}") from err
    losses = np.asarray(losses)
    w = max(1, min(100, len(losses) // 4))
    report = {
        "steps": int(cfg.steps),
        "loss_first": float(losses[:w].mean()),
        "loss_last": float(losses[-w:].mean()),
    }
    return net.replace(params=params), report


def validation_loss(
    net: ExpandableNet,
    task: str,
    valid: tuple[Any, Any] | None,
    cfg: BaselineConfig,
    *,
    loss: Loss | None = None,
):
    """Mean task loss (no penalties) on ``valid``; NaN when it is ``None`` or has no rows."""
    if valid is None:
        return float("nan")
    x, y = valid
    if np.shape(x)[0] == 0:
        return float("nan")
    meta, name = net.meta, task
    batch_loss = loss_of(cfg) if loss is None else loss

    def loss_fn(params, xb, yb):
        return batch_loss(apply(ExpandableNet(params=params, meta=meta), xb, name), yb)

    return evaluate_loss(loss_fn, net.params, x, y)


def check_task_data(net: ExpandableNet, task: str, cfg: Any, train: Any, valid: Any):
    """Validates a learner's common arguments; returns ``(train, valid)`` as arrays.

    Args:
      net: the network holding ``task``.
      task: the task's name.
      cfg: must be a :class:`BaselineConfig`.
      train: ``(x, y)`` or an iterable of batches.
      valid: the same, or ``None``.

    Returns:
      ``(train, valid)`` as ``(x, y)`` array pairs (``valid`` may be ``None``).
    """
    spec = resolve_task(net.meta, task)
    if not isinstance(cfg, BaselineConfig):
        raise ValueError(f"cfg must be a BaselineConfig, got {type(cfg).__name__}")
    train = as_arrays(train, f"train data of task {task!r}")
    valid = None if valid is None else as_arrays(valid, f"valid data of task {task!r}")
    for split, data in (("train", train), ("valid", valid)):
        if data is not None:
            check_finite(data[0], what=f"{split} data of task {task!r}: x")
            check_targets(data[1], spec.output_dim, what=f"{split} data of task {task!r}: y")
    return train, valid
