"""DEN's training phases as pure functions on an :class:`~den_jax.network.ExpandableNet`.

Every phase trains with :func:`den_jax.training.train_steps` (one compiled ``lax.scan``
per phase) and returns a new network, the optimizer state and a JSON-serialisable dict of
statistics. The phases take explicit arguments (:class:`PhaseSettings`); only
:mod:`den_jax.den.learner` reads a :class:`~den_jax.den.config.DENConfig`.

Objective of every phase (paper equation numbers from Yoon et al., ICLR 2018)::

    loss(W) = L(W; D_t) + l2/2 * sum ||W||^2 + drift * sum_{old} (W - W^{t-1})^2   (Eq. 4, 6)
    then after each optimizer step: W <- prox_{lr*mu ||.||_1}(W)                   (Eq. 2-5)
                                    W_new <- prox_{lr*gamma sum_g ||.||_2}(W_new)   (Eq. 5)
                                    W[mask == 0] <- previous value                 (freezing)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from den_jax.align import grow_opt_state
from den_jax.den.proximal import prox_group_lasso_columns, prox_l1
from den_jax.losses import Loss
from den_jax.masks import task_mask
from den_jax.network import ACTIVATIONS, ExpandableNet, NetMeta, apply, resolve_task
from den_jax.surgery import add_units_all, remove_units
from den_jax.training import evaluate_loss, train_steps

LogitsLoss = Loss


@dataclasses.dataclass(frozen=True)
class PhaseSettings:
    """Explicit settings shared by the phases (built from a config by the learner).

    Attributes:
      tx: the optimizer (one object per task, so compiled loops are reused when possible).
      lr_schedule: ``step -> lr`` (the schedule inside ``tx``), for the prox thresholds.
      logits_loss: ``(logits [B, C], y [B]) -> scalar``.
      l1_lambda: mu (L1 prox; weights only).
      group_lambda: gamma (group prox on new units' incoming weights).
      l2_lambda: weight of ``0.5 * ||W||^2``.
      drift_lambda: weight of ``||W - W^{t-1}||^2`` on weights older tasks use.
      scale_prox_by_lr: thresholds ``lr * lambda`` (True) or ``lambda`` (False).
      batch_size: examples per step.
      eval_batch_size: batch size of whole-dataset evaluation.
      grow_opt_state: keep optimizer state across phases (True) or reset it (False).
      l1_in_optimizer: ``tx`` applies the L1 prox itself (``prox_scale="adam"``), so the
        phases add no separate L1 prox.
    """

    tx: optax.GradientTransformation
    lr_schedule: Callable[[Any], Any]
    logits_loss: LogitsLoss
    l1_lambda: float
    group_lambda: float
    l2_lambda: float
    drift_lambda: float
    scale_prox_by_lr: bool = True
    batch_size: int = 256
    eval_batch_size: int = 1024
    grow_opt_state: bool = False
    l1_in_optimizer: bool = False


class PhaseState(NamedTuple):
    """What flows between phases.

    Attributes:
      net: the network.
      opt_state: the optimizer state (``None`` before the first phase).
      step: optimizer steps taken so far (offset of the prox lr schedule under "grow").
    """

    net: ExpandableNet
    opt_state: Any
    step: int


# --------------------------------------------------------------------------- helpers


def _is_weight(path) -> bool:
    return getattr(path[-1], "key", None) == "w"


__all__ = [
    "LogitsLoss",
    "PhaseSettings",
    "PhaseState",
    "carry_opt_state",
    "dead_units",
    "expand",
    "make_expansion_prox",
    "make_l1_prox",
    "new_unit_indices",
    "old_task_mask",
    "prune_dead_units",
    "schedule_step",
    "task_loss",
    "train_phase",
    "weights_only",
]


def weights_only(tree: Any) -> Any:
    """A pytree like ``tree`` with 1.0 on weight matrices and ``None`` on biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.ones((), v.dtype) if _is_weight(path) else None, tree
    )


