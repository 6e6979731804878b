"""Training configuration, state, and one jitted epoch of minibatch training.

One epoch is one jitted ``lax.scan`` over ``n // batch_size`` shuffled minibatches (the
remainder is dropped; the permutation depends only on ``(seed, epoch)``, so a resumed
run sees the same batches). Each step is :func:`den_jax.training.train_step`, the same
step :func:`den_jax.training.train_steps` runs; other tasks' heads are frozen with
:func:`den_jax.masks.trainable_mask`; dropout is :func:`den_jax.network.apply`'s
``dropout=``. The jitted function is cached per ``(config, task)``; it retraces only when
the network's architecture changes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from den_jax.data.checks import check_finite, check_labels, check_targets
from den_jax.growth.history import History
from den_jax.losses import get_loss
from den_jax.masks import trainable_mask
from den_jax.network import ExpandableNet, apply, resolve_task
from den_jax.training import train_step

__all__ = [
    "NAN_POLICIES",
    "OPTIMIZERS",
    "PROBLEMS",
    "TrainState",
    "TrainerConfig",
    "check_data",
    "check_loss_fn",
    "default_loss",
    "epoch_batches",
    "epoch_fn",
    "make_optimizer",
]

PROBLEMS = ("classification", "regression")
OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop}
NAN_POLICIES = ("stop", "raise")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """How to train (static; hashable so jitted epochs are cached per config).

    Attributes:
      problem: ``"classification"`` (integer labels, softmax cross-entropy, accuracy) or
        ``"regression"`` (real targets ``[N]`` or ``[N, d]``, mean squared error).
      optimizer: ``"adam"``, ``"sgd"``, ``"rmsprop"`` or an ``optax.GradientTransformation``.
      learning_rate: used when ``optimizer`` is a name.
      batch_size: minibatch size (capped at the dataset size).
      dropout: dropout rate on hidden activations during training, in ``[0, 1)``.
      loss_fn: optional ``loss_fn(outputs [B, d_out], targets) -> scalar`` batch mean.
        Targets are integer labels ``[B]`` (classification) or ``[B, d_out]``
        (regression: targets ``[N]`` are reshaped to ``[N, 1]``), e.g.
        ``den_jax.losses.huber``. :func:`check_loss_fn` checks it before training.
      nan_policy: on a non-finite training or validation loss, ``"raise"`` (default:
        ``FloatingPointError`` naming the task, phase, epoch and step; nothing non-finite
        is kept or checkpointed) or ``"stop"`` (keep the last good state and record why
        in ``history.stopped``).
      seed: seeds the per-epoch shuffles.
    """

    problem: str = "classification"
    optimizer: Any = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    dropout: float = 0.0
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    nan_policy: str = "raise"
    seed: int = 0

    def __post_init__(self):
        if self.problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {PROBLEMS}, got {self.problem!r}")
        if isinstance(self.optimizer, str) and self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; expected one of {sorted(OPTIMIZERS)} "
                "or an optax.GradientTransformation"
            )
        if not isinstance(self.optimizer, (str, optax.GradientTransformation)):
            raise ValueError(
                "optimizer must be a name or an optax.GradientTransformation, "
                f"got {self.optimizer!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")

    def to_json(self) -> dict[str, Any]:
        """The JSON-comparable part of the config (stored in checkpoints)."""
        return {
            "problem": self.problem,
            "optimizer": self.optimizer if isinstance(self.optimizer, str) else "custom",
            "learning_rate": float(self.learning_rate),
            "batch_size": self.batch_size,
            "dropout": float(self.dropout),
            "loss_fn": None
            if self.loss_fn is None
            else getattr(self.loss_fn, "__name__", "custom"),
            "seed": self.seed,
        }


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a run changes. ``key`` is a PRNG key (raw ``uint32[2]`` or typed)."""

    net: ExpandableNet
    opt_state: Any
    key: jax.Array
    task: str
    epoch: int = 0
    step: int = 0
    strategy_state: dict[str, Any] | None = None
    history: History = dataclasses.field(default_factory=History)


