"""The public DEN entry point: learn one task of a stream (Yoon et al. 2018, Alg. 1).

``learn_task`` runs, for a task that already exists in the network (``dj.add_task``):

* task index 0: sparse training of the whole network (Eq. 2);
* later tasks:
  1. sparse training of the task's output head alone (Eq. 3, ``steps_head`` steps);
  2. breadth-first search from all output units through non-zero weights (Alg. 2);
  3. selective retraining of that subnetwork with the drift penalty (Eq. 4 + Eq. 6's term);
  4. if the task loss on the whole validation (or training) set exceeds tau: dynamic
     expansion by k units per layer trained with L1 + group lasso, then removal of new
     units left with all-zero incoming weights (Alg. 3, Eq. 5);
  5. split/duplication (Alg. 4, Eq. 6) for every task (``split_when="always"``) or only
     after an expansion (``"after_expansion"``, official code).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from den_jax.align import align_tree, grow_opt_state
from den_jax.capacity import count_params
from den_jax.data.checks import check_finite, check_targets
from den_jax.den import phases, split
from den_jax.den.compact import Subnetwork
from den_jax.den.config import DENConfig
from den_jax.den.phases import PhaseSettings, PhaseState
from den_jax.den.proximal import adam_l1_prox
from den_jax.den.selection import select_subnetwork
from den_jax.losses import get_loss
from den_jax.masks import task_mask
from den_jax.network import ExpandableNet, resolve_task
from den_jax.training import Optimizer, as_arrays, resolve_optimizer

logger = logging.getLogger(__name__)

__all__ = [
    "layer_counts",
    "learn_task",
    "learn_task_with_state",
    "lr_schedule",
    "make_settings",
]


def lr_schedule(cfg: DENConfig) -> optax.Schedule:
    """``lr * decay_rate ** floor(step / decay_steps)`` (official: 1e-3, 0.95 per epoch)."""
    return optax.exponential_decay(
        cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_rate, staircase=True
    )


def make_settings(
    cfg: DENConfig,
    *,
    loss: phases.LogitsLoss | None = None,
    optimizer: Optimizer | None = None,
) -> PhaseSettings:
    """Turns a config (plus optional loss/optimizer overrides) into :class:`PhaseSettings`.

    Without overrides the result is cached per config, so tasks and phases with the same
    shapes reuse compiled training loops.

    Args:
      cfg: the DEN config.
      loss: ``(logits, y) -> scalar`` batch mean; default ``den_jax.losses.get_loss(cfg.loss)``.
      optimizer: an ``optax.GradientTransformation`` or a factory ``schedule -> tx``
        (:func:`den_jax.training.resolve_optimizer`); default ``optax.adam(schedule)``.

    Returns:
      The :class:`PhaseSettings`.
    """
    if loss is None and optimizer is None:
        return _default_settings(cfg)
    return _build_settings(cfg, loss, optimizer)


@functools.lru_cache(maxsize=8)
def _default_settings(cfg: DENConfig) -> PhaseSettings:
    return _build_settings(cfg, None, None)


def _build_settings(cfg: DENConfig, loss, optimizer) -> PhaseSettings:
    schedule = lr_schedule(cfg)
    if loss is None:
        loss = get_loss(cfg.loss)
    elif not callable(loss):
        raise ValueError(f"loss must be a function (logits, y) -> scalar, got {loss!r}")
    in_adam = cfg.prox_scale == "adam"
    if in_adam and optimizer is not None:
        raise ValueError(
            'DENConfig.prox_scale="adam" builds its own Adam (adam_l1_prox); '
            "it cannot be combined with optimizer="
        )
    tx = (
        adam_l1_prox(schedule, float(cfg.l1_lambda))
        if in_adam
        else resolve_optimizer(optimizer, schedule)
    )
    return PhaseSettings(
        tx=tx,
        lr_schedule=schedule,
        logits_loss=loss,
        l1_lambda=float(cfg.l1_lambda),
        group_lambda=float(cfg.group_lambda),
        l2_lambda=float(cfg.l2_lambda),
        drift_lambda=float(cfg.drift_lambda),
        scale_prox_by_lr=cfg.prox_scale in ("lr", "adam"),
        l1_in_optimizer=in_adam,
        batch_size=int(cfg.batch_size),
        eval_batch_size=int(cfg.eval_batch_size),
        grow_opt_state=cfg.opt_state_policy == "grow",
    )


@functools.lru_cache(maxsize=8)
def _head_settings(settings: PhaseSettings, head_l1: float | None) -> PhaseSettings:
    """``settings`` for the sparse-head phase: L1 strength ``head_l1`` (``None``: unchanged)."""
    if head_l1 is None or float(head_l1) == settings.l1_lambda:
        return settings
    tx = (
        adam_l1_prox(settings.lr_schedule, float(head_l1))
        if settings.l1_in_optimizer
        else settings.tx
    )
    return dataclasses.replace(settings, tx=tx, l1_lambda=float(head_l1))


def _as_data(data, name: str, spec) -> tuple[jax.Array, jax.Array]:
    x, y = as_arrays(data, f"{name} of task {spec.name!r}")
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    if x.ndim != 2 or x.shape[1] != spec.input_dim:
        raise ValueError(
            f"{name}: task {spec.name!r} expects x of shape [N, {spec.input_dim}], "
            f"got {tuple(x.shape)}"
        )
    if y.shape[0] != x.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name}: x and y must have the same non-zero number of rows, got "
            f"{x.shape[0]} and {y.shape[0]}"
        )
    check_finite(x, what=f"{name} of task {spec.name!r}: x")
    check_targets(y, spec.output_dim, what=f"{name} of task {spec.name!r}: y")
    return x, y


def _widths(net: ExpandableNet) -> list[int]:
    return [int(w) for w in net.widths]


def learn_task_with_state(
    net: ExpandableNet,
    key: jax.Array,
    task: str,
    train_data,
    valid_data,
    cfg: DENConfig,
    *,
    opt_state: Any | None = None,
    loss: phases.LogitsLoss | None = None,
    optimizer: Optimizer | None = None,
    prune: bool = True,
) -> tuple[ExpandableNet, Any, dict]:
    """:func:`learn_task` that also takes and returns the optimizer state.

    ``opt_state`` is ``None`` or the ``(state, network)`` pair a previous call returned.
    With ``cfg.opt_state_policy == "grow"`` that state is aligned by unit id to ``net``
    (which may have gained a task since: new heads get zero moments) and carried into the
    first phase and across every growth step; with ``"reset"`` it is ignored and every
    phase starts from ``tx.init``. ``prune=False`` keeps every unit an expansion adds (the
    DEN-Constant ablation). Returns ``(net, (opt_state, net), report)``.
    """
    if not isinstance(cfg, DENConfig):
        raise ValueError(f"cfg must be a DENConfig, got {type(cfg).__name__}")
    spec = resolve_task(net.meta, task)
    if spec.index != len(net.meta.tasks) - 1:
        raise ValueError(
            f"task {task!r} (index {spec.index}) is not the newest task "
            f"({net.meta.tasks[-1].name!r}); DEN learns tasks in order"
        )
    if isinstance(cfg.new_nodes_k, tuple) and len(cfg.new_nodes_k) != net.num_layers:
        raise ValueError(
            f"DENConfig.new_nodes_k={list(cfg.new_nodes_k)} has {len(cfg.new_nodes_k)} entries; "
            f"expected one per hidden layer of the network ({net.num_layers})"
        )
    train = _as_data(train_data, "train_data", spec)
    valid = None if valid_data is None else _as_data(valid_data, "valid_data", spec)
    settings = make_settings(cfg, loss=loss, optimizer=optimizer)
    chex.assert_tree_all_finite(net.params)
    t0 = time.perf_counter()
    keys = iter(jax.random.split(key, 16))
    if settings.grow_opt_state and opt_state is not None:
        if not (isinstance(opt_state, tuple) and len(opt_state) == 2):
            raise ValueError(
                "opt_state must be the (state, network) pair returned by learn_task_with_state"
            )
        opt_state = grow_opt_state(opt_state[0], opt_state[1], net)
    else:
        opt_state = None
    # One learning-rate clock: the prox reads the lr at the optimizer's own step count.
    state = PhaseState(net, opt_state, phases.schedule_step(opt_state))
    report: dict[str, Any] = {"task": spec.name, "index": spec.index, "phases": {}}

    if spec.index == 0:
        state, stats = phases.train_phase(
            state,
            next(keys),
            spec.name,
            train,
            settings,
            num_steps=cfg.steps_task1,
            update_mask=task_mask(state.net, spec.name),
            prox=phases.make_l1_prox(settings),
            phase="task1",
        )
        report["phases"]["task1"] = stats
    else:
        state = _learn_later_task(state, keys, spec, train, valid, cfg, settings, report, prune)

    eval_data = valid if valid is not None else train
    report["final_task_loss"] = phases.task_loss(state.net, spec.name, eval_data, settings)
    report["widths"] = _widths(state.net)
    report["params"] = int(count_params(state.net))
    report["stored_params"] = int(sum(np.prod(v.shape) for v in jax.tree.leaves(state.net.params)))
    report["nonzero_params"] = int(
        sum(int(jnp.count_nonzero(v)) for v in jax.tree.leaves(state.net.params))
    )
    report["layers"] = layer_counts(state.net, spec.name)
    report["steps"] = int(
        sum(
            ph.get("steps", 0)
            + ph.get("pretrain", {}).get("steps", 0)
            + ph.get("retrain", {}).get("steps", 0)
            for ph in report["phases"].values()
        )
    )
    report["seconds"] = time.perf_counter() - t0
    logger.info("DEN task %s: %s", spec.name, report)
    return state.net, (state.opt_state, state.net), report


def layer_counts(net: ExpandableNet, task: str) -> dict[str, list[int]]:
    """Per hidden layer, stored and non-zero entries in all, and those ``task`` uses.

    Layer ``l`` holds its incoming weights (every input head for layer 0) and biases; the
    task's own entries are those of :func:`den_jax.masks.task_mask` (the paper's capacity
    count is the non-zero weights of what a task uses).

    Returns:
      ``{"stored", "nonzero", "task_used", "task_nonzero"}``, each a list per hidden layer,
      plus the same four for the output heads under ``"heads_*"`` keys.
    """
    p = jax.device_get(net.params)
    m = jax.device_get(task_mask(net, task))

    def layer_leaves(tree, layer):
        if layer == 0:
            return [h["w"] for h in tree["input_heads"].values()] + [tree["hidden"][0]["b"]]
        return [tree["hidden"][layer]["w"], tree["hidden"][layer]["b"]]

    out: dict[str, list[int]] = {"stored": [], "nonzero": [], "task_used": [], "task_nonzero": []}
    for layer in range(net.num_layers):
        vals = [np.asarray(v) for v in layer_leaves(p, layer)]
        masks = [np.asarray(v) for v in layer_leaves(m, layer)]
        out["stored"].append(int(sum(v.size for v in vals)))
        out["nonzero"].append(int(sum(np.count_nonzero(v) for v in vals)))
        out["task_used"].append(int(sum(np.count_nonzero(k) for k in masks)))
        out["task_nonzero"].append(
            int(sum(np.count_nonzero((v != 0) & (k != 0)) for v, k in zip(vals, masks)))
        )
    heads = [np.asarray(v) for v in jax.tree.leaves(p["output_heads"])]
    hmask = [np.asarray(v) for v in jax.tree.leaves(m["output_heads"])]
    out["heads_stored"] = [int(sum(v.size for v in heads))]
    out["heads_nonzero"] = [int(sum(np.count_nonzero(v) for v in heads))]
    out["heads_task_nonzero"] = [
        int(sum(np.count_nonzero((v != 0) & (k != 0)) for v, k in zip(heads, hmask)))
    ]
    return out


def _learn_later_task(
    state, keys, spec, train, valid, cfg, settings, report, prune=True
) -> PhaseState:
    name = spec.name
    prev_net = state.net
    prev_params = state.net.params  # W^{t-1} (the task's fresh head included, unused)

    # 1. Sparse output head (Eq. 3): only the task's head is trainable.
    head_mask = jax.tree.map(lambda v: np.zeros(v.shape, np.float32), state.net.params)
    head_mask["output_heads"][name] = jax.tree.map(np.ones_like, head_mask["output_heads"][name])
    head_mask = jax.tree.map(jnp.asarray, head_mask)
    head_settings = _head_settings(settings, cfg.head_l1_lambda)
    state, stats = phases.train_phase(
        state,
        next(keys),
        name,
        train,
        head_settings,
        num_steps=cfg.steps_head,
        update_mask=head_mask,
        prox=phases.make_l1_prox(head_settings),
        phase="head",
    )
    stats["l1_lambda"] = head_settings.l1_lambda
    report["phases"]["head"] = stats

    # 2. Breadth-first search (Alg. 2) and 3. selective retraining (Eq. 4 + drift).
    selection = select_subnetwork(state.net, name)
    drift_mask = phases.old_task_mask(state.net, name)
    sub = None
    if cfg.selective_retraining == "compact":
        sub = Subnetwork.build(state.net, name, selection.units)
        small = sub.compact_net()
        phase_state = PhaseState(small, None, state.step)
        update_mask = jax.tree.map(jnp.ones_like, small.params)
        prev, drift_mask = sub.gather(prev_params), sub.gather(drift_mask)
    else:
        phase_state, update_mask, prev = state, selection.masks, prev_params
    phase_state, stats = phases.train_phase(
        phase_state,
        next(keys),
        name,
        train,
        settings,
        num_steps=cfg.steps_selective,
        update_mask=update_mask,
        prox=phases.make_l1_prox(settings),
        prev=prev,
        drift_mask=drift_mask,
        phase="selective",
    )
    stats["compact"] = sub is not None
    if sub is None:
        state = phase_state
    else:
        state = PhaseState(sub.scatter(phase_state.net), None, phase_state.step)
    stats["selected_units"] = [int(u.size) for u in selection.units]
    stats["available_units"] = [int(w) for w in state.net.widths]
    stats["selected_fraction"] = [
        float(u.size) / max(int(w), 1) for u, w in zip(selection.units, state.net.widths)
    ]
    report["phases"]["selective"] = stats

    # 4. Dynamic expansion (Alg. 3, Eq. 5).
    measure_on = valid if (valid is not None and cfg.expansion_loss_on == "valid") else train
    loss_after = phases.task_loss(state.net, name, measure_on, settings)
    expanded = loss_after > cfg.expansion_threshold
    exp_report: dict[str, Any] = {
        "decision": (
            f"{'expand' if expanded else 'keep'}: task loss {loss_after:.4g} "
            f"{'>' if expanded else '<='} tau {cfg.expansion_threshold:.4g}"
        ),
        "loss_before": loss_after,
        "measured_on": "valid" if measure_on is valid else "train",
        "threshold": cfg.expansion_threshold,
        "expanded": bool(expanded),
        "added": [0] * state.net.num_layers,
        "kept": [0] * state.net.num_layers,
        "pruned": [0] * state.net.num_layers,
    }
    if expanded:
        start = time.perf_counter()
        state, new_units, mask = phases.expand(state, next(keys), name, cfg.new_nodes_k, settings)
        state, stats = phases.train_phase(
            state,
            next(keys),
            name,
            train,
            settings,
            num_steps=cfg.steps_expand,
            update_mask=mask,
            prox=phases.make_expansion_prox(settings, state.net, name, new_units),
            phase="expansion",
        )
        if prune:
            state, removed = phases.prune_dead_units(state, name, new_units, settings)
        else:
            removed = [0] * state.net.num_layers
        exp_report.update(stats)
        exp_report["added"] = [int(u.size) for u in new_units]
        exp_report["pruned"] = removed
        exp_report["kept"] = [int(u.size) - r for u, r in zip(new_units, removed)]
        exp_report["loss_after"] = phases.task_loss(state.net, name, measure_on, settings)
        exp_report["seconds"] = time.perf_counter() - start
    report["phases"]["expansion"] = exp_report

    # 5. Split / duplication (Alg. 4, Eq. 6).
    do_split = cfg.split_when == "always" or (cfg.split_when == "after_expansion" and expanded)
    split_report: dict[str, Any] = {"ran": bool(do_split), "split": [0] * state.net.num_layers}
    if do_split:
        start = time.perf_counter()
        drift_mask = phases.old_task_mask(state.net, name)
        if cfg.steps_split_pretrain > 0:
            state, stats = phases.train_phase(
                state,
                next(keys),
                name,
                train,
                settings,
                num_steps=cfg.steps_split_pretrain,
                update_mask=task_mask(state.net, name),
                prox=phases.make_l1_prox(settings),
                prev=align_tree(prev_params, prev_net, state.net),
                drift_mask=drift_mask,
                phase="split_pretrain",
            )
            split_report["pretrain"] = stats
        prev_aligned = align_tree(prev_params, prev_net, state.net)
        drift = split.unit_drift(state.net, prev_aligned, drift_mask)
        chosen = split.choose_split_units(
            drift, state.net, spec.index, cfg.drift_threshold, cfg.max_splits_per_layer
        )
        old_stamps = [np.asarray(layer.stamps) < spec.index for layer in state.net.meta.layers]
        split_report["drift_max"] = [
            float(d[s].max()) if s.any() else 0.0 for d, s in zip(drift, old_stamps)
        ]
        split_report["drift_mean"] = [
            float(d[s].mean()) if s.any() else 0.0 for d, s in zip(drift, old_stamps)
        ]
        split_report["over_threshold"] = [
            int(((d > cfg.drift_threshold) & s).sum()) for d, s in zip(drift, old_stamps)
        ]
        state = split.split_units(state, name, chosen, prev_params, prev_net, settings)
        split_report["split"] = [int(c.size) for c in chosen]
        split_report["cap"] = int(cfg.max_splits_per_layer)
        split_report["cap_hit"] = [
            bool(over > int(c.size)) for over, c in zip(split_report["over_threshold"], chosen)
        ]
        if any(split_report["cap_hit"]):
            logger.warning(
                "DEN task %s: split cap %d hit (over sigma: %s, split: %s)",
                name,
                cfg.max_splits_per_layer,
                split_report["over_threshold"],
                split_report["split"],
            )
        drift_mask = phases.old_task_mask(state.net, name)
        if cfg.split_retrain == "all":
            retrain_mask = task_mask(state.net, name)
        else:
            retrain_mask = jax.tree.map(
                lambda m, d: jnp.asarray(np.asarray(m) * (1 - np.asarray(d))),
                task_mask(state.net, name),
                drift_mask,
            )
        state, stats = phases.train_phase(
            state,
            next(keys),
            name,
            train,
            settings,
            num_steps=cfg.steps_split,
            update_mask=retrain_mask,
            prox=phases.make_l1_prox(settings),
            prev=align_tree(prev_params, prev_net, state.net),
            drift_mask=drift_mask,
            phase="split_retrain",
        )
        split_report["retrain"] = stats
        split_report["seconds"] = time.perf_counter() - start
    report["phases"]["split"] = split_report
    return state


def learn_task(
    net: ExpandableNet,
    key: jax.Array,
    task: str,
    train_data,
    valid_data,
    cfg: DENConfig,
    *,
    state: Any = None,
    loss: phases.LogitsLoss | None = None,
    optimizer: Optimizer | None = None,
) -> tuple[ExpandableNet, dict]:
    """Learns ``task`` with DEN (Alg. 1) and returns the grown network and a report.

    Args:
      net: the network; ``task`` must be its newest task (call ``dj.add_task`` first).
      key: PRNG key (shuffling, new units).
      task: the task's name.
      train_data: ``(x [N, d_in] float, y [N] int labels)`` or an iterable of
        ``(x_batch, y_batch)`` pairs (:func:`den_jax.training.as_arrays`).
      valid_data: the same, or ``None``; the expansion test uses it when given.
      cfg: a :class:`~den_jax.den.config.DENConfig`.
      state: accepted for the common learner signature and ignored (DEN keeps no state
        between tasks besides the network).
      loss: ``(logits, y) -> scalar`` batch mean (e.g. ``den_jax.losses.sigmoid_ce``);
        overrides ``cfg.loss``.
      optimizer: an ``optax.GradientTransformation`` or a one-argument factory
        ``schedule -> GradientTransformation`` called with DEN's learning-rate schedule
        (default ``optax.adam(schedule)``).

    Returns:
      ``(net, report)``; ``report`` is JSON-serialisable: per phase ``steps``,
      ``final_loss`` (mean of the last 100 steps' objective), ``seconds``, ``trainable``
      (entries), the selected subnetwork sizes, units added/kept/pruned per layer, the
      expansion decision with the loss it was based on, units split per layer and drift
      statistics; plus ``final_task_loss``, ``widths``, ``params`` (``dj.count_params``:
      entries some task uses), ``stored_params`` (all stored entries), ``nonzero_params``.

    Raises:
      ValueError: bad data, config or task.
      FloatingPointError: a loss became non-finite (the message names task and phase).
    """
    del state
    net, _, report = learn_task_with_state(
        net,
        key,
        task,
        train_data,
        valid_data,
        cfg,
        loss=loss,
        optimizer=optimizer,
    )
    return net, report
