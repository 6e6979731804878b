"""The expandable multi-task network: an immutable pytree and its forward pass.

A network has ``L`` shared hidden layers. Layer 0's incoming weights come from an *input
head*: either the shared first layer (key ``"shared"``, used by every task whose input
size equals ``shared_input_dim``, as in DEN's Permuted MNIST setup) or a task's own input
head (key = the task's name) for tasks whose input differs. Each task has its own output
head. Parameters::

    params = {
        "input_heads": {key: {"w": [d_in, h_0]}},
        "hidden": [{"b": [h_0]}, {"w": [h_0, h_1], "b": [h_1]}, ...],  # layer l: [h_{l-1}, h_l]
        "output_heads": {task_name: {"w": [h_{L-1}, d_out], "b": [d_out]}},
    }

Every hidden unit carries a *timestamp*: the index of the task at which it was added.
Units are only ever appended and always stamped with the newest task, so the units a task
``t`` may use are a prefix of each layer; ``apply(net, x, t)`` slices that prefix
(DEN, Yoon et al. 2018, §3.4, timestamped inference). Growth after task ``t`` therefore
never changes task ``t``'s outputs: the computation it runs has the same operands and the
same shapes as before.

All functions here and in :mod:`den_jax.surgery` are pure: they return new networks and
never modify their inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ACTIVATIONS",
    "SHARED_INPUT",
    "ExpandableNet",
    "Initializer",
    "LayerUnits",
    "NetMeta",
    "TaskSpec",
    "add_task",
    "apply",
    "check_layer",
    "check_positive",
    "default_kernel_init",
    "hidden_features",
    "init_network",
    "resolve_task",
    "shallow_copy",
    "task_params",
    "task_widths",
]

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]

SHARED_INPUT = "shared"

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
    "identity": lambda x: x,
}

default_kernel_init: Initializer = jax.nn.initializers.lecun_normal()


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Static description of one task.

    Attributes:
      name: unique task name.
      index: position in the task sequence (0-based); the timestamp of units added
        while this task is the newest.
      input_dim: width of the task's inputs.
      output_dim: width of the task's output head.
      input_key: ``"shared"`` or the task's own name (its input head).
      metadata: free-form JSON-serialisable data (class order, dataset name, ...).
        Ignored by equality and hashing, so it never triggers recompilation.
    """

    name: str
    index: int
    input_dim: int
    output_dim: int
    input_key: str
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class LayerUnits:
    """Static per-unit bookkeeping of one hidden layer (tuples: hashable, immutable).

    Attributes:
      stamps: task index at which each unit was added (non-decreasing).
      ids: a network-wide unique id per unit; survives removals of other units.
      parents: id of the unit this one duplicates, or -1.
    """

    stamps: tuple[int, ...]
    ids: tuple[int, ...]
    parents: tuple[int, ...]

    @property
    def width(self) -> int:
        return len(self.stamps)

    def count_upto(self, task_index: int) -> int:
        """Number of units with timestamp <= ``task_index`` (a prefix, since stamps sort)."""
        return int(np.searchsorted(np.asarray(self.stamps, np.int64), task_index, side="right"))


@dataclasses.dataclass(frozen=True)
class NetMeta:
    """Static (non-array) part of a network: activation, tasks and unit bookkeeping."""

    activation: str
    shared_input_dim: int | None
    layers: tuple[LayerUnits, ...]
    tasks: tuple[TaskSpec, ...] = ()
    next_unit_id: int = 0

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(layer.width for layer in self.layers)

    @property
    def newest_task(self) -> int:
        """Index of the newest task, or 0 if none was added (units then belong to task 0)."""
        return max(len(self.tasks) - 1, 0)


