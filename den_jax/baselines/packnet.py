"""PackNet (Mallya & Lazebnik 2018): tasks packed into one fixed network by pruning.

One network of fixed size is shared by every task. Each weight of a shared weight matrix
(the shared input layer when the stream has one, and every hidden matrix ``l >= 1``) has
an *owner*: ``-1`` (free) or the index of the task that froze it. For task ``t``:

1. **train** the free weights (and the task's own input/output heads) for ``cfg.steps``
   steps; the weights of earlier tasks take part in the forward pass but stay frozen;
2. **prune**: in every shared matrix, release the fraction ``p_t`` (``cfg.packnet_prune``)
   of the weights just trained with the smallest magnitude: they are set to 0 and stay
   free for later tasks (per layer, as the paper's ``prune_perc_per_layer``);
3. **retrain** the kept weights for ``cfg.packnet_retrain_steps`` steps (pruned ones
   held at 0), then give them to task ``t`` (frozen from now on).

Inference on task ``t`` (:func:`packnet_predict`) uses only the weights owned by tasks
``0..t`` (a masked forward pass): later tasks never change an earlier task's outputs.

Choices:

* **Biases**: the hidden biases are trained with the first task and then frozen for
  every task (the official code's default, ``--train_biases`` off: biases keep their
  task-1 values). Output heads are per task (trained with their task, never pruned).
* **Per-task input heads** (tasks whose input width differs from the stream's, e.g.
  ``sklearn_hetero``) are private to their task: trained with it, not pruned.
* Freed weights start the next task at 0, as in the official code (pruned weights are
  zeroed and only the mask changes).

``state = {"owner": {"input": int32 [d, h_0] (if shared), "hidden1": int32 [h_0, h_1],
...}}``. A task that finds a shared matrix with no free weight left raises a
``ValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.baselines.common import BaselineConfig, check_task_data, loss_of
from den_jax.capacity import count_nonzero_params, count_params
from den_jax.network import SHARED_INPUT, ExpandableNet, apply, resolve_task, task_params
from den_jax.training import evaluate_loss, resolve_optimizer, train_steps

__all__ = [
    "owned_mask",
    "packnet_count",
    "packnet_learn_task",
    "packnet_predict",
    "prune_fraction",
    "prunable",
    "packnet_task_network",
]


def prunable(params: dict) -> dict[str, jax.Array]:
    """The shared weight matrices PackNet assigns to tasks, by name (``input``, ``hidden<l>``)."""
    out = {}
    if SHARED_INPUT in params["input_heads"]:
        out["input"] = params["input_heads"][SHARED_INPUT]["w"]
    for layer in range(1, len(params["hidden"])):
        out[f"hidden{layer}"] = params["hidden"][layer]["w"]
    return out


def _with(params: dict, mats: dict[str, Any]) -> dict:
    """``params`` with the prunable matrices replaced by ``mats``."""
    p = jax.tree.map(lambda v: v, params)
    for name, w in mats.items():
        if name == "input":
            p["input_heads"][SHARED_INPUT] = {**p["input_heads"][SHARED_INPUT], "w": w}
        else:
            layer = int(name[len("hidden") :])
            p["hidden"][layer] = {**p["hidden"][layer], "w": w}
    return p


def owned_mask(owner: dict[str, Any], task_index: int) -> dict[str, jax.Array]:
    """Boolean masks of the weights owned by tasks ``0..task_index``."""
    return {k: (o >= 0) & (o <= task_index) for k, o in owner.items()}


def packnet_task_network(net: ExpandableNet, state: Any, task: int | str) -> ExpandableNet:
    """``net`` with every weight not owned by tasks ``<= task`` set to 0.

    ``dj.apply(packnet_task_network(net, state, t), x, t)`` equals :func:`packnet_predict`.
    """
    spec = resolve_task(net.meta, task)
    owner = _owner(state)
    mats = prunable(net.params)
    masks = owned_mask(owner, spec.index)
    masked = {k: jnp.where(masks[k], w, jnp.zeros_like(w)) for k, w in mats.items()}
    return net.replace(params=_with(net.params, masked))


def packnet_predict(net: ExpandableNet, state: Any, x: jax.Array, task: int | str) -> jax.Array:
    """Task ``task``'s logits using only weights owned by tasks ``<= task`` (``predict`` hook)."""
    return apply(packnet_task_network(net, state, task), x, task)


def _owner(state: Any) -> dict:
    if not isinstance(state, dict) or not isinstance(state.get("owner"), dict):
        raise ValueError(
            "PackNet state must be a dict {'owner': {...}} (the previous report's state), "
            f"got {type(state).__name__}"
        )
    return state["owner"]