def old_task_mask(net: ExpandableNet, task: int | str) -> Any:
    """0/1 mask of the hidden-layer and input-head weights any task before ``task`` uses.

    Output heads are excluded (older heads are never trained by later tasks). Built on
    the host (NumPy), then moved to the device.
    """
    spec = resolve_task(net.meta, task)
    union = jax.tree.map(lambda v: np.zeros(v.shape, np.float32), net.params)
    for j in range(spec.index):
        union = jax.tree.map(np.maximum, union, jax.device_get(task_mask(net, j)))
    union["output_heads"] = jax.tree.map(np.zeros_like, union["output_heads"])
    return jax.tree.map(jnp.asarray, union)


def new_unit_indices(net: ExpandableNet, first_new_id: int) -> list[np.ndarray]:
    """Per layer, positions of units whose id is >= ``first_new_id`` (added since then)."""
    return [np.flatnonzero(np.asarray(layer.ids) >= first_new_id) for layer in net.meta.layers]


def _threshold(settings: PhaseSettings, lam: float, lr):
    return lr * lam if settings.scale_prox_by_lr else jnp.asarray(lam, jnp.float32)


@functools.lru_cache(maxsize=32)
def make_l1_prox(settings: PhaseSettings):
    """``prox(params, lr)``: L1 soft threshold on every weight matrix (Eq. 2-5's mu term).

    Cached per ``settings``, so phases that share settings and shapes share one compile.
    """
    if settings.l1_lambda == 0 or settings.l1_in_optimizer:
        return None
    lam = settings.l1_lambda

    def prox(params, lr):
        return prox_l1(params, _threshold(settings, lam, lr), mask=weights_only(params))

    return prox


def make_expansion_prox(settings: PhaseSettings, net: ExpandableNet, task, new_units):
    """``prox(params, lr)``: L1 then group lasso on the new units' incoming columns (Eq. 5)."""
    spec = resolve_task(net.meta, task)
    l1 = make_l1_prox(settings)
    cols = [
        jnp.asarray(np.isin(np.arange(w), u).astype(np.float32))
        for w, u in zip(net.widths, new_units)
    ]
    lam = settings.group_lambda

    def prox(params, lr):
        if l1 is not None:
            params = l1(params, lr)
        if lam == 0:
            return params
        t = _threshold(settings, lam, lr)
        params = jax.tree.map(lambda v: v, params)
        head = params["input_heads"][spec.input_key]
        params["input_heads"][spec.input_key] = {
            **head,
            "w": prox_group_lasso_columns(head["w"], t, cols[0]),
        }
        for layer in range(1, len(cols)):
            hp = params["hidden"][layer]
            params["hidden"][layer] = {**hp, "w": prox_group_lasso_columns(hp["w"], t, cols[layer])}
        return params

    return prox


@functools.lru_cache(maxsize=32)
def _loss_fn(meta: NetMeta, task: str, settings: PhaseSettings):
    """The phase objective for networks with static part ``meta`` (cached: one compile)."""

    def loss(params, xb, yb, aux):
        logits = apply(ExpandableNet(params=params, meta=meta), xb, task)
        value = settings.logits_loss(logits, yb)
        if settings.l2_lambda:
            sq = sum(jnp.sum(v * v) for v in jax.tree.leaves(params))
            value = value + 0.5 * settings.l2_lambda * sq
        if settings.drift_lambda:
            drift = jax.tree.map(
                lambda m, p, q: jnp.sum(m * (p - q) ** 2), aux["drift_mask"], params, aux["prev"]
            )
            value = value + settings.drift_lambda * sum(jax.tree.leaves(drift))
        return value

    return loss


@functools.lru_cache(maxsize=32)
def _plain_loss(meta: NetMeta, task: str, logits_loss: LogitsLoss):
    def loss(params, xb, yb):
        return logits_loss(apply(ExpandableNet(params=params, meta=meta), xb, task), yb)

    return loss


def task_loss(net: ExpandableNet, task: str, data, settings: PhaseSettings) -> float:
    """The task loss ``L(W; D)`` (no penalties) over a whole dataset ``data = (x, y)``."""
    loss = _plain_loss(net.meta, task, settings.logits_loss)
    return evaluate_loss(loss, net.params, data[0], data[1], batch_size=settings.eval_batch_size)


