"""Compact selective retraining: gather the selected subnetwork, train it, scatter it back.

DEN's selective retraining (Alg. 2, Eq. 4) trains only the weights between the units the
breadth-first search selected. ``den_jax.den`` does this by default with masked dense
steps: the whole network runs forward and the optimizer's updates are masked. The official
code instead builds a compact network of the selected units. Both compute the same
function: the search keeps every unit with a non-zero weight into a selected unit above
(and every top unit with a non-zero head weight), so an unselected unit has no non-zero
path to the task's outputs, and its weights never move. The compact network is smaller,
so its steps are cheaper (``benchmarks/den_cpu.py``, ``selective_retraining``).

:class:`Subnetwork` holds the index sets; ``gather`` maps any tree shaped like
``net.params`` (parameters, ``W^{t-1}``, the drift mask) to the compact shapes, and
``scatter`` writes a compact network's parameters back into the full network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from den_jax.network import ExpandableNet, LayerUnits, resolve_task, task_widths

__all__ = ["Subnetwork"]


@dataclasses.dataclass(frozen=True)
class Subnetwork:
    """The selected units of one task as a compact network.

    Attributes:
      net: the full network.
      task: the task's name (its input and output heads are kept).
      units: per hidden layer, sorted indices of the selected units.
    """

    net: ExpandableNet
    task: str
    units: tuple[np.ndarray, ...]

    @classmethod
    def build(cls, net: ExpandableNet, task: int | str, units: Sequence[np.ndarray]):
        """Checks ``units`` against ``net`` and returns the :class:`Subnetwork`.

        Raises:
          ValueError: not one index array per hidden layer, an index outside the units the
            task may use, or indices that are not sorted and distinct.
        """
        spec = resolve_task(net.meta, task)
        if len(units) != net.num_layers:
            raise ValueError(
                f"units must list one index array per hidden layer ({net.num_layers}), "
                f"got {len(units)}"
            )
        idx = []
        for layer, (u, n) in enumerate(zip(units, task_widths(net, spec.name))):
            u = np.asarray(u, np.int64).reshape(-1)
            if u.size and (u.min() < 0 or u.max() >= n or np.any(np.diff(u) <= 0)):
                raise ValueError(
                    f"layer {layer}: selected units must be sorted, distinct and in "
                    f"[0, {n}) (the units task {spec.name!r} may use), got {u.tolist()}"
                )
            idx.append(u)
        return cls(net=net, task=spec.name, units=tuple(idx))

    def gather(self, tree: Any) -> dict:
        """The compact part of ``tree`` (shaped like ``net.params``): the task's heads,
        the selected units' biases and the weights between selected units."""
        spec = resolve_task(self.net.meta, self.task)
        u = self.units
        hidden = [{"b": jnp.asarray(tree["hidden"][0]["b"])[u[0]]}]
        for layer in range(1, len(u)):
            h = tree["hidden"][layer]
            w = jnp.asarray(h["w"])[u[layer - 1]][:, u[layer]]
            hidden.append({"w": w, "b": jnp.asarray(h["b"])[u[layer]]})
        head = tree["output_heads"][spec.name]
        w_in = jnp.asarray(tree["input_heads"][spec.input_key]["w"])[:, u[0]]
        return {
            "input_heads": {spec.input_key: {"w": w_in}},
            "hidden": hidden,
            "output_heads": {
                spec.name: {"w": jnp.asarray(head["w"])[u[-1]], "b": jnp.asarray(head["b"])}
            },
        }

    def compact_net(self) -> ExpandableNet:
        """The selected units as an :class:`ExpandableNet` holding only this task."""
        spec = resolve_task(self.net.meta, self.task)
        layers = tuple(
            LayerUnits(
                stamps=tuple(layer.stamps[i] for i in u),
                ids=tuple(layer.ids[i] for i in u),
                parents=tuple(layer.parents[i] for i in u),
            )
            for layer, u in zip(self.net.meta.layers, self.units)
        )
        meta = dataclasses.replace(self.net.meta, layers=layers, tasks=(spec,))
        return ExpandableNet(params=self.gather(self.net.params), meta=meta)

    def scatter(self, compact: ExpandableNet) -> ExpandableNet:
        """``net`` with the compact network's parameters written back at their places."""
        spec = resolve_task(self.net.meta, self.task)
        u, p, c = self.units, self.net.params, compact.params
        hidden = [dict(h) for h in p["hidden"]]
        hidden[0]["b"] = p["hidden"][0]["b"].at[u[0]].set(c["hidden"][0]["b"])
        for layer in range(1, len(u)):
            rows, cols = np.ix_(u[layer - 1], u[layer])
            hp, hc = p["hidden"][layer], c["hidden"][layer]
            hidden[layer] = {
                "w": hp["w"].at[rows, cols].set(hc["w"]),
                "b": hp["b"].at[u[layer]].set(hc["b"]),
            }
        key = spec.input_key
        in_heads = dict(p["input_heads"])
        w_in = p["input_heads"][key]["w"].at[:, u[0]].set(c["input_heads"][key]["w"])
        in_heads[key] = {"w": w_in}
        out_heads = dict(p["output_heads"])
        head, small = p["output_heads"][spec.name], c["output_heads"][spec.name]
        out_heads[spec.name] = {"w": head["w"].at[u[-1]].set(small["w"]), "b": small["b"]}
        params = {**p, "input_heads": in_heads, "hidden": hidden, "output_heads": out_heads}
        return self.net.replace(params=params)