@flax.struct.dataclass
class ExpandableNet:
    """A multi-task network with growing shared hidden layers (a pytree).

    ``params`` holds the arrays (leaves); ``meta`` is static and part of the tree
    structure, so ``jax.jit`` retraces when the architecture changes, never otherwise.
    """

    params: dict
    meta: NetMeta = flax.struct.field(pytree_node=False)

    @property
    def widths(self) -> tuple[int, ...]:
        return self.meta.widths

    @property
    def num_layers(self) -> int:
        return len(self.meta.layers)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.meta.tasks)

    def task(self, task: int | str) -> TaskSpec:
        """Returns the :class:`TaskSpec` of ``task`` (an index or a name)."""
        return resolve_task(self.meta, task)


def resolve_task(meta: NetMeta, task: int | str) -> TaskSpec:
    """Looks a task up by index or name; raises ``ValueError`` naming the known tasks.

    A traced ``task`` (``jax.jit(apply)`` without ``static_argnums``) is refused with a
    message saying how to pass it statically.
    """
    if isinstance(task, jax.core.Tracer):
        raise ValueError(
            "task is a traced value; pass `task` as a static argument "
            "(jax.jit(apply, static_argnums=2)): the task decides the shapes of the forward pass"
        )
    if isinstance(task, (int, np.integer)) and not isinstance(task, bool):
        if 0 <= int(task) < len(meta.tasks):
            return meta.tasks[int(task)]
        raise ValueError(
            f"unknown task index {int(task)}: the network has {len(meta.tasks)} task(s) "
            f"(valid indices 0..{len(meta.tasks) - 1}; names {[t.name for t in meta.tasks]})"
        )
    if isinstance(task, str):
        for spec in meta.tasks:
            if spec.name == task:
                return spec
        raise ValueError(f"unknown task {task!r}; known tasks: {[t.name for t in meta.tasks]}")
    raise ValueError(f"task must be an int index or a str name, got {type(task).__name__}")


def check_layer(meta: NetMeta, layer: int) -> int:
    """Validates a hidden-layer index; raises ``ValueError`` with the valid range."""
    n = len(meta.layers)
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 0 <= layer < n:
        raise ValueError(
            f"layer {layer!r} is out of range: the network has {n} hidden layer(s) "
            f"(valid indices 0..{n - 1})"
        )
    return int(layer)


def check_positive(name: str, value: int) -> int:
    """Returns ``value`` as an int; raises ``ValueError`` naming ``name`` unless it is > 0.

    Args:
      name: what the value is (used in the message), e.g. ``"input_dim"``.
      value: the value to check (a Python or NumPy integer; bools are refused).

    Returns:
      ``int(value)``.
    """
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def init_network(
    key: jax.Array,
    hidden_widths: tuple[int, ...] | list[int],
    *,
    shared_input_dim: int | None = None,
    activation: str = "relu",
    kernel_init: Initializer = default_kernel_init,
) -> ExpandableNet:
    """Creates a network with no task yet.

    Args:
      key: PRNG key.
      hidden_widths: widths ``(h_0, ..., h_{L-1})`` of the shared hidden layers, L >= 1.
      shared_input_dim: if given, a shared first layer ``[shared_input_dim, h_0]`` is created
        and tasks of that input width use it; otherwise every task gets its own input head.
      activation: a name in :data:`ACTIVATIONS`.
      kernel_init: initializer for weight matrices (``jax.nn.initializers`` style).

    Returns:
      An :class:`ExpandableNet`; its units are stamped with task index 0.
    """
    widths = [int(check_positive(f"hidden_widths[{i}]", w)) for i, w in enumerate(hidden_widths)]
    if not widths:
        raise ValueError("hidden_widths must name at least one hidden layer, got []")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    if shared_input_dim is not None:
        check_positive("shared_input_dim", shared_input_dim)
    keys = jax.random.split(key, len(widths) + 1)
    hidden = [{"b": jnp.zeros((widths[0],), jnp.float32)}]
    for layer in range(1, len(widths)):
        shape = (widths[layer - 1], widths[layer])
        hidden.append(
            {"w": kernel_init(keys[layer], shape, jnp.float32), "b": jnp.zeros(shape[1:])}
        )
    input_heads = {}
    if shared_input_dim is not None:
        shape = (int(shared_input_dim), widths[0])
        input_heads[SHARED_INPUT] = {"w": kernel_init(keys[0], shape, jnp.float32)}
    layers, next_id = [], 0
    for w in widths:
        layers.append(
            LayerUnits(stamps=(0,) * w, ids=tuple(range(next_id, next_id + w)), parents=(-1,) * w)
        )
        next_id += w
    meta = NetMeta(
        activation=activation,
        shared_input_dim=None if shared_input_dim is None else int(shared_input_dim),
        layers=tuple(layers),
        next_unit_id=next_id,
    )
    params = {"input_heads": input_heads, "hidden": hidden, "output_heads": {}}
    return ExpandableNet(params=params, meta=meta)


