"""Save and restore a growing-network training run (orbax, typed restore).

A checkpoint step is the number of epochs done. It holds the network (parameters, units,
tasks; :func:`den_jax.network_io.save_network`), the optimizer state and PRNG key as
typed arrays, and as JSON the history, the strategy state, the current task, the epoch
and step counters and the trainer config. Restoring rebuilds the network's shapes from
the JSON first, then restores the optimizer state into ``jax.eval_shape(tx.init, ...)``,
so optax NamedTuples come back typed and a shape mismatch raises.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax import checkpoint
from den_jax.growth.history import History
from den_jax.growth.trainer import TrainerConfig, TrainState, make_optimizer
from den_jax.network_io import abstract_params, load_network, save_network


def save_checkpoint(directory: str, state: TrainState, config: TrainerConfig) -> int:
    """Saves ``state`` as step ``state.epoch`` in ``directory``; returns the step.

    Raises:
      ValueError: if that step already exists (completed steps are immutable).
    """
    extra_meta = {
        "growth_run": {
            "history": state.history.to_json(),
            "strategy_state": state.strategy_state,
            "task": state.task,
            "epoch": state.epoch,
            "step": state.step,
            "config": config.to_json(),
        }
    }
    arrays = {"opt_state": state.opt_state, "key": jnp.asarray(state.key)}
    save_network(directory, state.epoch, state.net, extra_arrays=arrays, extra_meta=extra_meta)
    return state.epoch


def restore_checkpoint(
    directory: str, config: TrainerConfig, step: int | None = None
) -> TrainState:
    """Restores a run saved by :func:`save_checkpoint` (the newest step by default).

    Args:
      directory: checkpoint root.
      config: the config of the resuming run; must match the saved one (same optimizer,
        learning rate, batch size, ...), else ``ValueError`` names the differences.
      step: step (= epochs done) to restore; ``None`` for the latest.

    Returns:
      The :class:`TrainState`; training it further continues the saved run exactly.
    """
    if step is None:
        step = checkpoint.latest_step(directory)
        if step is None:
            raise ValueError(f"no completed checkpoint in {directory!r}")
    tx = make_optimizer(config)

    def abstract(meta):
        return {
            "opt_state": jax.eval_shape(tx.init, abstract_params(meta)),
            "key": jax.ShapeDtypeStruct((2,), jnp.uint32),
        }

    net, extra, saved = load_network(directory, step, extra_abstract=abstract)
    run: dict[str, Any] = saved["extra"].get("growth_run")
    if run is None:
        raise ValueError(f"step {step} in {directory!r} is not a growth-trainer checkpoint")
    checkpoint.check_config_compatible(run["config"], config.to_json())
    opt_state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), extra["opt_state"])
    return TrainState(
        net=net,
        opt_state=opt_state,
        key=jnp.asarray(extra["key"], jnp.uint32),
        task=run["task"],
        epoch=int(run["epoch"]),
        step=int(run["step"]),
        strategy_state=run["strategy_state"],
        history=History.from_json(run["history"]),
    )
