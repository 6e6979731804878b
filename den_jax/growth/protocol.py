"""The growth-strategy protocol and its per-epoch driver, :func:`decide`.

A strategy is an object with five pure methods; its *state* is a JSON-serialisable dict
that the trainer stores in every checkpoint::

    state = strategy.init_state()
    state = strategy.observe(metrics, state, epoch)        # update counters
    grow, reason = strategy.should_grow(metrics, state, epoch)
    actions = strategy.growth_action(metrics, state)       # list[GrowthAction]
    state = strategy.after_growth(state, epoch)            # reset counters, start cooldown

``metrics`` is the dict the trainer logs for the epoch: ``loss`` (mean training loss),
``grad_norm`` (mean global gradient norm), ``layer_grad_norms`` (per hidden layer),
``widths`` (current hidden widths), and ``val_loss`` etc. when validation data is given.
Subclass :class:`GrowthStrategy`, or wrap two functions in :class:`FunctionStrategy`, for
a strategy of your own; the built-ins are in :mod:`den_jax.growth.strategies`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from den_jax.growth.ops import GrowthAction, total_hidden_units, widths_after

__all__ = [
    "FunctionStrategy",
    "GrowthDecision",
    "GrowthStrategy",
    "Metrics",
    "State",
    "check_cap",
    "check_nonneg",
    "decide",
    "finite_metric",
    "metric_widths",
    "width_actions",
]

Metrics = Mapping[str, Any]
State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GrowthDecision:
    """What :func:`decide` concluded for one epoch."""

    grow: bool
    reason: str
    actions: tuple[GrowthAction, ...] = ()


def finite_metric(metrics: Metrics, key: str) -> float:
    """``metrics[key]`` as a float; ``ValueError`` if it is missing or not finite."""
    if key not in metrics:
        raise ValueError(
            f"growth strategy monitors {key!r}, but the metrics only have {sorted(metrics)}"
        )
    value = float(metrics[key])
    if not math.isfinite(value):
        raise ValueError(
            f"growth strategy got a non-finite {key!r} ({value}); expected a finite number"
        )
    return value


def metric_widths(metrics: Metrics) -> tuple[int, ...]:
    """The hidden widths ``metrics["widths"]``; ``ValueError`` if the metrics lack them."""
    if "widths" not in metrics:
        raise ValueError("growth strategies need metrics['widths'] (the current hidden widths)")
    return tuple(int(w) for w in metrics["widths"])


def check_cap(max_network_size: int | None, widths: Sequence[int]) -> None:
    """Raises ``ValueError`` if ``widths`` already exceed ``max_network_size`` hidden units."""
    if max_network_size is not None and total_hidden_units(widths) > max_network_size:
        raise ValueError(
            f"the network already has {total_hidden_units(widths)} hidden units, more than "
            f"max_network_size={max_network_size}; raise the cap or start smaller"
        )


def check_nonneg(name: str, value: float, positive: bool = False) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is a number >= 0 (> 0 if asked)."""
    if not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} number, got {value!r}")


class GrowthStrategy:
    """Base class of growth strategies (all methods pure; state is a JSON dict)."""

    max_network_size: int | None = None

    def init_state(self) -> State:
        return {"growths": 0}

    def observe(self, metrics: Metrics, state: State, epoch: int) -> State:
        return dict(state)

    def should_grow(self, metrics: Metrics, state: State, epoch: int) -> tuple[bool, str]:
        raise NotImplementedError

    def growth_action(self, metrics: Metrics, state: State) -> list[GrowthAction]:
        raise NotImplementedError

    def after_growth(self, state: State, epoch: int) -> State:
        return {**state, "growths": int(state.get("growths", 0)) + 1}