def schedule_step(opt_state: Any) -> int:
    """The optimizer's own step count (its learning-rate clock); 0 for ``None``.

    Under ``opt_state_policy="grow"`` the prox thresholds read the learning rate at this
    step, so the optimizer and the prox share one clock across phases and tasks. The count
    of an ``optax.scale_by_schedule`` state is used when there is one, else the first
    ``count`` found.
    """
    if opt_state is None:
        return 0
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
    if not found:
        return 0
    states = [
        leaf
        for leaf in jax.tree.leaves(
            opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState)
        )
        if isinstance(leaf, optax.ScaleByScheduleState)
    ]
    if states:
        return int(jax.device_get(states[0].count))
    return int(jax.device_get(found[0][1]))


def carry_opt_state(settings: PhaseSettings, opt_state, old: ExpandableNet, new: ExpandableNet):
    """The optimizer state for ``new``: grown by unit id, or freshly initialised."""
    if settings.grow_opt_state and opt_state is not None:
        return grow_opt_state(opt_state, old, new)
    return settings.tx.init(new.params)


def train_phase(
    state: PhaseState,
    key: jax.Array,
    task: str,
    data,
    settings: PhaseSettings,
    *,
    num_steps: int,
    update_mask: Any,
    prox=None,
    prev: Any | None = None,
    drift_mask: Any | None = None,
    phase: str = "train",
) -> tuple[PhaseState, dict]:
    """Trains ``update_mask``'s weights for ``num_steps`` steps; returns state and stats.

    Args:
      state: network, optimizer state (``None``: initialise) and global step.
      key: PRNG key for shuffling.
      task: task name (its forward pass defines the loss).
      data: ``(x, y)`` training arrays.
      settings: :class:`PhaseSettings`.
      num_steps: optimizer steps.
      update_mask: 0/1 pytree like ``net.params`` (applied after the optimizer and prox).
      prox: optional ``prox(params, lr)``.
      prev: ``W^{t-1}`` aligned to the current network (needed when ``drift_lambda > 0``).
      drift_mask: 0/1 pytree of the entries the drift penalty covers.
      phase: the phase's name, for error messages.

    Raises:
      FloatingPointError: a training loss became non-finite; the message names the task,
        the phase and the step.
    """
    net = state.net
    if settings.grow_opt_state and state.opt_state is not None:
        opt_state, offset = state.opt_state, schedule_step(state.opt_state)
    else:
        opt_state, offset = settings.tx.init(net.params), 0
    zeros = jax.tree.map(lambda v: np.zeros(v.shape, np.float32), net.params)
    aux = {
        "prev": net.params if prev is None else prev,
        "drift_mask": zeros if drift_mask is None else drift_mask,
    }
    start = time.perf_counter()
    try:
        params, opt_state, losses = train_steps(
            net.params,
            opt_state,
            tx=settings.tx,
            loss_fn=_loss_fn(net.meta, task, settings),
            x=data[0],
            y=data[1],
            key=key,
            num_steps=num_steps,
            batch_size=min(settings.batch_size, int(data[0].shape[0])),
            update_mask=update_mask,
            prox=prox,
            learning_rate=settings.lr_schedule,
            loss_aux=aux,
            step_offset=offset,
        )
    except FloatingPointError as err:
        raise FloatingPointError(f"DEN task {task!r}, phase {phase!r}: {err}") from err
    losses = np.asarray(jax.device_get(losses))
    stats = {
        "steps": int(num_steps),
        "final_loss": float(losses[-min(100, len(losses)) :].mean()),
        "trainable": int(sum(np.asarray(m).sum() for m in jax.tree.leaves(update_mask))),
        "lr_step_start": int(offset),
        "seconds": time.perf_counter() - start,
    }
    return PhaseState(net.replace(params=params), opt_state, offset + num_steps), stats


# --------------------------------------------------------------------------- expansion


