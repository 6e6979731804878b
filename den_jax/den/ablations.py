"""The ablations of DEN (Yoon et al. 2018, Fig. 4a, 4c and 5) and MTL, as runner methods.

* ``dnn_l1``: one fixed network fine-tuned on every task with the L1 prox (and DEN's L2),
  ``steps_task1`` steps per task; no selection, growth or split.
* ``den_selective``: DEN's sparse head, breadth-first selection and selective retraining
  only (no expansion, no split).
* ``den_constant``: expands by ``k`` every task (tau = 0), without group lasso or pruning.
* ``den_no_timestamp``: DEN's training, inference with every unit for every task (older
  tasks also see the units added after them): a ``predict`` hook.
* ``mtl``: one network trained jointly on every task so far (``needs_history``), each task
  with its own heads, ``steps_task1`` steps per task: the upper reference.

All take a :class:`~den_jax.den.config.DENConfig` (``uses_den_config=True``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.baselines.learners import Method
from den_jax.capacity import count_params
from den_jax.den import phases
from den_jax.den.config import DENConfig
from den_jax.den.learner import learn_task_with_state, make_settings
from den_jax.den.phases import PhaseState
from den_jax.masks import task_mask
from den_jax.network import ExpandableNet, LayerUnits, apply, resolve_task
from den_jax.training import as_arrays, train_steps

__all__ = [
    "ABLATIONS",
    "den_constant_learn_task",
    "den_selective_learn_task",
    "dnn_l1_learn_task",
    "mtl_learn_task",
    "predict_without_timestamps",
]


def _check_cfg(cfg: Any) -> DENConfig:
    if not isinstance(cfg, DENConfig):
        raise ValueError(f"cfg must be a DENConfig, got {type(cfg).__name__}")
    return cfg


def _finish(net: ExpandableNet, report: dict, task: str, data, settings) -> dict:
    report["final_task_loss"] = phases.task_loss(net, task, data, settings)
    report["widths"] = [int(w) for w in net.widths]
    report["params"] = int(count_params(net))
    return report


def _arrays(data, what: str):
    x, y = as_arrays(data, what)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def dnn_l1_learn_task(
    net, key, task, train_data, valid_data, cfg, *, state=None, loss=None, optimizer=None
):
    """L1-regularised fine-tuning: every weight the task uses, with DEN's L1 prox.

    Returns:
      ``(net, report)``.
    """
    del state
    cfg = _check_cfg(cfg)
    settings = make_settings(cfg, loss=loss, optimizer=optimizer)
    train = _arrays(train_data, f"train_data of task {task!r}")
    st, stats = phases.train_phase(
        PhaseState(net, None, 0), key, task, train, settings,
        num_steps=cfg.steps_task1, update_mask=task_mask(net, task),
        prox=phases.make_l1_prox(settings), phase="dnn_l1",
    )  # fmt: skip
    data = train if valid_data is None else _arrays(valid_data, "valid_data")
    return st.net, _finish(
        st.net, {"task": task, "phases": {"dnn_l1": stats}}, task, data, settings
    )


def den_selective_learn_task(
    net, key, task, train_data, valid_data, cfg, *, state=None, loss=None, optimizer=None
):
    """DEN with selective retraining only (no expansion, no split)."""
    del state
    cfg = dataclasses.replace(_check_cfg(cfg), expansion_threshold=1e30, split_when="never")
    net, _, report = learn_task_with_state(
        net, key, task, train_data, valid_data, cfg, loss=loss, optimizer=optimizer
    )
    return net, report


def den_constant_learn_task(
    net, key, task, train_data, valid_data, cfg, *, state=None, loss=None, optimizer=None
):
    """DEN that adds ``k`` units every task (tau = 0), no group lasso, no pruning."""
    del state
    cfg = dataclasses.replace(_check_cfg(cfg), expansion_threshold=0.0, group_lambda=0.0)
    net, _, report = learn_task_with_state(
        net, key, task, train_data, valid_data, cfg, loss=loss, optimizer=optimizer, prune=False
    )
    return net, report


def predict_without_timestamps(net: ExpandableNet, state, x: jax.Array, task: str) -> jax.Array:
    """``task``'s logits with every unit of every layer (no timestamped inference)."""
    del state
    layers = tuple(
        LayerUnits(stamps=(0,) * layer.width, ids=layer.ids, parents=layer.parents)
        for layer in net.meta.layers
    )
    flat = net.replace(meta=dataclasses.replace(net.meta, layers=layers))
    return apply(flat, x, task)


