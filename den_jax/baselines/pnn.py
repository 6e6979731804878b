"""Progressive Neural Networks (Rusu et al. 2016) on MLPs: one frozen column per task.

Task ``k`` gets a new *column*: an MLP with the hidden widths of the first one, its own
input layer and its own output layer. Every hidden layer ``l >= 1`` of column ``k`` (and
its output layer) also receives the activations of layer ``l - 1`` of every earlier
column through the paper's non-linear lateral adapter (Eq. 2)::

    h_l^(k) = f( W_l^(k) h_{l-1}^(k) + b_l^(k) + U_l^(k) f( V_l^(k) (alpha_l^(k) * h_{l-1}^(<k)) ) )

with ``h_{l-1}^(<k)`` the concatenation of the earlier columns' activations, ``alpha`` a
learned scalar (initialised to a random small value), ``V`` a projection onto
``cfg.pnn_adapter_dim`` units (default: the receiving layer's width) and ``U`` the map
into the layer. While task ``k`` is learned, columns ``0..k-1`` are frozen: only column
``k`` (and, see below, its earlier columns' input layers for task ``k``'s input) train.

Inputs of different widths (``sklearn_hetero``): a column's input layer is keyed by the
task's input key (``"shared"`` for tasks of the stream's common width, else the task's
name, as :func:`den_jax.network.add_task` does). When task ``k``'s inputs do not fit an
earlier column's input layer, that column gets an input layer for task ``k``'s key,
trained with task ``k`` and frozen afterwards; the column's own computation on its own
task never uses it.

The model lives in the method's ``state`` (arrays only)::

    state = {"columns": [col_0, ..., col_t]}
    col_k = {"input": {input_key: {"w": [d, h_0]}},
             "hidden": [{"b": [h_0]}, {"w": [h_0, h_1], "b": [h_1]}, ...],
             "output": {"w": [h_{L-1}, c_k], "b": [c_k]},
             "lateral": [{"alpha": [], "v": [k * h_{l-1}, m_l], "u": [m_l, n_l]}, ...]}

(``"lateral"``: one adapter per layer ``l = 1..L-1`` plus the output layer; absent for
column 0). Inference on task ``t`` runs columns ``0..t`` only (:func:`pnn_predict`), so
later columns never change an earlier task's outputs. The :class:`ExpandableNet` the
runner passes only carries the tasks' names and sizes; its parameters are not used.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.baselines.common import BaselineConfig, check_task_data, loss_of
from den_jax.network import ACTIVATIONS, ExpandableNet, default_kernel_init, resolve_task
from den_jax.training import evaluate_loss, resolve_optimizer, train_steps

__all__ = [
    "init_column",
    "pnn_count",
    "pnn_forward",
    "pnn_learn_task",
    "pnn_predict",
]


def _dense(key, shape):
    return default_kernel_init(key, shape, jnp.float32)


def init_column(
    key: jax.Array,
    index: int,
    widths: tuple[int, ...],
    input_key: str,
    input_dim: int,
    output_dim: int,
    *,
    adapter_dim: int = 0,
    alpha_init: float = 0.01,
) -> dict:
    """A new column for task ``index`` (lecun-normal weights, zero biases).

    Args:
      key: PRNG key.
      index: the task's index ``k`` (``k`` earlier columns feed its adapters).
      widths: hidden widths ``(h_0, ..., h_{L-1})``.
      input_key: key of the column's input layer.
      input_dim: width of the task's inputs.
      output_dim: width of the task's output layer.
      adapter_dim: width of the adapters' projection; 0: the receiving layer's width.
      alpha_init: scale of ``alpha`` at initialisation (uniform in ``[0.5, 1.5]`` times it).

    Returns:
      The column pytree (module docstring).
    """
    L = len(widths)
    keys = jax.random.split(key, 3 * (L + 1) + 2)
    col: dict = {
        "input": {input_key: {"w": _dense(keys[0], (input_dim, widths[0]))}},
        "hidden": [{"b": jnp.zeros((widths[0],), jnp.float32)}],
        "output": {
            "w": _dense(keys[1], (widths[-1], output_dim)),
            "b": jnp.zeros((output_dim,), jnp.float32),
        },
    }
    for layer in range(1, L):
        col["hidden"].append(
            {"w": _dense(keys[1 + layer], (widths[layer - 1], widths[layer])),
             "b": jnp.zeros((widths[layer],), jnp.float32)}
        )  # fmt: skip
    if index > 0:
        lateral = []
        outs = [*widths[1:], output_dim]
        for layer, n_out in enumerate(outs, start=1):
            n_in = widths[layer - 1]
            m = adapter_dim or n_out
            ka, kv, ku = keys[L + 2 + 3 * (layer - 1) : L + 5 + 3 * (layer - 1)]
            alpha = alpha_init * jax.random.uniform(ka, (), jnp.float32, 0.5, 1.5)
            lateral.append(
                {"alpha": alpha, "v": _dense(kv, (index * n_in, m)), "u": _dense(ku, (m, n_out))}
            )
        col["lateral"] = lateral
    return col


def _adapter(a: dict, earlier: list[jax.Array], act) -> jax.Array:
    return act((a["alpha"] * jnp.concatenate(earlier, axis=-1)) @ a["v"]) @ a["u"]


def pnn_forward(columns: list[dict], x: jax.Array, input_key: str, activation: str) -> jax.Array:
    """Logits of the last column of ``columns`` on ``x`` (columns ``0..t`` of task ``t``).

    Args:
      columns: columns ``0..t``; every one must hold an input layer for ``input_key``.
      x: inputs ``[..., d]``.
      input_key: the task's input key.
      activation: a name in :data:`den_jax.network.ACTIVATIONS`.

    Returns:
      Logits ``[..., c_t]``. Column ``j`` only reads columns ``< j``, so the last
      column's outputs depend on columns ``0..t`` and nothing else.
    """
    act = ACTIVATIONS[activation]
    feats: list[list[jax.Array]] = []
    L = len(columns[0]["hidden"])
    for j, col in enumerate(columns):
        hs = [act(x @ col["input"][input_key]["w"] + col["hidden"][0]["b"])]
        for layer in range(1, L):
            z = hs[-1] @ col["hidden"][layer]["w"] + col["hidden"][layer]["b"]
            if j > 0:
                z = z + _adapter(col["lateral"][layer - 1], [f[layer - 1] for f in feats], act)
            hs.append(act(z))
        feats.append(hs)
    top = columns[-1]
    out = feats[-1][-1] @ top["output"]["w"] + top["output"]["b"]
    if len(columns) > 1:
        out = out + _adapter(top["lateral"][L - 1], [f[L - 1] for f in feats[:-1]], act)
    return out


def _columns(state: Any, net: ExpandableNet) -> list[dict]:
    if not isinstance(state, dict) or not isinstance(state.get("columns"), list):
        raise ValueError(
            f"PNN state must be a dict {{'columns': [...]}} (the previous report's state); "
            f"got {type(state).__name__}"
        )
    return state["columns"]


def pnn_predict(net: ExpandableNet, state: Any, x: jax.Array, task: int | str) -> jax.Array:
    """Task ``task``'s logits: columns ``0..t`` of ``state`` (a :class:`Method` ``predict``)."""
    spec = resolve_task(net.meta, task)
    cols = _columns(state, net)
    if len(cols) <= spec.index:
        raise ValueError(
            f"PNN state holds {len(cols)} column(s); task {spec.name!r} (index {spec.index}) "
            "has not been learned"
        )
    x = jnp.asarray(x)
    if x.shape[-1] != spec.input_dim:
        raise ValueError(
            f"task {spec.name!r} expects inputs of width {spec.input_dim}, got {tuple(x.shape)}"
        )
    return pnn_forward(cols[: spec.index + 1], x, spec.input_key, net.meta.activation)