def expand(
    state: PhaseState, key: jax.Array, task: str, k: int | tuple[int, ...], settings: PhaseSettings
):
    """Adds ``k`` units to every hidden layer (Alg. 3), outgoing weights initialised.

    ``k`` is one count for every layer or one per layer (see :func:`den_jax.add_units_all`).

    Returns:
      ``(state, new_units, update_mask)``: the grown network (optimizer state carried or
      reset), per-layer positions of the new units and the mask of the weights Eq. 5
      trains: the new units' incoming and outgoing weights and biases and the task's head.
    """
    old = state.net
    first_id = old.meta.next_unit_id
    net = add_units_all(old, key, k, outgoing="init")
    new_units = new_unit_indices(net, first_id)
    spec = resolve_task(net.meta, task)
    ind = [np.isin(np.arange(w), u).astype(np.float32) for w, u in zip(net.widths, new_units)]
    mask = jax.tree.map(lambda v: np.zeros(v.shape, np.float32), net.params)
    mask["input_heads"][spec.input_key]["w"][:, :] = ind[0][None, :]
    mask["hidden"][0]["b"][:] = ind[0]
    for layer in range(1, net.num_layers):
        m = np.maximum(ind[layer - 1][:, None], ind[layer][None, :])
        mask["hidden"][layer]["w"][:, :] = m
        mask["hidden"][layer]["b"][:] = ind[layer]
    mask["output_heads"][spec.name]["w"][:, :] = 1.0
    mask["output_heads"][spec.name]["b"][:] = 1.0
    mask = jax.tree.map(jnp.asarray, mask)
    opt_state = carry_opt_state(settings, state.opt_state, old, net)
    return PhaseState(net, opt_state, state.step), new_units, mask


def dead_units(net: ExpandableNet, layer: int, positions: np.ndarray, task: str) -> np.ndarray:
    """Those of ``positions`` (units of ``layer``) that cannot change any output.

    A unit is dead when (a) its incoming weights (the task's input-head columns for layer 0)
    are all zero and its activation of its bias is zero (``act(b) == 0``: with ReLU,
    ``b <= 0``; a zero-input unit with ``act(b) != 0`` feeds a constant into the next
    layer and is kept), or (b) all its outgoing weights (every row of the next hidden
    matrix, or of every output head for the top layer) are zero.

    Args:
      net: the network.
      layer: hidden-layer index.
      positions: ``int`` positions of candidate units.
      task: the task whose input head feeds layer 0.

    Returns:
      The dead positions (sorted as given).
    """
    spec = resolve_task(net.meta, task)
    p = jax.device_get(net.params)
    if layer == 0:
        w_in = np.asarray(p["input_heads"][spec.input_key]["w"])
    else:
        w_in = np.asarray(p["hidden"][layer]["w"])
    bias = np.asarray(p["hidden"][layer]["b"])[positions]
    act_b = np.asarray(ACTIVATIONS[net.meta.activation](jnp.asarray(bias)))
    no_input = np.all(w_in[:, positions] == 0, axis=0) & (act_b == 0)
    if layer + 1 < net.num_layers:
        outs = [np.asarray(p["hidden"][layer + 1]["w"])]
    else:
        outs = [np.asarray(h["w"]) for h in p["output_heads"].values()]
    no_output = np.all([np.all(o[positions] == 0, axis=1) for o in outs], axis=0)
    return positions[no_input | no_output]


def prune_dead_units(state: PhaseState, task: str, new_units, settings: PhaseSettings):
    """Removes new units that cannot change any output (:func:`dead_units`), top layer first.

    Alg. 3 removes units with all-zero incoming weights; a unit whose bias keeps it active
    is kept, and a unit whose outgoing weights are all zero is removed too.

    Returns:
      ``(state, removed_per_layer)``.
    """
    net = state.net
    ids = [[net.meta.layers[layer].ids[i] for i in units] for layer, units in enumerate(new_units)]
    removed = [0] * net.num_layers
    for layer in range(net.num_layers - 1, -1, -1):
        where = {uid: i for i, uid in enumerate(net.meta.layers[layer].ids)}
        positions = np.asarray([where[u] for u in ids[layer]], np.int64)
        if positions.size == 0:
            continue
        dead = dead_units(net, layer, positions, task)
        if dead.size and dead.size < net.widths[layer]:
            new_net = remove_units(net, layer, dead)
            opt_state = carry_opt_state(settings, state.opt_state, net, new_net)
            state = PhaseState(new_net, opt_state, state.step)
            net = new_net
            removed[layer] = int(dead.size)
    return state, removed