def add_task(
    net: ExpandableNet,
    key: jax.Array,
    name: str,
    *,
    input_dim: int,
    output_dim: int,
    own_input_head: bool | None = None,
    kernel_init: Initializer = default_kernel_init,
    metadata: Mapping[str, Any] | None = None,
) -> ExpandableNet:
    """Adds a task with its output head (and its input head if it needs one).

    Args:
      net: the network.
      key: PRNG key for the new heads.
      name: unique task name.
      input_dim: input width of the task.
      output_dim: output width (number of classes or regression targets).
      own_input_head: ``None`` uses the shared first layer when ``input_dim`` equals
        ``shared_input_dim`` and an own input head otherwise; ``True`` forces an own head;
        ``False`` requires the shared layer.
      kernel_init: initializer for the new heads' weights (biases start at zero).
      metadata: free-form JSON-serialisable data kept in the task's index map.

    Returns:
      A new network whose task ``len(net.task_names)`` is ``name``. It sees every
      existing unit.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"task name must be a non-empty str, got {name!r}")
    if name in net.task_names:
        raise ValueError(f"task {name!r} already exists (tasks: {list(net.task_names)})")
    if name == SHARED_INPUT:
        raise ValueError(f"task name {SHARED_INPUT!r} is reserved for the shared input layer")
    input_dim = check_positive("input_dim", input_dim)
    output_dim = check_positive("output_dim", output_dim)
    shared = net.meta.shared_input_dim
    if own_input_head is None:
        own_input_head = shared is None or input_dim != shared
    if not own_input_head and (shared is None or input_dim != shared):
        raise ValueError(
            f"task {name!r} asks for the shared input layer, which expects width {shared}, "
            f"but its input_dim is {input_dim}"
        )
    k_in, k_out = jax.random.split(key)
    params = shallow_copy(net.params)
    widths = net.widths
    if own_input_head:
        params["input_heads"][name] = {"w": kernel_init(k_in, (input_dim, widths[0]), jnp.float32)}
    params["output_heads"][name] = {
        "w": kernel_init(k_out, (widths[-1], output_dim), jnp.float32),
        "b": jnp.zeros((output_dim,), jnp.float32),
    }
    spec = TaskSpec(
        name=name,
        index=len(net.meta.tasks),
        input_dim=input_dim,
        output_dim=output_dim,
        input_key=name if own_input_head else SHARED_INPUT,
        metadata=dict(metadata or {}),
    )
    meta = dataclasses.replace(net.meta, tasks=net.meta.tasks + (spec,))
    return ExpandableNet(params=params, meta=meta)


def shallow_copy(params: dict) -> dict:
    """Copies the container structure of ``params`` (arrays are immutable, so shared).

    Args:
      params: a parameter pytree (nested dicts and lists of arrays).

    Returns:
      New dicts and lists holding the same array objects, safe to modify in place.
    """
    return jax.tree.map(lambda x: x, params)


def task_widths(net: ExpandableNet, task: int | str) -> tuple[int, ...]:
    """Number of units of each hidden layer that ``task`` may use (timestamp <= its index)."""
    spec = resolve_task(net.meta, task)
    return tuple(layer.count_upto(spec.index) for layer in net.meta.layers)


def task_params(net: ExpandableNet, task: int | str) -> dict:
    """The parameters ``task``'s forward pass uses, sliced to its units.

    Returns:
      ``{"input": {"w": [d_in, n_0]}, "hidden": [{"b": [n_0]}, {"w": [n_0, n_1], "b": [n_1]},
      ...], "output": {"w": [n_{L-1}, d_out], "b": [d_out]}}`` where ``n_l`` are
      :func:`task_widths`.
    """
    spec = resolve_task(net.meta, task)
    n = task_widths(net, spec.name)
    p = net.params
    hidden = [{"b": p["hidden"][0]["b"][: n[0]]}]
    for layer in range(1, len(n)):
        hp = p["hidden"][layer]
        hidden.append({"w": hp["w"][: n[layer - 1], : n[layer]], "b": hp["b"][: n[layer]]})
    head = p["output_heads"][spec.name]
    return {
        "input": {"w": p["input_heads"][spec.input_key]["w"][:, : n[0]]},
        "hidden": hidden,
        "output": {"w": head["w"][: n[-1]], "b": head["b"]},
    }


def _check_input(spec: TaskSpec, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != spec.input_dim:
        raise ValueError(
            f"task {spec.name!r} expects inputs of width {spec.input_dim} "
            f"(its input head '{spec.input_key}'), got an array of shape {tuple(x.shape)}"
        )
    return x


def _features(
    activation: str, tp: dict, x: jax.Array, dropout: float = 0.0, key: jax.Array | None = None
) -> list[jax.Array]:
    act = ACTIVATIONS[activation]
    keys = None if dropout == 0.0 else jax.random.split(key, len(tp["hidden"]))

    def drop(h, layer):
        if keys is None:
            return h
        keep = jax.random.bernoulli(keys[layer], 1.0 - dropout, h.shape)
        return jnp.where(keep, h / (1.0 - dropout), 0.0)

    h = drop(act(x @ tp["input"]["w"] + tp["hidden"][0]["b"]), 0)
    features = [h]
    for layer, hp in enumerate(tp["hidden"][1:], start=1):
        h = drop(act(h @ hp["w"] + hp["b"]), layer)
        features.append(h)
    return features


def hidden_features(net: ExpandableNet, x: jax.Array, task: int | str) -> list[jax.Array]:
    """Activations of every hidden layer for ``task``: a list of ``[..., n_l]`` arrays."""
    spec = resolve_task(net.meta, task)
    x = _check_input(spec, x)
    return _features(net.meta.activation, task_params(net, spec.name), x)


def apply(
    net: ExpandableNet,
    x: jax.Array,
    task: int | str,
    *,
    dropout: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """Task ``task``'s forward pass with timestamped inference (DEN §3.4).

    Args:
      net: the network.
      x: inputs ``[..., d_in]`` with ``d_in`` the task's input width.
      task: task index or name; static under ``jax.jit`` (``static_argnums=2``). A traced
        ``task`` raises ``ValueError``.
      dropout: inverted-dropout rate on every hidden activation, in ``[0, 1)``; 0 (the
        default) is the deterministic forward pass.
      key: PRNG key of the dropout masks; required when ``dropout > 0``.

    Returns:
      Logits (or regression outputs) ``[..., d_out]``; only units with timestamp
      <= the task's index take part.
    """
    spec = resolve_task(net.meta, task)
    x = _check_input(spec, x)
    if isinstance(dropout, jax.core.Tracer) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a static float in [0, 1), got {dropout!r}")
    if dropout and key is None:
        raise ValueError(f"dropout={dropout} needs a PRNG key (apply(..., key=key))")
    tp = task_params(net, spec.name)
    h = _features(net.meta.activation, tp, x, float(dropout), key)[-1]
    out = h @ tp["output"]["w"] + tp["output"]["b"]
    chex.assert_shape(out, (*x.shape[:-1], spec.output_dim))
    return out