def width_actions(
    widths: Sequence[int],
    layers: Sequence[int] | None,
    growth_ratio: float,
    min_units: int,
    max_units: int,
    max_network_size: int | None,
) -> list[GrowthAction]:
    """Width growth of ``layers`` (all if None): ``clip(ceil(ratio * h_l), min, max)`` units.

    Units are cut (in layer order) so that the total hidden size stays within
    ``max_network_size``; layers that get no unit are left out.
    """
    layers = list(range(len(widths))) if layers is None else list(layers)
    for layer in layers:
        if not isinstance(layer, int) or not 0 <= layer < len(widths):
            raise ValueError(
                f"growth action names layer {layer!r}, which does not exist: the network has "
                f"{len(widths)} hidden layer(s) (valid 0..{len(widths) - 1})"
            )
    budget = math.inf if max_network_size is None else max_network_size - sum(widths)
    actions = []
    for layer in layers:
        k = min(max(math.ceil(growth_ratio * widths[layer]), min_units), max_units)
        k = int(min(k, budget))
        if k > 0:
            actions.append(GrowthAction("width", layer, k))
            budget -= k
    return actions


@dataclasses.dataclass(frozen=True)
class FunctionStrategy(GrowthStrategy):
    """A user-defined strategy from two functions (state: a dict the functions may update).

    ``should_grow_fn(metrics, state, epoch) -> (bool, reason)`` and
    ``growth_action_fn(metrics, state) -> list[GrowthAction]`` (or one action).
    ``observe_fn(metrics, state, epoch) -> state`` is optional.
    """

    should_grow_fn: Callable[[Metrics, State, int], tuple[bool, str]] = None  # type: ignore
    growth_action_fn: Callable[[Metrics, State], Any] = None  # type: ignore
    observe_fn: Callable[[Metrics, State, int], State] | None = None

    def __post_init__(self):
        if not callable(self.should_grow_fn) or not callable(self.growth_action_fn):
            raise ValueError("FunctionStrategy needs callables should_grow_fn and growth_action_fn")

    def observe(self, metrics: Metrics, state: State, epoch: int) -> State:
        return (
            dict(state) if self.observe_fn is None else dict(self.observe_fn(metrics, state, epoch))
        )

    def should_grow(self, metrics: Metrics, state: State, epoch: int) -> tuple[bool, str]:
        return self.should_grow_fn(metrics, state, epoch)

    def growth_action(self, metrics: Metrics, state: State) -> list[GrowthAction]:
        out = self.growth_action_fn(metrics, state)
        return [out] if isinstance(out, GrowthAction) else list(out)


def decide(
    strategy: GrowthStrategy, metrics: Metrics, state: State, epoch: int
) -> tuple[State, GrowthDecision]:
    """Runs one epoch of a strategy: observe, should_grow, growth_action, after_growth.

    Returns:
      ``(new_state, decision)``. The actions are checked against ``metrics["widths"]``
      (existing layers, positive sizes); a firing rule with no room left (empty action
      list) yields ``grow=False``.
    """
    state = strategy.observe(metrics, state, epoch)
    fire, reason = strategy.should_grow(metrics, state, epoch)
    if not fire:
        return state, GrowthDecision(False, reason)
    actions = tuple(strategy.growth_action(metrics, state))
    widths = list(metric_widths(metrics))
    for a in actions:
        if not isinstance(a, GrowthAction):
            raise ValueError(f"growth_action must return GrowthAction objects, got {a!r}")
        if a.kind == "width" and not (0 <= a.layer < len(widths)):
            raise ValueError(
                f"growth action names layer {a.layer}, which does not exist: the network has "
                f"{len(widths)} hidden layer(s) (valid 0..{len(widths) - 1})"
            )
        if a.kind == "width" and a.units <= 0:
            raise ValueError(
                f"growth action for layer {a.layer} asks for {a.units} units; expected > 0"
            )
        if a.kind == "depth" and not (1 <= a.layer <= len(widths)):
            raise ValueError(
                f"depth growth names position {a.layer}, which does not exist: "
                f"valid 1..{len(widths)}"
            )
        if a.kind not in ("width", "depth"):
            raise ValueError(f"growth action kind must be 'width' or 'depth', got {a.kind!r}")
        widths = list(widths_after(widths, [a]))
    if not actions:
        return state, GrowthDecision(False, f"{reason}; no room to grow")
    return strategy.after_growth(state, epoch), GrowthDecision(True, reason, actions)
