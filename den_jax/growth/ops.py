"""Function-preserving growth of a single network: width, depth, and the optimizer state.

Width growth appends units to one hidden layer with zero outgoing weights
(:func:`den_jax.add_units` with ``outgoing="zero"``), so the network computes exactly the
same function. Depth growth (:func:`insert_layer`) inserts a hidden layer initialised to
the identity (Net2DeeperNet, Chen et al. 2016, Eq. 3: ``W = I``, ``b = 0``): for ReLU
networks ``relu(I h + 0) = h`` because ``h`` is itself a ReLU output, so again the
function is unchanged. The optimizer state follows the parameters with
:func:`den_jax.grow_opt_state` (moments padded with zeros, counters kept), so training
continues without a restart.

A :class:`GrowthAction` names one growth step; :func:`apply_actions` applies a list of
them to a network and its optimizer state together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.align import grow_opt_state
from den_jax.network import ExpandableNet, LayerUnits, check_layer, shallow_copy
from den_jax.surgery import add_units

__all__ = [
    "ACTION_KINDS",
    "GrowthAction",
    "IDENTITY_SAFE_ACTIVATIONS",
    "apply_action",
    "apply_actions",
    "grow_width",
    "insert_layer",
    "total_hidden_units",
    "validate_action",
    "widths_after",
]

#: Activations for which an identity-initialised layer reproduces its input exactly: the
#: layer below outputs ``h = act(z)`` and ``act(I h + 0) = h`` must hold for every such
#: ``h``. True for ReLU (``h >= 0``) and the identity; false for tanh, GELU, leaky ReLU...
IDENTITY_SAFE_ACTIVATIONS = ("relu", "identity")

ACTION_KINDS = ("width", "depth")


@dataclasses.dataclass(frozen=True)
class GrowthAction:
    """One growth step.

    Attributes:
      kind: ``"width"`` (append ``units`` units to hidden layer ``layer``) or ``"depth"``
        (insert an identity-initialised hidden layer at position ``layer``; it gets the
        width of the layer below it and ``units`` is ignored).
      layer: hidden-layer index (width) or insertion position ``1..L`` (depth).
      units: number of units to add (width); 0 for depth.
    """

    kind: str
    layer: int
    units: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": int(self.layer), "units": int(self.units)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GrowthAction:
        return cls(kind=data["kind"], layer=int(data["layer"]), units=int(data["units"]))


def grow_width(net: ExpandableNet, key: jax.Array, layer: int, units: int) -> ExpandableNet:
    """Appends ``units`` units to hidden layer ``layer`` without changing the function.

    The new units' incoming weights are drawn from the network's default initializer,
    their biases and outgoing weights are zero, so every output is unchanged until
    training moves the outgoing weights.

    Args:
      net: the network (hidden widths ``h_0..h_{L-1}``).
      key: PRNG key for the new incoming weights.
      layer: hidden-layer index in ``0..L-1``.
      units: number of units to add, > 0.

    Returns:
      A network whose layer ``layer`` has ``h_layer + units`` units.
    """
    check_layer(net.meta, layer)
    if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
        raise ValueError(f"width growth needs a positive number of units, got {units!r}")
    return add_units(net, key, int(layer), int(units), outgoing="zero")


def insert_layer(net: ExpandableNet, position: int) -> ExpandableNet:
    """Inserts an identity-initialised hidden layer (Net2DeeperNet; depth growth).

    The new layer sits between hidden layers ``position - 1`` and ``position`` (at the
    top when ``position == L``). Its width is ``h_{position-1}``, its weights are
    ``W = I`` ``[h, h]`` and its biases ``b = 0``; the matrix that used to leave layer
    ``position - 1`` now leaves the new layer, unchanged. Position 0 (in front of the
    input head) is not supported: the inputs are not ReLU outputs, so no identity layer
    reproduces them.

    Each new unit gets a fresh id (from ``meta.next_unit_id``), parent ``-1``, and the
    timestamp of the unit below it, so every task (not only the newest) keeps its
    outputs: a task that sees ``n`` units of the layer below also sees the ``n`` matching
    units of the new layer, whose weights are ``I_n``.

    Args:
      net: the network; its activation must be in :data:`IDENTITY_SAFE_ACTIVATIONS`.
      position: insertion index in ``1..L`` (L = number of hidden layers).

    Returns:
      A network with ``L + 1`` hidden layers computing the same function.

    Raises:
      ValueError: for a position outside ``1..L`` or an activation for which the identity
        initialisation does not preserve the function.
    """
    n_layers = net.num_layers
    if (
        not isinstance(position, (int, np.integer))
        or isinstance(position, bool)
        or not 1 <= position <= n_layers
    ):
        raise ValueError(
            f"depth growth: insertion position {position!r} is out of range; the network has "
            f"{n_layers} hidden layer(s), so valid positions are 1..{n_layers} (a new layer "
            "goes above hidden layer position-1; position 0 is not supported)"
        )
    if net.meta.activation not in IDENTITY_SAFE_ACTIVATIONS:
        raise ValueError(
            f"depth growth: an identity-initialised layer preserves the function only for "
            f"activations {IDENTITY_SAFE_ACTIVATIONS}, but the network uses "
            f"{net.meta.activation!r}"
        )
    position = int(position)
    below = net.meta.layers[position - 1]
    width = below.width
    params = shallow_copy(net.params)
    dtype = params["hidden"][position - 1]["b"].dtype
    hidden = list(params["hidden"])
    hidden.insert(position, {"w": jnp.eye(width, dtype=dtype), "b": jnp.zeros((width,), dtype)})
    params["hidden"] = hidden
    first = net.meta.next_unit_id
    units = LayerUnits(
        stamps=below.stamps,
        ids=tuple(range(first, first + width)),
        parents=(-1,) * width,
    )
    layers = list(net.meta.layers)
    layers.insert(position, units)
    meta = dataclasses.replace(net.meta, layers=tuple(layers), next_unit_id=first + width)
    return ExpandableNet(params=params, meta=meta)


def validate_action(net: ExpandableNet, action: GrowthAction) -> None:
    """Raises ``ValueError`` if ``action`` cannot be applied to ``net``."""
    if not isinstance(action, GrowthAction):
        raise ValueError(f"expected a GrowthAction, got {type(action).__name__}: {action!r}")
    if action.kind not in ACTION_KINDS:
        raise ValueError(f"growth action kind must be one of {ACTION_KINDS}, got {action.kind!r}")
    n = net.num_layers
    if action.kind == "width":
        if not isinstance(action.layer, (int, np.integer)) or not 0 <= action.layer < n:
            raise ValueError(
                f"width growth names layer {action.layer!r}, which does not exist: the network "
                f"has {n} hidden layer(s) (valid 0..{n - 1})"
            )
        if action.units <= 0:
            raise ValueError(
                f"width growth needs a positive number of units, got {action.units} "
                f"for layer {action.layer}"
            )
    else:
        if not isinstance(action.layer, (int, np.integer)) or not 1 <= action.layer <= n:
            raise ValueError(
                f"depth growth names position {action.layer!r}, which does not exist: valid "
                f"insertion positions are 1..{n}"
            )
        if action.units < 0:
            raise ValueError(f"depth growth: units must be >= 0 (ignored), got {action.units}")


def apply_action(net: ExpandableNet, key: jax.Array, action: GrowthAction) -> ExpandableNet:
    """Applies one :class:`GrowthAction` (validated first) and returns the grown network."""
    validate_action(net, action)
    if action.kind == "width":
        return grow_width(net, key, int(action.layer), int(action.units))
    return insert_layer(net, int(action.layer))


def apply_actions(
    net: ExpandableNet,
    key: jax.Array,
    actions: Sequence[GrowthAction],
    opt_state: Any = None,
) -> tuple[ExpandableNet, Any]:
    """Applies growth actions in order and grows the optimizer state with them.

    Args:
      net: the network.
      key: PRNG key (split over the actions).
      actions: the growth steps; each is validated against the network as grown so far.
      opt_state: an optax state for ``net.params`` or ``None``. Parameter-shaped parts
        (Adam moments, momentum) are padded with zeros for new units and new layers; step
        counts are kept (:func:`den_jax.grow_opt_state`). The weight matrix right above an
        inserted layer restarts its moments at zero (its unit ids changed).

    Returns:
      ``(grown_net, grown_opt_state)``; the latter is ``None`` if ``opt_state`` was.
    """
    actions = list(actions)
    if not actions:
        return net, opt_state
    for action in actions:  # validate the first one before any work; the rest as we go
        if not isinstance(action, GrowthAction):
            raise ValueError(f"expected GrowthAction objects, got {action!r}")
    old = net
    for action, sub in zip(actions, jax.random.split(key, len(actions))):
        net = apply_action(net, sub, action)
    if opt_state is not None:
        opt_state = grow_opt_state(opt_state, old, net)
    return net, opt_state


def total_hidden_units(widths: Sequence[int]) -> int:
    """Sum of the hidden widths: the "network size" the strategies cap."""
    return int(sum(int(w) for w in widths))


def widths_after(widths: Sequence[int], actions: Sequence[GrowthAction]) -> tuple[int, ...]:
    """The hidden widths after ``actions``, computed without touching a network."""
    out = [int(w) for w in widths]
    for a in actions:
        if a.kind == "width":
            out[a.layer] += int(a.units)
        else:
            out.insert(a.layer, out[a.layer - 1])
    return tuple(out)
