"""Built-in growth strategies: loss plateau, gradient magnitude, and both combined.

See :mod:`den_jax.growth.protocol` for the protocol (``observe``, ``should_grow``,
``growth_action``, ``after_growth``) and :func:`~den_jax.growth.protocol.decide`.
"""

from __future__ import annotations

import dataclasses

from den_jax.growth.ops import GrowthAction, widths_after
from den_jax.growth.protocol import (
    FunctionStrategy,
    GrowthDecision,
    GrowthStrategy,
    Metrics,
    State,
    check_cap,
    check_nonneg,
    decide,
    finite_metric,
    metric_widths,
    width_actions,
)

__all__ = [
    "Adaptive",
    "FunctionStrategy",
    "GradientMagnitude",
    "GrowthDecision",
    "GrowthStrategy",
    "LossPlateau",
    "decide",
    "width_actions",
]


@dataclasses.dataclass(frozen=True)
class LossPlateau(GrowthStrategy):
    """Grows when the monitored loss stops improving (like Keras ``ReduceLROnPlateau``).

    Each epoch: if the cooldown counter is positive (a *cooling* epoch), it drops by one
    and ``wait`` resets to 0; an improvement (``value < best - min_delta``) sets ``best``
    and resets ``wait``; otherwise, on a non-cooling epoch, ``wait`` grows by one. Growth
    fires when ``wait >= patience``; then ``wait = 0`` and the next ``cooldown`` epochs are
    cooling epochs (not counted; unlike Keras, the last cooling epoch is not counted
    either).

    Attributes:
      patience: epochs without improvement before growing (>= 1).
      cooldown: epochs after a growth during which no plateau is counted.
      min_delta: smallest decrease that counts as an improvement.
      growth_ratio: a grown layer gets ``ceil(growth_ratio * width)`` units ...
      min_units_per_growth: ... at least this many ...
      max_units_per_growth: ... and at most this many.
      layers: hidden layers to widen (None: all).
      monitor: metric name (``"loss"`` or ``"val_loss"``).
      max_network_size: cap on the total number of hidden units (None: no cap).
    """

    patience: int = 5
    cooldown: int = 2
    min_delta: float = 1e-4
    growth_ratio: float = 0.5
    min_units_per_growth: int = 1
    max_units_per_growth: int = 64
    layers: tuple[int, ...] | None = None
    monitor: str = "loss"
    max_network_size: int | None = None

    def __post_init__(self):
        check_nonneg("patience", self.patience, positive=True)
        check_nonneg("cooldown", self.cooldown)
        check_nonneg("min_delta", self.min_delta)
        check_nonneg("growth_ratio", self.growth_ratio)
        check_nonneg("min_units_per_growth", self.min_units_per_growth)
        check_nonneg("max_units_per_growth", self.max_units_per_growth, positive=True)
        if self.max_network_size is not None:
            check_nonneg("max_network_size", self.max_network_size, positive=True)

    def init_state(self) -> State:
        return {"best": None, "wait": 0, "cooldown": 0, "growths": 0}

    def observe(self, metrics: Metrics, state: State, epoch: int) -> State:
        value = finite_metric(metrics, self.monitor)
        s = dict(state)
        cooling = s["cooldown"] > 0
        if cooling:
            s["cooldown"] -= 1
            s["wait"] = 0
        if s["best"] is None or value < s["best"] - self.min_delta:
            s["best"] = value
            s["wait"] = 0
        elif not cooling:
            s["wait"] += 1
        return s

    def should_grow(self, metrics: Metrics, state: State, epoch: int) -> tuple[bool, str]:
        widths = metric_widths(metrics)
        check_cap(self.max_network_size, widths)
        if state["wait"] < self.patience:
            return (
                False,
                f"{self.monitor} improving or patience not exhausted "
                f"({state['wait']}/{self.patience})",
            )
        if self.max_network_size is not None and sum(widths) >= self.max_network_size:
            return False, f"plateau, but the network is at max_network_size={self.max_network_size}"
        return True, (
            f"loss plateau: {self.monitor} did not improve by {self.min_delta:g} for "
            f"{state['wait']} epochs (best {state['best']:.4g})"
        )

    def growth_action(self, metrics: Metrics, state: State) -> list[GrowthAction]:
        return width_actions(
            metric_widths(metrics),
            self.layers,
            self.growth_ratio,
            self.min_units_per_growth,
            self.max_units_per_growth,
            self.max_network_size,
        )

    def after_growth(self, state: State, epoch: int) -> State:
        return {**state, "wait": 0, "cooldown": self.cooldown, "growths": state["growths"] + 1}