def packnet_count(net: ExpandableNet, state: Any, task: int | str | None = None) -> dict:
    """Stored / non-zero parameters of the network, or those task ``task`` uses.

    Returns:
      ``{"params", "nonzero", "units"}``; for a task, ``params`` counts its forward pass
      with the shared matrices restricted to the weights owned by tasks ``<= task``.
    """
    units = [int(w) for w in net.widths]
    if task is None:
        return {"params": count_params(net), "nonzero": count_nonzero_params(net), "units": units}
    spec = resolve_task(net.meta, task)
    view = packnet_task_network(net, state, spec.name)
    tp = task_params(view, spec.name)
    owner = _owner(state)
    masks = {k: np.asarray(m) for k, m in owned_mask(owner, spec.index).items()}
    total = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(tp))
    total -= sum(int(m.size - m.sum()) for k, m in masks.items() if k != "input" or
                 spec.input_key == SHARED_INPUT)  # fmt: skip
    nonzero = int(sum(np.count_nonzero(np.asarray(v)) for v in jax.tree.leaves(tp)))
    return {"params": int(total), "nonzero": nonzero, "units": units}


def prune_fraction(cfg: BaselineConfig, task_index: int) -> float:
    """``cfg.packnet_prune`` for task ``task_index`` (a sequence's last value repeats)."""
    p = cfg.packnet_prune
    if isinstance(p, Sequence) and not isinstance(p, str):
        if not p:
            raise ValueError("BaselineConfig.packnet_prune must not be an empty sequence")
        p = p[min(task_index, len(p) - 1)]
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"BaselineConfig.packnet_prune must be in [0, 1], got {p}")
    return p