def _den_learn(
    net, key, task, train_data, valid_data, cfg, *, state=None, loss=None, optimizer=None
):
    del state
    net, _, report = learn_task_with_state(
        net, key, task, train_data, valid_data, _check_cfg(cfg), loss=loss, optimizer=optimizer
    )
    return net, report


def mtl_learn_task(
    net,
    key,
    task,
    train_data,
    valid_data,
    cfg,
    *,
    state=None,
    loss=None,
    optimizer=None,
    history=None,
):
    """Joint training on every task so far (the current one and ``history``).

    Every example of every task is in one pool; a batch mixes tasks, and each example's
    loss uses its task's input and output heads. All parameters are trained,
    ``steps_task1`` steps per task, with DEN's optimizer, schedule and L2 weight.

    Args:
      history: ``[(task_name, (x_train, y_train)), ...]`` of the earlier tasks.

    Returns:
      ``(net, report)``.
    """
    del state
    cfg = _check_cfg(cfg)
    settings = make_settings(cfg, loss=loss, optimizer=optimizer)
    pool = [(name, _arrays(d, f"history of task {name!r}")) for name, d in (history or [])]
    pool.append((task, _arrays(train_data, f"train_data of task {task!r}")))
    names = tuple(name for name, _ in pool)
    dims = tuple(resolve_task(net.meta, n).input_dim for n in names)
    width = max(dims)
    xs, ys = [], []
    for t, (_, (x, y)) in enumerate(pool):
        pad = jnp.zeros((x.shape[0], width - x.shape[1]), jnp.float32)
        xs.append(jnp.concatenate([x, pad, jnp.full((x.shape[0], 1), float(t))], axis=1))
        ys.append(jnp.asarray(y, jnp.int32))
    x_all, y_all = jnp.concatenate(xs), jnp.concatenate(ys)
    logits_loss = settings.logits_loss if loss is None else loss
    meta = net.meta

    def per_example(logits, y):
        return jax.vmap(lambda lg, yy: logits_loss(lg[None], yy[None]))(logits, y)

    def loss_fn(params, xb, yb):
        model = ExpandableNet(params=params, meta=meta)
        tid = xb[:, -1]
        total = 0.0
        for t, (name, d) in enumerate(zip(names, dims)):
            on = (tid == t).astype(jnp.float32)
            lg = apply(model, xb[:, :d], name)
            y_t = jnp.where(on > 0, yb, 0)
            total = total + jnp.sum(on * per_example(lg, y_t))
        value = total / xb.shape[0]
        if settings.l2_lambda:
            value = value + 0.5 * settings.l2_lambda * sum(
                jnp.sum(v * v) for v in jax.tree.leaves(params)
            )
        return value

    mask = jax.tree.map(lambda v: jnp.ones(v.shape, jnp.float32), net.params)
    for name in net.meta.tasks:
        if name.name not in names:  # heads of tasks not seen yet stay as they are
            mask["output_heads"][name.name] = jax.tree.map(
                jnp.zeros_like, mask["output_heads"][name.name]
            )
    params, _, losses = train_steps(
        net.params, settings.tx.init(net.params), tx=settings.tx, loss_fn=loss_fn,
        x=x_all, y=y_all, key=key, num_steps=cfg.steps_task1,
        batch_size=min(settings.batch_size, int(x_all.shape[0])), update_mask=mask,
        learning_rate=settings.lr_schedule,
    )  # fmt: skip
    net = net.replace(params=params)
    losses = np.asarray(jax.device_get(losses))
    stats = {"steps": int(cfg.steps_task1), "final_loss": float(losses[-100:].mean()),
             "tasks": len(names), "examples": int(x_all.shape[0])}  # fmt: skip
    data = pool[-1][1] if valid_data is None else _arrays(valid_data, "valid_data")
    return net, _finish(net, {"task": task, "phases": {"mtl": stats}}, task, data, settings)


ABLATIONS: dict[str, Method] = {
    "dnn_l1": Method("dnn_l1", dnn_l1_learn_task, uses_den_config=True),
    "den_selective": Method("den_selective", den_selective_learn_task, uses_den_config=True),
    "den_constant": Method("den_constant", den_constant_learn_task, uses_den_config=True),
    "den_no_timestamp": Method(
        "den_no_timestamp", _den_learn, predict=predict_without_timestamps, uses_den_config=True
    ),
    "mtl": Method("mtl", mtl_learn_task, needs_history=True, uses_den_config=True),
}