@dataclasses.dataclass(frozen=True)
class GradientMagnitude(GrowthStrategy):
    """Grows when the gradient norm stays below ``threshold`` for ``patience`` epochs.

    A vanishing gradient with the loss still above ``min_loss`` means the optimizer has
    settled in the current architecture. Each epoch: cooldown as in :class:`LossPlateau`;
    then, on non-cooling epochs, ``wait`` counts consecutive epochs with
    ``metrics[monitor] < threshold`` and resets to 0 otherwise. Growth fires at
    ``wait >= patience`` (and ``loss > min_loss`` when ``min_loss`` is set). The widened
    layer is the one with the largest ``metrics["layer_grad_norms"]`` (all layers if
    ``grow_all_layers``).
    """

    threshold: float = 1e-2
    patience: int = 3
    cooldown: int = 2
    growth_ratio: float = 0.5
    min_units_per_growth: int = 1
    max_units_per_growth: int = 64
    grow_all_layers: bool = False
    min_loss: float | None = None
    monitor: str = "grad_norm"
    max_network_size: int | None = None

    def __post_init__(self):
        check_nonneg("threshold", self.threshold, positive=True)
        check_nonneg("patience", self.patience, positive=True)
        check_nonneg("cooldown", self.cooldown)
        check_nonneg("growth_ratio", self.growth_ratio)
        check_nonneg("max_units_per_growth", self.max_units_per_growth, positive=True)
        if self.max_network_size is not None:
            check_nonneg("max_network_size", self.max_network_size, positive=True)

    def init_state(self) -> State:
        return {"wait": 0, "cooldown": 0, "growths": 0}

    def observe(self, metrics: Metrics, state: State, epoch: int) -> State:
        value = finite_metric(metrics, self.monitor)
        s = dict(state)
        cooling = s["cooldown"] > 0
        if cooling:
            s["cooldown"] -= 1
            s["wait"] = 0
        if value >= self.threshold:
            s["wait"] = 0
        elif not cooling:
            s["wait"] += 1
        return s

    def should_grow(self, metrics: Metrics, state: State, epoch: int) -> tuple[bool, str]:
        widths = metric_widths(metrics)
        check_cap(self.max_network_size, widths)
        if state["wait"] < self.patience:
            return (
                False,
                "gradient above threshold or patience not exhausted "
                f"({state['wait']}/{self.patience})",
            )
        if self.min_loss is not None and finite_metric(metrics, "loss") <= self.min_loss:
            return False, f"small gradient, but loss <= min_loss={self.min_loss:g}"
        if self.max_network_size is not None and sum(widths) >= self.max_network_size:
            return (
                False,
                f"small gradient, but the network is at max_network_size={self.max_network_size}",
            )
        return True, (
            f"small gradient: {self.monitor} < {self.threshold:g} for {state['wait']} epochs"
        )

    def growth_action(self, metrics: Metrics, state: State) -> list[GrowthAction]:
        widths = metric_widths(metrics)
        layers = None
        if not self.grow_all_layers and "layer_grad_norms" in metrics:
            norms = [float(v) for v in metrics["layer_grad_norms"]]
            layers = [max(range(len(norms)), key=lambda i: norms[i])]
        return width_actions(
            widths,
            layers,
            self.growth_ratio,
            self.min_units_per_growth,
            self.max_units_per_growth,
            self.max_network_size,
        )

    def after_growth(self, state: State, epoch: int) -> State:
        return {**state, "wait": 0, "cooldown": self.cooldown, "growths": state["growths"] + 1}