def _size(tree) -> int:
    return int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(tree)))


def _nonzero(tree) -> int:
    return int(sum(np.count_nonzero(np.asarray(v)) for v in jax.tree.leaves(tree)))


def pnn_count(net: ExpandableNet, state: Any, task: int | str | None = None) -> dict:
    """Parameters of the columns: all of them, or those task ``task``'s forward pass uses.

    Returns:
      ``{"params", "nonzero", "units"}`` (units: hidden units per layer over the columns).
    """
    cols = _columns(state, net)
    widths = [int(np.shape(h["b"])[0]) for h in cols[0]["hidden"]] if cols else list(net.widths)
    if task is None:
        return {"params": _size(cols), "nonzero": _nonzero(cols),
                "units": [w * len(cols) for w in widths]}  # fmt: skip
    spec = resolve_task(net.meta, task)
    used = []
    for j, col in enumerate(cols[: spec.index + 1]):
        part = {"input": col["input"][spec.input_key], "hidden": col["hidden"]}
        lat = col.get("lateral", [])
        part["lateral"] = lat if j == spec.index else lat[:-1]
        if j == spec.index:
            part["output"] = col["output"]
        used.append(part)
    return {"params": _size(used), "nonzero": _nonzero(used),
            "units": [w * (spec.index + 1) for w in widths]}  # fmt: skip