def _retrain_steps(cfg: BaselineConfig) -> int:
    n = cfg.packnet_retrain_steps
    if n is None:
        return max(1, cfg.steps // 4)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"BaselineConfig.packnet_retrain_steps must be an int >= 0, got {n!r}")
    return int(n)


def _update_mask(net: ExpandableNet, spec, weights: dict[str, Any], first: bool) -> dict:
    """1 on the task's heads, the given prunable weights and (first task) the biases."""
    p = net.params

    def fill(tree, on):
        return jax.tree.map(lambda v: jnp.full((), 1.0 if on else 0.0, jnp.float32), tree)

    mask = {
        "input_heads": {k: fill(v, k == spec.input_key and k != SHARED_INPUT)
                        for k, v in p["input_heads"].items()},
        "hidden": fill(p["hidden"], first),
        "output_heads": {k: fill(v, k == spec.name) for k, v in p["output_heads"].items()},
    }  # fmt: skip
    return _with(mask, {k: jnp.asarray(m, jnp.float32) for k, m in weights.items()})


def _train(net, spec, x, y, key, cfg, steps, mask, loss, optimizer, phase):
    meta, name = net.meta, spec.name
    batch_loss = loss_of(cfg) if loss is None else loss
    wd = float(cfg.weight_decay)

    def loss_fn(params, xb, yb, m):
        value = batch_loss(apply(ExpandableNet(params=params, meta=meta), xb, name), yb)
        if wd:
            trained = jax.tree.map(lambda v, k: v * k, params, m)
            value = value + wd * 0.5 * sum(jnp.sum(v**2) for v in jax.tree.leaves(trained))
        return value

    batch = min(cfg.batch_size, int(np.shape(x)[0]))
    tx = resolve_optimizer(optimizer, cfg.schedule(batch))
    try:
        params, _, losses = train_steps(
            net.params, tx.init(net.params), tx=tx, loss_fn=loss_fn, x=x, y=y, key=key,
            num_steps=steps, batch_size=batch, update_mask=mask, loss_aux=mask,
        )  # fmt: skip
    except FloatingPointError as err:
        raise FloatingPointError(f"packnet task {name!r}, phase {phase!r}: {err}") from err
    return net.replace(params=params), np.asarray(losses)


def _prune(weights: dict, owner: dict, p: float, task_index: int):
    """Releases the fraction ``p`` of the free (just trained) weights with least magnitude."""
    new_w, new_owner, released = {}, {}, {}
    for k, w in weights.items():
        w_np, o_np = np.asarray(w).copy(), np.asarray(owner[k]).copy()
        idx = np.flatnonzero(o_np.reshape(-1) == -1)
        n_release = int(round(p * idx.size))
        order = np.argsort(np.abs(w_np.reshape(-1)[idx]), kind="stable")
        drop, keep = idx[order[:n_release]], idx[order[n_release:]]
        w_np.reshape(-1)[drop] = 0.0
        o_np.reshape(-1)[keep] = task_index
        new_w[k], new_owner[k], released[k] = jnp.asarray(w_np), jnp.asarray(o_np), int(drop.size)
    return new_w, new_owner, released


def packnet_learn_task(
    net, key, task, train, valid, cfg, *, state=None, loss=None, optimizer=None
) -> tuple[ExpandableNet, dict]:
    """Train on the free weights, prune, retrain the kept ones, freeze them for ``task``.

    Args:
      net: the network holding ``task`` (the runner added its heads).
      key: PRNG key (shuffling).
      task: the task's name.
      train: ``(x, y)`` (or batches).
      valid: ``(x, y)`` or ``None`` (validation loss in the report).
      cfg: a :class:`BaselineConfig` (``steps``, ``packnet_prune``,
        ``packnet_retrain_steps``, schedule, weight decay on the trained entries).
      state: ``None`` for the first task, then the previous report's ``state``.
      loss: optional ``(logits, y) -> scalar``.
      optimizer: optional ``optax`` transformation or ``schedule -> transformation``.

    Returns:
      ``(net, report)``; ``report["state"] = {"owner": {...}}``.

    Raises:
      ValueError: a shared matrix has no free weight left for ``task`` (names the task
        and the layer), or a bad state/config.
    """
    train, valid = check_task_data(net, task, cfg, train, valid)
    spec = resolve_task(net.meta, task)
    p, retrain = prune_fraction(cfg, spec.index), _retrain_steps(cfg)
    mats = prunable(net.params)
    if state is None:
        if spec.index != 0:
            raise ValueError(f"PackNet task {task!r} (index {spec.index}) needs the state")
        owner = {k: jnp.full(np.shape(w), -1, jnp.int32) for k, w in mats.items()}
    else:
        owner = dict(_owner(state))
        if set(owner) != set(mats):
            raise ValueError(f"PackNet state owns {sorted(owner)}, the network has {sorted(mats)}")
    free = {k: np.asarray(o) == -1 for k, o in owner.items()}
    for k, f in free.items():
        if not f.any():
            raise ValueError(
                f"PackNet: no free weights left for task {task!r} (task {spec.index}) in "
                f"layer {k!r}: tasks 0..{spec.index - 1} own all {f.size} of its weights; "
                "prune a larger fraction (BaselineConfig.packnet_prune) or widen the network"
            )
    first = spec.index == 0
    x, y = train
    k_train, k_retrain = jax.random.split(key)
    mask = _update_mask(net, spec, free, first)
    net, losses = _train(net, spec, x, y, k_train, cfg, cfg.steps, mask, loss, optimizer, "train")
    new_w, owner, released = _prune(prunable(net.params), owner, p, spec.index)
    net = net.replace(params=_with(net.params, new_w))
    retrain_losses = None
    if retrain:
        mine = {k: np.asarray(o) == spec.index for k, o in owner.items()}
        net, retrain_losses = _train(net, spec, x, y, k_retrain, cfg, retrain,
                                     _update_mask(net, spec, mine, first), loss, optimizer,
                                     "retrain")  # fmt: skip
    new_state = {"owner": owner}
    final = losses if retrain_losses is None else retrain_losses
    w = max(1, min(100, len(final) // 4))
    if valid is None or np.shape(valid[0])[0] == 0:
        valid_loss = float("nan")
    else:
        batch_loss = loss_of(cfg) if loss is None else loss
        meta, name = net.meta, spec.name

        def vloss(params, xb, yb, st):
            view = packnet_task_network(ExpandableNet(params=params, meta=meta), st, name)
            return batch_loss(apply(view, xb, name), yb)

        valid_loss = evaluate_loss(vloss, net.params, valid[0], valid[1], loss_aux=new_state)
    owned = {k: int(np.sum(np.asarray(o) == spec.index)) for k, o in owner.items()}
    report = {
        "phase": "packnet",
        "loss": float(final[-w:].mean()),
        "loss_first": float(losses[: max(1, min(100, len(losses) // 4))].mean()),
        "steps": int(cfg.steps) + int(retrain),
        "units_added": 0,
        "split": 0,
        "pruned": int(sum(released.values())),
        "valid_loss": valid_loss,
        "prune_fraction": p,
        "owned": owned,
        "free_after": {k: int(np.sum(np.asarray(o) == -1)) for k, o in owner.items()},
        "state": new_state,
    }
    return net, report
