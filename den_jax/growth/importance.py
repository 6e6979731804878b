"""Per-unit and per-layer importance of a network's hidden units.

Two measures, both computed on the units a task uses (timestamped inference):

* ``"weight"``: ``||w_in||_2 * ||w_out||_2`` for each unit, with ``w_in`` its incoming
  column (input head or the matrix from the layer below) and ``w_out`` its outgoing row.
  A unit whose outgoing weights are zero (just grown, or dead) scores 0.
* ``"gradient"``: mean over examples of ``|h_j * dL/dh_j|``, the first-order change of
  the loss if unit ``j`` were removed (Molchanov et al. 2017, Eq. 8); needs data.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.network import ACTIVATIONS, ExpandableNet, resolve_task, task_params

__all__ = [
    "METHODS",
    "layer_importance",
    "unit_importance",
]

METHODS = ("weight", "gradient")


def unit_importance(
    net: ExpandableNet,
    task: str,
    *,
    method: str = "weight",
    x=None,
    y=None,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> list[np.ndarray]:
    """Importance of every unit of every hidden layer for ``task``.

    Args:
      net: the network.
      task: task name.
      method: ``"weight"`` or ``"gradient"`` (see the module docstring).
      x, y: data ``[N, d_in]`` / targets, required by ``"gradient"``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``, required by ``"gradient"``.

    Returns:
      A list with one ``[n_l]`` array per hidden layer (``n_l`` = the task's units).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    resolve_task(net.meta, task)
    tp = task_params(net, task)
    if method == "weight":
        ins = [tp["input"]["w"]] + [hp["w"] for hp in tp["hidden"][1:]]
        outs = [hp["w"] for hp in tp["hidden"][1:]] + [tp["output"]["w"]]
        return [
            np.asarray(jnp.linalg.norm(wi, axis=0) * jnp.linalg.norm(wo, axis=1))
            for wi, wo in zip(ins, outs)
        ]
    if x is None or y is None or loss_fn is None:
        raise ValueError("method='gradient' needs x, y and loss_fn")
    act = ACTIVATIONS[net.meta.activation]
    x = jnp.asarray(x, jnp.float32)

    def loss_given_shifts(shifts):
        h = act(x @ tp["input"]["w"] + tp["hidden"][0]["b"]) + shifts[0]
        acts = [h]
        for hp, s in zip(tp["hidden"][1:], shifts[1:]):
            h = act(h @ hp["w"] + hp["b"]) + s
            acts.append(h)
        out = h @ tp["output"]["w"] + tp["output"]["b"]
        return loss_fn(out, jnp.asarray(y)) * x.shape[0], acts

    zeros = [jnp.zeros((x.shape[0], hp["b"].shape[0])) for hp in tp["hidden"]]
    grads, acts = jax.grad(loss_given_shifts, has_aux=True)(zeros)
    return [np.asarray(jnp.mean(jnp.abs(a * g), axis=0)) for a, g in zip(acts, grads)]


def layer_importance(unit_scores: list[np.ndarray]) -> list[dict[str, float]]:
    """Summary per layer: ``mean``, ``max``, and ``dead_fraction`` (units scoring 0)."""
    return [
        {
            "units": int(s.size),
            "mean": float(np.mean(s)),
            "max": float(np.max(s)),
            "dead_fraction": float(np.mean(s <= 1e-12)),
        }
        for s in unit_scores
    ]