def make_optimizer(config: TrainerConfig) -> optax.GradientTransformation:
    """The optax transformation named by ``config.optimizer`` (or the object itself)."""
    if isinstance(config.optimizer, str):
        return OPTIMIZERS[config.optimizer](config.learning_rate)
    return config.optimizer


def default_loss(problem: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """:func:`den_jax.losses.softmax_ce` (classification) or :func:`den_jax.losses.mse`."""
    return get_loss("softmax_ce" if problem == "classification" else "mse")


def _layer_grad_norms(grads: dict, net: ExpandableNet, task: str) -> jax.Array:
    spec = resolve_task(net.meta, task)
    norms = []
    for layer, hp in enumerate(grads["hidden"]):
        leaves = list(jax.tree.leaves(hp))
        if layer == 0:
            leaves.append(grads["input_heads"][spec.input_key]["w"])
        norms.append(optax.global_norm(leaves))
    return jnp.stack(norms)


@functools.lru_cache(maxsize=64)
def epoch_fn(config: TrainerConfig, task: str):
    """The jitted epoch ``run_epoch(net, opt_state, key, xb [S, B, d], yb [S, B, ...])``.

    Runs :func:`den_jax.training.train_step` over the ``S`` batches (a ``lax.scan``);
    step ``i``'s dropout key is ``fold_in(key, i)``. Only ``task``'s heads and the shared
    layers change (:func:`den_jax.masks.trainable_mask`).

    Args:
      config: the trainer config (optimizer, loss, dropout).
      task: the task trained.

    Returns:
      ``run_epoch -> (net, opt_state, mean_loss, mean_grad_norm, mean_layer_grad_norms)``;
      cached per ``(config, task)``.
    """
    tx = make_optimizer(config)
    loss_fn = config.loss_fn or default_loss(config.problem)
    rate = float(config.dropout)

    def run_epoch(net, opt_state, key, xb, yb):
        meta = net.meta
        mask = trainable_mask(net, task)

        def objective(params, x, y, k):
            out = apply(ExpandableNet(params=params, meta=meta), x, task, dropout=rate, key=k)
            return loss_fn(out, y)

        def step(carry, batch):
            params, opt_state, i = carry
            x, y = batch
            params, opt_state, loss, grads = train_step(
                params,
                opt_state,
                x,
                y,
                tx=tx,
                loss_fn=objective,
                loss_aux=jax.random.fold_in(key, i),
                update_mask=mask,
            )
            metrics = (loss, optax.global_norm(grads), _layer_grad_norms(grads, net, task))
            return (params, opt_state, i + 1), metrics

        (params, opt_state, _), (losses, gnorms, lnorms) = jax.lax.scan(
            step, (net.params, opt_state, jnp.int32(0)), (xb, yb)
        )
        net = net.replace(params=params)
        return net, opt_state, losses.mean(), gnorms.mean(), lnorms.mean(axis=0)

    return jax.jit(run_epoch)


def check_data(
    config: TrainerConfig, net: ExpandableNet, task: str, x, y, *, split: str = "training"
) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts a dataset for ``task``; raises ``ValueError`` on bad input.

    NaN/Inf inputs, labels that are not integers in ``[0, output_dim)`` and non-finite
    regression targets are refused (:mod:`den_jax.data.checks`), naming the split, the task
    and the first offending index.

    Args:
      config: the trainer config (``problem``).
      net: the network (the task's input and output widths).
      task: the task the data is for.
      x: inputs ``[N, d_in]``.
      y: labels ``[N]`` (classification) or targets ``[N]``/``[N, d_out]`` (regression).
      split: which data this is (``"training"``, ``"validation"``, ``"evaluation"``).

    Returns:
      ``x`` as float32 ``[N, d_in]``; ``y`` as int32 ``[N]`` (classification) or float32
      ``[N, d_out]`` (regression).
    """
    spec = resolve_task(net.meta, task)
    where = f"{split} data of task {task!r}"
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != spec.input_dim:
        raise ValueError(
            f"{where}: x must have shape [N, {spec.input_dim}] for task {task!r}, got {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: x is empty; expected at least one example")
    check_finite(x, what=f"{where}: x")
    x = np.asarray(x, np.float32)
    check_finite(x, what=f"{where}: x (as float32)")  # values beyond float32's range
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: x has {x.shape[0]} examples but y has shape {y.shape}")
    if config.problem == "classification":
        check_labels(y, spec.output_dim, what=f"{where}: y")
        return x, y.astype(np.int32)
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{where}: regression targets must be real numbers, got {y.dtype}")
    y = y.astype(np.float32).reshape(x.shape[0], -1)
    if y.shape[1] != spec.output_dim:
        raise ValueError(
            f"{where}: regression targets must have {spec.output_dim} column(s), got {y.shape}"
        )
    check_targets(y, spec.output_dim, what=f"{where}: y")
    return x, y


def epoch_batches(config: TrainerConfig, epoch: int, x: np.ndarray, y: np.ndarray):
    """The shuffled minibatches of one epoch (a permutation seeded by ``(seed, epoch)``).

    Args:
      config: the trainer config (``seed``, ``batch_size``).
      epoch: the global epoch number.
      x: inputs ``[N, d]``.
      y: targets ``[N, ...]``.

    Returns:
      ``(xb [S, B, d], yb [S, B, ...], S)`` with ``B = min(batch_size, N)`` and
      ``S = N // B`` (the remainder of the permutation is dropped).
    """
    n = x.shape[0]
    bs = min(config.batch_size, n)
    steps = n // bs
    perm = np.random.default_rng([config.seed, epoch]).permutation(n)[: steps * bs]
    return x[perm].reshape(steps, bs, -1), y[perm].reshape(steps, bs, *y.shape[1:]), steps


def check_loss_fn(config: TrainerConfig, net: ExpandableNet, task: str, x, y) -> None:
    """Checks, without computing anything, that the loss gets matching shapes and is a scalar.

    The trainer calls the loss as ``loss_fn(outputs [B, d_out], targets)`` with targets
    ``[B]`` integer labels (classification) or ``[B, d_out]`` (regression). A loss that
    fails on those shapes, or returns a non-scalar, raises here, before any training.

    Args:
      config: the trainer config.
      net: the network.
      task: the task trained.
      x: inputs ``[N, d_in]`` (as from :func:`check_data`).
      y: targets (as from :func:`check_data`).

    Raises:
      ValueError: naming the shapes the loss receives and what it returned.
    """
    spec = resolve_task(net.meta, task)
    loss_fn = config.loss_fn or default_loss(config.problem)
    b = min(config.batch_size, x.shape[0])
    out = jax.ShapeDtypeStruct((b, spec.output_dim), jnp.float32)
    tgt = jax.ShapeDtypeStruct((b, *y.shape[1:]), y.dtype)
    if config.problem == "regression" and tgt.shape != out.shape:
        raise ValueError(
            f"regression targets have shape {tgt.shape} per batch but the outputs have "
            f"{out.shape}; expected both [B, d_out]"
        )
    what = (
        f"the loss receives outputs {out.shape} and targets {tgt.shape} "
        f"({'integer labels [B]' if config.problem == 'classification' else '[B, d_out]'})"
    )
    try:
        value = jax.eval_shape(loss_fn, out, tgt)
    except Exception as err:  # noqa: BLE001 (any failure of user code is reported)
        raise ValueError(f"TrainerConfig.loss_fn failed: {what}: {err}") from err
    if getattr(value, "shape", None) != ():
        raise ValueError(
            f"TrainerConfig.loss_fn must return a scalar (the batch mean); {what} and it "
            f"returned shape {getattr(value, 'shape', type(value).__name__)}"
        )