@dataclasses.dataclass(frozen=True)
class Adaptive(GrowthStrategy):
    """Combines :class:`LossPlateau` and :class:`GradientMagnitude`, with a size cap.

    Growth fires when either rule fires (loss first). The action is the firing rule's
    width growth, except that every ``depth_every``-th growth (if set, and while there are
    fewer than ``max_layers`` hidden layers) inserts an identity layer at the top
    instead. Every action is cut to keep the total hidden units within
    ``max_network_size``; a depth step that does not fit falls back to width. After a
    growth both rules reset and cool down.
    """

    loss: LossPlateau = dataclasses.field(default_factory=LossPlateau)
    gradient: GradientMagnitude = dataclasses.field(default_factory=GradientMagnitude)
    max_network_size: int | None = None
    depth_every: int | None = None
    max_layers: int = 4

    def __post_init__(self):
        if self.max_network_size is not None:
            check_nonneg("max_network_size", self.max_network_size, positive=True)
        if self.depth_every is not None:
            check_nonneg("depth_every", self.depth_every, positive=True)
        check_nonneg("max_layers", self.max_layers, positive=True)

    def init_state(self) -> State:
        return {
            "loss": self.loss.init_state(),
            "gradient": self.gradient.init_state(),
            "growths": 0,
        }

    def observe(self, metrics: Metrics, state: State, epoch: int) -> State:
        return {
            **state,
            "loss": self.loss.observe(metrics, state["loss"], epoch),
            "gradient": self.gradient.observe(metrics, state["gradient"], epoch),
        }

    def _fired(self, metrics: Metrics, state: State, epoch: int):
        for name, rule in (("loss", self.loss), ("gradient", self.gradient)):
            fire, reason = rule.should_grow(metrics, state[name], epoch)
            if fire:
                return name, rule, reason
        return None, None, ""

    def should_grow(self, metrics: Metrics, state: State, epoch: int) -> tuple[bool, str]:
        widths = metric_widths(metrics)
        check_cap(self.max_network_size, widths)
        name, _, reason = self._fired(metrics, state, epoch)
        if name is None:
            return False, "neither loss plateau nor small gradient"
        if self.max_network_size is not None and sum(widths) >= self.max_network_size:
            return (
                False,
                f"{reason}, but the network is at max_network_size={self.max_network_size}",
            )
        return True, f"adaptive ({name}): {reason}"

    def growth_action(self, metrics: Metrics, state: State) -> list[GrowthAction]:
        widths = metric_widths(metrics)
        growths = int(state["growths"])
        depth_due = (
            self.depth_every is not None
            and (growths + 1) % self.depth_every == 0
            and len(widths) < self.max_layers
        )
        if depth_due:
            action = GrowthAction("depth", len(widths), 0)
            grown = widths_after(widths, [action])
            if self.max_network_size is None or sum(grown) <= self.max_network_size:
                return [action]
        name, rule, _ = self._fired(metrics, state, 0)
        rule = rule or self.loss
        actions = rule.growth_action(metrics, state[name or "loss"])
        if self.max_network_size is None:
            return actions
        budget, capped = self.max_network_size - sum(widths), []
        for a in actions:
            k = min(a.units, budget)
            if k > 0:
                capped.append(GrowthAction("width", a.layer, k))
                budget -= k
        return capped

    def after_growth(self, state: State, epoch: int) -> State:
        return {
            "loss": self.loss.after_growth(state["loss"], epoch),
            "gradient": self.gradient.after_growth(state["gradient"], epoch),
            "growths": int(state["growths"]) + 1,
        }
