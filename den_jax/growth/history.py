"""Training history of a growing network: per-epoch metrics and growth events (JSON)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["GrowthEvent", "History", "final_architecture", "growth_summary"]


@dataclasses.dataclass(frozen=True)
class GrowthEvent:
    """One growth step as it happened.

    Attributes:
      epoch: the (global, 0-based) epoch after which the network grew.
      step: total optimizer steps done before the growth.
      kind: ``"width"`` or ``"depth"``.
      layer: widened layer, or insertion position for depth.
      units: units added.
      reason: the strategy's explanation.
      params_before / params_after: parameter counts around this step.
      widths_before / widths_after: hidden widths around this step.
    """

    epoch: int
    step: int
    kind: str
    layer: int
    units: int
    reason: str
    params_before: int
    params_after: int
    widths_before: tuple[int, ...]
    widths_after: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths_before"] = list(self.widths_before)
        d["widths_after"] = list(self.widths_after)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GrowthEvent:
        d = dict(d)
        d["widths_before"] = tuple(int(w) for w in d["widths_before"])
        d["widths_after"] = tuple(int(w) for w in d["widths_after"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class History:
    """Immutable record of a run; :meth:`add_epoch` / :meth:`add_events` return new ones.

    Attributes:
      epochs: one metrics dict per epoch (``epoch``, ``step``, ``loss``, ``grad_norm``,
        ``widths``, ``params``, ``task`` and evaluation metrics such as ``val_loss``).
      events: growth events in order.
      stopped: ``None``, or why training stopped early (e.g. a non-finite loss).
    """

    epochs: tuple[dict[str, Any], ...] = ()
    events: tuple[GrowthEvent, ...] = ()
    stopped: str | None = None

    def add_epoch(self, metrics: Mapping[str, Any]) -> History:
        return dataclasses.replace(self, epochs=self.epochs + (dict(metrics),))

    def add_events(self, events) -> History:
        return dataclasses.replace(self, events=self.events + tuple(events))

    def stop(self, reason: str) -> History:
        return dataclasses.replace(self, stopped=reason)

    @property
    def num_epochs(self) -> int:
        return len(self.epochs)

    def metric(self, name: str) -> list[float]:
        """The values of one metric over epochs (epochs without it are skipped)."""
        return [float(e[name]) for e in self.epochs if name in e]

    def to_json(self) -> dict[str, Any]:
        return {
            "epochs": [dict(e) for e in self.epochs],
            "events": [e.to_json() for e in self.events],
            "stopped": self.stopped,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> History:
        try:
            return cls(
                epochs=tuple(dict(e) for e in d["epochs"]),
                events=tuple(GrowthEvent.from_json(e) for e in d["events"]),
                stopped=d.get("stopped"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a growth history: {err!r}") from err


def final_architecture(history: History) -> tuple[list[int], Any]:
    """The hidden widths and parameter count at the end of a run.

    An epoch's metrics are logged before the growth that epoch triggers, so when the
    network grew after the last epoch the last metrics are stale; the last event's
    ``widths_after`` / ``params_after`` are the final architecture then.

    Args:
      history: the run's history (at least one epoch).

    Returns:
      ``(widths, params)``.
    """
    last = history.epochs[-1]
    widths, params = list(last.get("widths", [])), last.get("params", "?")
    if history.events and history.events[-1].epoch >= int(last.get("epoch", -1)):
        widths = list(history.events[-1].widths_after)
        params = history.events[-1].params_after
    return widths, params


def growth_summary(history: History) -> str:
    """A plain-text summary: start/end architecture, each growth event, final metrics.

    The end architecture includes a growth that fired after the last epoch
    (:func:`final_architecture`).
    """
    lines = []
    if not history.epochs:
        return "no epochs trained yet"
    first, last = history.epochs[0], history.epochs[-1]
    lines.append(
        f"epochs: {history.num_epochs}, optimizer steps: {last.get('step', '?')}, "
        f"growth events: {len(history.events)}"
    )
    start_widths = history.events[0].widths_before if history.events else first.get("widths")
    end_widths, end_params = final_architecture(history)
    lines.append(f"architecture: {list(start_widths)} -> {end_widths}")
    if history.events:
        lines.append(f"parameters: {history.events[0].params_before} -> {end_params}")
    for e in history.events:
        what = (
            f"+{e.units} units in layer {e.layer}"
            if e.kind == "width"
            else (f"new layer at position {e.layer} ({e.units} units)")
        )
        lines.append(
            f"  epoch {e.epoch:4d} (step {e.step}): {what}; params {e.params_before} -> "
            f"{e.params_after}; {e.reason}"
        )
    final = {k: v for k, v in last.items() if isinstance(v, float)}
    lines.append("final: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))
    if history.stopped:
        lines.append(f"stopped early: {history.stopped}")
    return "\n".join(lines)
