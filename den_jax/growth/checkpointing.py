"""Save and restore a growing-network training run (orbax, typed restore).

A checkpoint step is the number of epochs done. It holds the network (parameters, units,
tasks; :func:`den_jax.network_io.save_network`), the optimizer state and PRNG key as
typed arrays, and as JSON the history, the strategy state, the current task, the epoch
and step counters and the trainer config. Restoring rebuilds the network's shapes from
the JSON first, then restores the optimizer state into ``jax.eval_shape(tx.init, ...)``,
so optax NamedTuples come back typed and a shape mismatch raises. A typed PRNG key
(``jax.random.key``) is stored as its key data (``jax.random.key_data``) with its
implementation's name and wrapped again on restore; a raw ``uint32`` key stays raw.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax import checkpoint
from den_jax.growth.epoch import TrainerConfig, TrainState, make_optimizer
from den_jax.growth.history import History
from den_jax.network_io import abstract_params, load_network, save_network

__all__ = ["key_from_data", "key_to_data", "restore_checkpoint", "save_checkpoint"]


def key_to_data(key: jax.Array) -> tuple[jax.Array, str | None]:
    """``(uint32 key data, implementation name or None)`` of a typed or raw PRNG key.

    Args:
      key: a typed key (``jax.random.key``) or a raw ``uint32`` key (``PRNGKey``).

    Returns:
      The key data array and, for a typed key, its implementation (e.g.
      ``"threefry2x32"``); ``None`` marks a raw key.
    """
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), str(jax.random.key_impl(key))
    return jnp.asarray(key, jnp.uint32), None


def key_from_data(data: Any, impl: str | None) -> jax.Array:
    """Inverse of :func:`key_to_data`: wraps the data again when ``impl`` is set."""
    data = jnp.asarray(np.asarray(data), jnp.uint32)
    return data if impl is None else jax.random.wrap_key_data(data, impl=impl)


def save_checkpoint(directory: str, state: TrainState, config: TrainerConfig) -> int:
    """Saves ``state`` as step ``state.epoch`` in ``directory``; returns the step.

    Raises:
      ValueError: if that step already exists (completed steps are immutable).
    """
    key_data, key_impl = key_to_data(state.key)
    extra_meta = {
        "growth_run": {
            "key_impl": key_impl,
            "key_shape": list(key_data.shape),
            "history": state.history.to_json(),
            "strategy_state": state.strategy_state,
            "task": state.task,
            "epoch": state.epoch,
            "step": state.step,
            "config": config.to_json(),
        }
    }
    arrays = {"opt_state": state.opt_state, "key": key_data}
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
      step: step (= epochs done) to restore; ``None`` for the newest step that verifies
        (steps whose files differ from their digests are skipped with a warning).

    Returns:
      The :class:`TrainState`; training it further continues the saved run exactly.
    """
    if step is None:
        step = checkpoint.latest_verified_step(directory)
        if step is None:
            raise ValueError(f"no completed checkpoint that verifies in {directory!r}")
    tx = make_optimizer(config)
    run: dict[str, Any] | None = checkpoint.restore_meta(directory, step)["extra"].get("growth_run")
    if run is None:
        raise ValueError(f"step {step} in {directory!r} is not a growth-trainer checkpoint")
    key_shape = tuple(int(d) for d in run.get("key_shape", (2,)))

    def abstract(meta):
        return {
            "opt_state": jax.eval_shape(tx.init, abstract_params(meta)),
            "key": jax.ShapeDtypeStruct(key_shape, jnp.uint32),
        }

    net, extra, _ = load_network(directory, step, extra_abstract=abstract)
    checkpoint.check_config_compatible(run["config"], config.to_json())
    opt_state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), extra["opt_state"])
    return TrainState(
        net=net,
        opt_state=opt_state,
        key=key_from_data(extra["key"], run.get("key_impl")),
        task=run["task"],
        epoch=int(run["epoch"]),
        step=int(run["step"]),
        strategy_state=run["strategy_state"],
        history=History.from_json(run["history"]),
    )
