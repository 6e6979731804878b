"""DEN's split/duplication step (Alg. 4): unit drift, choice of units, duplication.

After selective retraining (and expansion), each old unit's drift
``rho_i = ||w_i^t - w_i^{t-1}||_2`` is measured; units with ``rho_i > sigma``, most drifted
first and at most a cap per layer, are duplicated: the copy (stamped with the current
task) keeps the new weights, the original gets ``W^{t-1}`` back, so older tasks see their
old unit again. The learner then retrains with Eq. 6.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.align import align_tree
from den_jax.den.phases import PhaseSettings, PhaseState, carry_opt_state, old_task_mask
from den_jax.network import ExpandableNet, resolve_task
from den_jax.surgery import duplicate_units

__all__ = [
    "choose_split_units",
    "split_units",
    "unit_drift",
]


def unit_drift(net: ExpandableNet, prev: Any, drift_mask: Any) -> list[np.ndarray]:
    """Per layer, the drift ``rho_i = ||w_i^t - w_i^{t-1}||_2`` of every unit (Alg. 4).

    ``w_i`` is unit ``i``'s incoming weights (every input head column for layer 0, a
    column of ``hidden[l]["w"]`` otherwise) and its bias, restricted to ``drift_mask``
    (entries older tasks use). Units no older task uses get 0.

    Args:
      net: current network.
      prev: ``W^{t-1}`` aligned to ``net`` (``align_tree``).
      drift_mask: 0/1 pytree like ``net.params``.
    """
    p, q, m = (jax.device_get(t) for t in (net.params, prev, drift_mask))
    sq = [np.asarray(m["hidden"][0]["b"] * (p["hidden"][0]["b"] - q["hidden"][0]["b"]) ** 2)]
    for key in p["input_heads"]:
        d = (
            m["input_heads"][key]["w"]
            * (p["input_heads"][key]["w"] - q["input_heads"][key]["w"]) ** 2
        )
        sq[0] = sq[0] + np.asarray(d).sum(axis=0)
    for layer in range(1, net.num_layers):
        hp, hq, hm = p["hidden"][layer], q["hidden"][layer], m["hidden"][layer]
        col = (hm["w"] * (hp["w"] - hq["w"]) ** 2).sum(axis=0) + hm["b"] * (hp["b"] - hq["b"]) ** 2
        sq.append(np.asarray(col))
    return [np.sqrt(s) for s in sq]


def choose_split_units(
    drift: list[np.ndarray], net: ExpandableNet, task_index: int, threshold: float, cap: int
) -> list[np.ndarray]:
    """Old units (stamp < task) with drift > ``threshold`` (sigma), most drifted first.

    ``cap`` (units per layer) is a safety limit; compare ``len(chosen[l])`` with the number
    of units over ``threshold`` to see whether it was hit.
    """
    chosen = []
    for layer, rho in enumerate(drift):
        stamps = np.asarray(net.meta.layers[layer].stamps)
        cand = np.flatnonzero((stamps < task_index) & (rho > threshold))
        order = cand[np.argsort(-rho[cand], kind="stable")][:cap]
        chosen.append(np.sort(order))
    return chosen


def _hand_over_outgoing(net, params, used, task, chosen) -> None:
    """Moves the outgoing entries no older task uses from each original to its copy."""
    spec = resolve_task(net.meta, task)
    for layer, units in enumerate(chosen):
        if not units.size:
            continue
        width = net.widths[layer]
        copies = np.arange(width - units.size, width)
        if layer + 1 < net.num_layers:
            w = np.array(params["hidden"][layer + 1]["w"])
            shared = np.asarray(used["hidden"][layer + 1]["w"])[units] != 0
            w[copies] = np.where(shared, 0.0, w[units])
            w[units] = np.where(shared, w[units], 0.0)
            params["hidden"][layer + 1]["w"] = w
        else:
            for name, head in params["output_heads"].items():
                w = np.array(head["w"])
                if name == spec.name:
                    w[copies] = w[units]
                    w[units] = 0.0
                else:
                    w[copies] = 0.0  # invisible to older tasks: stored as zeros
                params["output_heads"][name] = {**head, "w": w}


def split_units(
    state: PhaseState,
    task: str,
    chosen: list[np.ndarray],
    prev_params: Any,
    prev_net: ExpandableNet,
    settings: PhaseSettings,
) -> PhaseState:
    """Duplicates ``chosen`` units; originals get ``W^{t-1}`` back, copies keep ``W^t``.

    A copy (stamped with the current task, parent id recorded) takes the original's
    current incoming weights and bias, and the outgoing entries no older task uses (see the
    module docstring); the original's incoming weights and bias (the entries older tasks
    use) are restored from ``prev_params`` and its outgoing entries no older task uses
    become zero.

    Args:
      state: the phase state after retraining.
      task: the current task's name.
      chosen: per layer, positions of the units to split.
      prev_params: ``W^{t-1}`` (parameters of ``prev_net``).
      prev_net: the network before the current task.
      settings: phase settings (optimizer-state policy).

    Returns:
      The new :class:`PhaseState`.
    """
    old = state.net
    net = old
    for layer, units in enumerate(chosen):
        if units.size:
            net = duplicate_units(net, layer, units.tolist(), outgoing="copy")
    if net is old:
        return state
    prev = jax.device_get(align_tree(prev_params, prev_net, net))
    used = jax.device_get(old_task_mask(net, task))
    params = jax.tree.map(np.asarray, jax.device_get(net.params))
    ind = [np.isin(np.arange(w), u) for w, u in zip(net.widths, chosen)]

    def restore(cur, before, m, col):
        sel = (m != 0) & col.reshape((1,) * (cur.ndim - 1) + (-1,))
        return jnp.asarray(np.where(sel, before, cur))

    for key in params["input_heads"]:
        params["input_heads"][key] = {
            "w": restore(
                params["input_heads"][key]["w"],
                prev["input_heads"][key]["w"],
                used["input_heads"][key]["w"],
                ind[0],
            )
        }
    for layer in range(net.num_layers):
        hp = params["hidden"][layer]
        params["hidden"][layer] = {
            leaf: restore(
                hp[leaf], prev["hidden"][layer][leaf], used["hidden"][layer][leaf], ind[layer]
            )
            for leaf in hp
        }
    _hand_over_outgoing(net, params, used, task, chosen)
    params = jax.tree.map(jnp.asarray, params)
    net = net.replace(params=params)
    opt_state = carry_opt_state(settings, state.opt_state, old, net)
    return PhaseState(net, opt_state, state.step)
