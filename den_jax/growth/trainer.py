"""Epoch-based trainer for a single growing network (regression or classification).

Functional, dm_nevis-style: a frozen :class:`TrainerConfig` says *how* to train, a
:class:`TrainState` holds everything that changes (network, optimizer state, PRNG key,
strategy state, history), and :func:`init_state`, :func:`train`, :func:`evaluate`,
:func:`predict` and :func:`continual_learning` map states to new states.
:class:`den_jax.growth.GrowthTrainer` wraps them in a small object.

After each epoch (:mod:`den_jax.growth.epoch`) the strategy sees the epoch's metrics;
when it fires, the network grows (:mod:`den_jax.growth.ops`) and the optimizer state is
padded, so training goes on without a restart (the next epoch retraces once for the new
shapes).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.align import grow_opt_state
from den_jax.capacity import count_params
from den_jax.data.checks import check_labels
from den_jax.growth.checkpointing import save_checkpoint
from den_jax.growth.epoch import (
    TrainerConfig,
    TrainState,
    check_data,
    check_loss_fn,
    default_loss,
    epoch_batches,
    epoch_fn,
    make_optimizer,
)
from den_jax.growth.history import GrowthEvent
from den_jax.growth.ops import apply_action
from den_jax.growth.protocol import GrowthStrategy, decide
from den_jax.growth.strategies import LossPlateau
from den_jax.network import ExpandableNet, add_task, apply, init_network, resolve_task
from den_jax.training import as_arrays

_log = logging.getLogger(__name__)

__all__ = [
    "TrainState",
    "TrainerConfig",
    "continual_learning",
    "evaluate",
    "init_state",
    "make_optimizer",
    "outputs",
    "predict",
    "train",
]


def init_state(
    config: TrainerConfig,
    key: jax.Array,
    input_dim: int,
    output_dim: int,
    hidden_widths=(8, 8),
    *,
    activation: str = "relu",
    task: str = "main",
) -> TrainState:
    """A fresh network with one task and its optimizer state.

    Args:
      config: the trainer config.
      key: PRNG key (raw ``jax.random.PRNGKey(0)`` or typed ``jax.random.key(0)``).
      input_dim: input width ``d_in``.
      output_dim: number of classes, or of regression targets.
      hidden_widths: initial hidden widths.
      activation: hidden activation (depth growth needs ``"relu"`` or ``"identity"``).
      task: name of the task (its output head).
    """
    k_net, k_task, k_state = jax.random.split(key, 3)
    net = init_network(
        k_net, list(hidden_widths), shared_input_dim=input_dim, activation=activation
    )
    net = add_task(net, k_task, task, input_dim=input_dim, output_dim=output_dim)
    return TrainState(
        net=net, opt_state=make_optimizer(config).init(net.params), key=k_state, task=task
    )


def _grow(state: TrainState, decision, epoch: int) -> TrainState:
    net, opt_state, events = state.net, state.opt_state, []
    key = jax.random.fold_in(state.key, 1_000_003 + epoch)
    for i, action in enumerate(decision.actions):
        before = net
        net = apply_action(net, jax.random.fold_in(key, i), action)
        opt_state = grow_opt_state(opt_state, before, net)
        units = action.units if action.kind == "width" else net.widths[action.layer]
        events.append(
            GrowthEvent(
                epoch=epoch,
                step=state.step,
                kind=action.kind,
                layer=int(action.layer),
                units=int(units),
                reason=decision.reason,
                params_before=count_params(before),
                params_after=count_params(net),
                widths_before=before.widths,
                widths_after=net.widths,
            )
        )
        _log.info("epoch %d: grew %s", epoch, events[-1])
    return dataclasses.replace(
        state, net=net, opt_state=opt_state, history=state.history.add_events(events)
    )


def train(
    state: TrainState,
    config: TrainerConfig,
    x,
    y,
    epochs: int,
    *,
    strategy: GrowthStrategy | None = None,
    enable_growth: bool = False,
    validation: tuple[Any, Any] | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    callback: Callable[[TrainState, dict], None] | None = None,
) -> TrainState:
    """Trains ``epochs`` epochs on ``(x, y)``, growing the network when the strategy fires.

    Args:
      state: from :func:`init_state`, :func:`restore` or an earlier call.
      config: the trainer config.
      x: inputs ``[N, d_in]``, or (with ``y=None``) an iterable of ``(x_batch, y_batch)``
        pairs (:func:`den_jax.training.as_arrays`).
      y: labels ``[N]`` or targets ``[N]``/``[N, d_out]``; ``None`` when ``x`` holds both.
      epochs: number of epochs, >= 0.
      strategy: a :class:`~den_jax.growth.strategies.GrowthStrategy`; default
        :class:`~den_jax.growth.strategies.LossPlateau` when ``enable_growth``.
      enable_growth: consult the strategy after every epoch.
      validation: optional ``(x_val, y_val)``; adds ``val_*`` metrics to every epoch.
      checkpoint_dir: if set with ``checkpoint_every > 0``, saves every that many epochs
        and after the last one (:func:`den_jax.growth.checkpointing.save_checkpoint`).
      callback: called as ``callback(state, metrics)`` after every epoch (e.g. a progress bar).

    Returns:
      The new state. If an epoch's loss is non-finite and ``config.nan_policy == "stop"``,
      the state from before that epoch is returned with ``history.stopped`` set.

    Raises:
      ValueError: bad data, or a ``config.loss_fn`` that does not return a scalar for
        outputs ``[B, d_out]`` and the targets (:func:`~den_jax.growth.epoch.check_loss_fn`).
      FloatingPointError: a non-finite training or validation loss with
        ``nan_policy="raise"`` (the default), naming the task, phase, epoch and steps.
    """
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if y is None:
        x, y = as_arrays(x, f"training data of task {state.task!r}")
    x, y = check_data(config, state.net, state.task, x, y)
    check_loss_fn(config, state.net, state.task, x, y)
    if validation is not None:
        xv, yv = as_arrays(validation, f"validation data of task {state.task!r}")
        validation = check_data(config, state.net, state.task, xv, yv, split="validation")
    if enable_growth:
        strategy = strategy if strategy is not None else LossPlateau()
        if not isinstance(strategy, GrowthStrategy):
            raise ValueError(f"strategy must be a GrowthStrategy, got {type(strategy).__name__}")
        if state.strategy_state is None:
            state = dataclasses.replace(state, strategy_state=strategy.init_state())
    run_epoch = epoch_fn(config, state.task)
    for _ in range(int(epochs)):
        epoch = state.epoch
        xb, yb, steps = epoch_batches(config, epoch, x, y)
        before = state
        net, opt_state, loss, gnorm, lnorms = run_epoch(
            state.net, state.opt_state, jax.random.fold_in(state.key, epoch), xb, yb
        )
        loss, gnorm = float(loss), float(gnorm)
        if not (np.isfinite(loss) and np.isfinite(gnorm)):
            what = "gradient norm" if np.isfinite(loss) else "training loss"
            msg = (
                f"non-finite {what} (loss {loss}, gradient norm {gnorm}) in task "
                f"{state.task!r}, phase training, epoch {epoch} (steps {state.step + 1}.."
                f"{state.step + steps})"
            )
            if config.nan_policy == "raise":
                raise FloatingPointError(msg + "; nothing of this epoch was kept")
            _log.warning("%s; stopping with the state from before this epoch", msg)
            return dataclasses.replace(
                state, history=state.history.stop(msg + "; kept the last good state")
            )
        state = dataclasses.replace(
            state, net=net, opt_state=opt_state, epoch=epoch + 1, step=state.step + steps
        )
        metrics = {
            "epoch": epoch,
            "step": state.step,
            "task": state.task,
            "loss": loss,
            "grad_norm": gnorm,
            "layer_grad_norms": [float(v) for v in lnorms],
            "widths": list(state.net.widths),
            "params": count_params(state.net),
        }
        if validation is not None:
            val = evaluate(state, config, *validation)
            if not np.isfinite(val["loss"]):
                msg = (
                    f"non-finite validation loss ({val['loss']}) in task {state.task!r}, phase "
                    f"validation, after epoch {epoch} (step {state.step})"
                )
                if config.nan_policy == "raise":
                    raise FloatingPointError(msg)
                _log.warning("%s; stopping with the state from before this epoch", msg)
                return dataclasses.replace(
                    before, history=before.history.stop(msg + "; kept the last good state")
                )
            metrics.update({f"val_{k}": v for k, v in val.items()})
        if enable_growth:
            s_state, decision = decide(strategy, metrics, state.strategy_state, epoch)
            state = dataclasses.replace(state, strategy_state=s_state)
            if decision.grow:
                state = _grow(state, decision, epoch)
        state = dataclasses.replace(state, history=state.history.add_epoch(metrics))
        if callback is not None:
            callback(state, metrics)
        if checkpoint_dir and checkpoint_every > 0 and state.epoch % checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, state, config)
    if checkpoint_dir and checkpoint_every > 0 and state.epoch % checkpoint_every != 0 and epochs:
        save_checkpoint(checkpoint_dir, state, config)
    return state


@functools.partial(jax.jit, static_argnums=2)
def _outputs(net: ExpandableNet, x: jax.Array, task: str) -> jax.Array:
    return apply(net, x, task)


def outputs(state: TrainState, x, task: str | None = None) -> jax.Array:
    """Raw outputs (logits or regression values) ``[N, d_out]`` for ``task`` (default: current)."""
    task = task or state.task
    spec = resolve_task(state.net.meta, task)
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != spec.input_dim:
        raise ValueError(
            f"x must have shape [N, {spec.input_dim}] for task {task!r}, got {x.shape}"
        )
    return _outputs(state.net, jnp.asarray(x), task)


def predict(state: TrainState, config: TrainerConfig, x, task: str | None = None) -> np.ndarray:
    """Class labels ``[N]`` (classification) or predicted values ``[N, d_out]`` (regression)."""
    out = np.asarray(outputs(state, x, task))
    return out.argmax(-1) if config.problem == "classification" else out


def evaluate(
    state: TrainState, config: TrainerConfig, x, y=None, task: str | None = None
) -> dict[str, float]:
    """Loss and metrics on ``(x, y)``: ``accuracy`` or ``mse``/``mae``/``r2``."""
    task = task or state.task
    if y is None:
        x, y = as_arrays(x, f"evaluation data of task {task!r}")
    x, y = check_data(config, state.net, task, x, y, split="evaluation")
    out = outputs(state, x, task)
    loss_fn = config.loss_fn or default_loss(config.problem)
    result = {"loss": float(loss_fn(out, jnp.asarray(y)))}
    out = np.asarray(out)
    if config.problem == "classification":
        result["accuracy"] = float(np.mean(out.argmax(-1) == y))
    else:
        err = out - y
        result["mse"] = float(np.mean(err**2))
        result["mae"] = float(np.mean(np.abs(err)))
        var = float(np.mean((y - y.mean(0)) ** 2))
        result["r2"] = float(1.0 - result["mse"] / var) if var > 0 else float("nan")
    return result


def continual_learning(
    state: TrainState,
    config: TrainerConfig,
    new_x,
    new_y,
    epochs: int,
    *,
    new_task: str | None = None,
    output_dim: int | None = None,
    **train_kwargs,
) -> TrainState:
    """Keeps learning from new data, growing as needed.

    Without ``new_task`` the same head keeps training on the new data (labels must fit
    its outputs). With ``new_task`` a new output head is added (:func:`den_jax.add_task`;
    ``output_dim`` defaults to ``max(label) + 1`` or the target width) and becomes the
    current task; units added from then on are stamped with it, so the earlier tasks
    never see them (timestamped inference), and the earlier heads stay frozen. The
    shared units are not frozen: earlier tasks can drift (measure it with
    :func:`evaluate` and ``task=``).

    Args:
      state, config: as for :func:`train`.
      new_x, new_y: the new data.
      epochs: epochs on the new data.
      new_task: optional name of a new task.
      output_dim: the new task's output width.
      **train_kwargs: passed to :func:`train` (``strategy``, ``enable_growth``, ...).
    """
    if new_y is None:
        new_x, new_y = as_arrays(new_x, f"new data of task {new_task or state.task!r}")
    if new_task is not None:
        new_x_arr, new_y_arr = np.asarray(new_x), np.asarray(new_y)
        if output_dim is None:
            if config.problem == "classification":
                what = f"new data of task {new_task!r}: y"
                check_labels(new_y_arr, np.iinfo(np.int64).max, what=what)
                output_dim = int(new_y_arr.max()) + 1
                missing = np.setdiff1d(np.arange(output_dim), new_y_arr)
                if missing.size:  # a stray label 99 would otherwise make a 100-class head
                    first = int(np.argmax(new_y_arr == output_dim - 1))
                    raise ValueError(
                        f"{what}: class(es) {', '.join(map(str, missing[:5].tolist()))}"
                        f"{', ...' if missing.size > 5 else ''} never occur while label "
                        f"{output_dim - 1} does (first at index {first}); expected the "
                        "consecutive ids 0..C-1, or pass output_dim"
                    )
            else:
                output_dim = 1 if new_y_arr.ndim == 1 else int(new_y_arr.shape[1])
        key = jax.random.fold_in(state.key, 2_000_003 + state.epoch)
        net = add_task(
            state.net, key, new_task, input_dim=int(new_x_arr.shape[1]), output_dim=output_dim
        )
        opt_state = grow_opt_state(state.opt_state, state.net, net)
        state = dataclasses.replace(state, net=net, opt_state=opt_state, task=new_task)
    return train(state, config, new_x, new_y, epochs, **train_kwargs)