def _check_cfg(cfg: BaselineConfig) -> None:
    dim = cfg.pnn_adapter_dim
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 0:
        raise ValueError(f"BaselineConfig.pnn_adapter_dim must be an integer >= 0, got {dim!r}")
    if not float(cfg.pnn_alpha_init) > 0:
        raise ValueError(f"BaselineConfig.pnn_alpha_init must be > 0, got {cfg.pnn_alpha_init}")


def _assemble(frozen: list[dict], trained: dict, input_key: str) -> list[dict]:
    cols = []
    for j, col in enumerate(frozen):
        head = trained["inputs"].get(str(j))
        cols.append(col if head is None else {**col, "input": {**col["input"], input_key: head}})
    return [*cols, trained["column"]]


def pnn_learn_task(
    net, key, task, train, valid, cfg, *, state=None, loss=None, optimizer=None
) -> tuple[ExpandableNet, dict]:
    """Adds and trains task ``task``'s column for ``cfg.steps`` steps; earlier ones frozen.

    Args:
      net: the runner's network (holds the task; only its task specs are used).
      key: PRNG key (initialisation and shuffling).
      task: the task's name.
      train: ``(x, y)`` (or batches).
      valid: ``(x, y)`` or ``None`` (validation loss in the report).
      cfg: a :class:`BaselineConfig` (``steps``, ``batch_size``, schedule, weight decay on
        the trained parameters, ``pnn_adapter_dim``, ``pnn_alpha_init``).
      state: ``None`` for the first task, then the previous report's ``state``.
      loss: optional ``(logits, y) -> scalar``.
      optimizer: optional ``optax`` transformation or ``schedule -> transformation``.

    Returns:
      ``(net, report)``; ``report["state"] = {"columns": [...]}`` with the new column.
    """
    train, valid = check_task_data(net, task, cfg, train, valid)
    _check_cfg(cfg)
    spec = resolve_task(net.meta, task)
    frozen = [] if state is None else list(_columns(state, net))
    if len(frozen) != spec.index:
        raise ValueError(
            f"PNN task {task!r} has index {spec.index} but the state holds {len(frozen)} "
            "column(s); pass the previous task's report['state']"
        )
    k_init, k_in, k_train = jax.random.split(key, 3)
    widths = tuple(int(np.shape(h["b"])[0]) for h in frozen[0]["hidden"]) if frozen else net.widths
    trained = {
        "column": init_column(
            k_init, spec.index, widths, spec.input_key, spec.input_dim, spec.output_dim,
            adapter_dim=int(cfg.pnn_adapter_dim), alpha_init=float(cfg.pnn_alpha_init),
        ),
        "inputs": {
            str(j): {"w": _dense(jax.random.fold_in(k_in, j), (spec.input_dim, widths[0]))}
            for j, col in enumerate(frozen)
            if spec.input_key not in col["input"]
        },
    }  # fmt: skip
    batch_loss = loss_of(cfg) if loss is None else loss
    activation, input_key, wd = net.meta.activation, spec.input_key, float(cfg.weight_decay)

    def task_loss(params, xb, yb, aux):
        logits = pnn_forward(_assemble(aux, params, input_key), xb, input_key, activation)
        return batch_loss(logits, yb)

    def loss_fn(params, xb, yb, aux):
        value = task_loss(params, xb, yb, aux)
        if wd:
            value = value + wd * 0.5 * sum(jnp.sum(v**2) for v in jax.tree.leaves(params))
        return value

    x, y = train
    batch = min(cfg.batch_size, int(np.shape(x)[0]))
    tx = resolve_optimizer(optimizer, cfg.schedule(batch))
    aux = frozen if frozen else []
    try:
        params, _, losses = train_steps(
            trained, tx.init(trained), tx=tx, loss_fn=loss_fn, x=x, y=y, key=k_train,
            num_steps=cfg.steps, batch_size=batch, loss_aux=aux,
        )  # fmt: skip
    except FloatingPointError as err:
        raise FloatingPointError(f"pnn task {task!r}, phase 'train': {err}") from err
    columns = _assemble(frozen, params, input_key)
    losses = np.asarray(losses)
    w = max(1, min(100, len(losses) // 4))
    if valid is None or np.shape(valid[0])[0] == 0:
        valid_loss = float("nan")
    else:
        valid_loss = evaluate_loss(task_loss, params, valid[0], valid[1], loss_aux=aux)
    report = {
        "phase": "pnn",
        "loss": float(losses[-w:].mean()),
        "loss_first": float(losses[:w].mean()),
        "steps": int(cfg.steps),
        "units_added": int(sum(widths)),
        "split": 0,
        "pruned": 0,
        "valid_loss": valid_loss,
        "column_params": _size(params["column"]),
        "lateral_params": _size(params["column"].get("lateral", [])),
        "state": {"columns": columns},
    }
    return net, report
