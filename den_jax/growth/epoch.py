"""Training configuration, state, and one jitted epoch of minibatch training.

One epoch is one jitted ``lax.scan`` over ``n // batch_size`` shuffled minibatches (the
remainder is dropped; the permutation depends only on ``(seed, epoch)``, so a resumed
run sees the same batches). The jitted function is cached per ``(config, task)``; it
retraces only when the network's architecture changes.
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

from den_jax.growth.history import History
from den_jax.network import ACTIVATIONS, ExpandableNet, apply, resolve_task, task_params

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
      loss_fn: optional ``loss_fn(outputs [B, d_out], targets [B, ...]) -> scalar``.
      nan_policy: on a non-finite training loss, ``"stop"`` (keep the last good state and
        record why in ``history.stopped``) or ``"raise"`` (``FloatingPointError``).
      seed: seeds the per-epoch shuffles.
    """

    problem: str = "classification"
    optimizer: Any = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    dropout: float = 0.0
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    nan_policy: str = "stop"
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
    """Everything a run changes. ``key`` is a raw ``uint32[2]`` PRNG key."""

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
    """Mean softmax cross-entropy (integer labels) or mean squared error."""
    if problem == "classification":
        return lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return lambda out, y: jnp.mean((out - y) ** 2)


def forward(net: ExpandableNet, x: jax.Array, task: str, rate: float, key: jax.Array | None):
    """Task ``task``'s outputs ``[B, d_out]`` with inverted dropout on hidden activations."""
    if rate == 0.0 or key is None:
        return apply(net, x, task)
    act = ACTIVATIONS[net.meta.activation]
    tp = task_params(net, task)
    keys = jax.random.split(key, len(tp["hidden"]))

    def drop(h, k):
        keep = jax.random.bernoulli(k, 1.0 - rate, h.shape)
        return jnp.where(keep, h / (1.0 - rate), 0.0)

    h = drop(act(x @ tp["input"]["w"] + tp["hidden"][0]["b"]), keys[0])
    for hp, k in zip(tp["hidden"][1:], keys[1:]):
        h = drop(act(h @ hp["w"] + hp["b"]), k)
    return h @ tp["output"]["w"] + tp["output"]["b"]


def _layer_grad_norms(grads: dict, net: ExpandableNet, task: str) -> jax.Array:
    spec = resolve_task(net.meta, task)
    norms = []
    for layer, hp in enumerate(grads["hidden"]):
        leaves = list(jax.tree.leaves(hp))
        if layer == 0:
            leaves.append(grads["input_heads"][spec.input_key]["w"])
        norms.append(optax.global_norm(leaves))
    return jnp.stack(norms)


def _freeze_other_tasks(updates: dict, net: ExpandableNet, task: str) -> dict:
    """Zeroes updates of other tasks' heads (Adam would otherwise move them from momentum)."""
    spec = resolve_task(net.meta, task)
    zero = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    out = dict(updates)
    out["output_heads"] = {
        k: v if k == task else zero(v) for k, v in updates["output_heads"].items()
    }
    out["input_heads"] = {
        k: v if k == spec.input_key else zero(v) for k, v in updates["input_heads"].items()
    }
    return out


@functools.lru_cache(maxsize=64)
def _epoch_fn(config: TrainerConfig, task: str):
    tx = make_optimizer(config)
    loss_fn = config.loss_fn or default_loss(config.problem)

    def run_epoch(net, opt_state, key, xb, yb):
        def step(carry, batch):
            net, opt_state, i = carry
            x, y = batch
            k = jax.random.fold_in(key, i)

            def loss_of(params):
                return loss_fn(forward(net.replace(params=params), x, task, config.dropout, k), y)

            loss, grads = jax.value_and_grad(loss_of)(net.params)
            updates, opt_state = tx.update(grads, opt_state, net.params)
            updates = _freeze_other_tasks(updates, net, task)
            params = optax.apply_updates(net.params, updates)
            metrics = (loss, optax.global_norm(grads), _layer_grad_norms(grads, net, task))
            return (net.replace(params=params), opt_state, i + 1), metrics

        (net, opt_state, _), (losses, gnorms, lnorms) = jax.lax.scan(
            step, (net, opt_state, jnp.int32(0)), (xb, yb)
        )
        return net, opt_state, losses.mean(), gnorms.mean(), lnorms.mean(axis=0)

    return jax.jit(run_epoch)


def check_data(
    config: TrainerConfig, net: ExpandableNet, task: str, x, y
) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts a dataset for ``task``; raises ``ValueError`` on bad input.

    Returns:
      ``x`` as float32 ``[N, d_in]``; ``y`` as int32 ``[N]`` (classification) or float32
      ``[N, d_out]`` (regression).
    """
    spec = resolve_task(net.meta, task)
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != spec.input_dim:
        raise ValueError(
            f"x must have shape [N, {spec.input_dim}] for task {task!r}, got {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("x is empty; expected at least one example")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite values; expected finite inputs")
    y = np.asarray(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if config.problem == "classification":
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"classification labels must be integers of shape [N], got {y.dtype} {y.shape}"
            )
        if y.min() < 0 or y.max() >= spec.output_dim:
            raise ValueError(
                f"labels must lie in 0..{spec.output_dim - 1} (task {task!r} has {spec.output_dim} "
                f"outputs), got range {int(y.min())}..{int(y.max())}"
            )
        return x, y.astype(np.int32)
    y = y.astype(np.float32).reshape(x.shape[0], -1)
    if y.shape[1] != spec.output_dim:
        raise ValueError(f"regression targets must have {spec.output_dim} column(s), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinite values; expected finite targets")
    return x, y


def _batches(config: TrainerConfig, epoch: int, x: np.ndarray, y: np.ndarray):
    n = x.shape[0]
    bs = min(config.batch_size, n)
    steps = n // bs
    perm = np.random.default_rng([config.seed, epoch]).permutation(n)[: steps * bs]
    return x[perm].reshape(steps, bs, -1), y[perm].reshape(steps, bs, *y.shape[1:]), steps
