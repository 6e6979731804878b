"""Runs a continual-learning method over a task stream, with per-task checkpoints and resume.

:func:`run_stream` is the loop every method (DEN, its ablations, the baselines) goes
through: for each task it adds the task's heads (``dj.add_task``), calls the method's
learner ``learn_task(net, key, task, train, valid, cfg, *, state, loss, optimizer)``,
evaluates every task seen so far into the accuracy matrix ``R[i][j]`` (accuracy on task
``j`` after training task ``i``) and the AUROC matrix, and, when a checkpoint directory is
given, saves one orbax step per task (parameters, unit table, index maps, the method's
state, the matrices and reports so far). ``resume=True`` continues after the newest step
that verifies. :func:`load_task` loads the model that predicts any task from such a
directory, after any later growth.

Example::

    import optax, den_jax as dj
    from den_jax.baselines import BaselineConfig
    from den_jax.data import Task
    tasks = [Task("a", xa, ya, xa[:0], ya[:0], xa_test, ya_test, num_classes=2), ...]
    res = dj.stream.run_stream("ewc", tasks, BaselineConfig(steps=200), hidden=[64],
                               optimizer=optax.adam(1e-3), checkpoint_dir="/tmp/ewc")
    net, name = dj.stream.load_task("/tmp/ewc", "a")
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from den_jax import budget, checkpoint, metrics
from den_jax.baselines import BASELINES, Method
from den_jax.baselines.packnet import (
    packnet_count,
    packnet_learn_task,
    packnet_predict,
    packnet_task_network,
)
from den_jax.baselines.pnn import pnn_count, pnn_learn_task, pnn_predict
from den_jax.capacity import count_active_units, count_nonzero_params, count_params
from den_jax.data.tasks import Task, TaskInfo, TaskStream
from den_jax.den import learn_task as den_learn_task
from den_jax.den.ablations import ABLATIONS
from den_jax.network import ExpandableNet, add_task, apply, init_network
from den_jax.network_io import load_network, save_network
from den_jax.runs import abstract_tree, describe_tree, jsonable, report_summary
from den_jax.training import apply_in_batches

__all__ = [
    "METHODS",
    "TaskEnd",
    "evaluate_task",
    "get_method",
    "load_predictor",
    "load_task",
    "run_stream",
    "stl_reference_params",
    "to_stream",
]

_log = logging.getLogger(__name__)

METHODS: Mapping[str, Method] = {
    "den": Method("den", den_learn_task, uses_den_config=True),
    **BASELINES,
    "pnn": Method("pnn", pnn_learn_task, stateful=True, predict=pnn_predict, count=pnn_count),
    "packnet": Method(
        "packnet",
        packnet_learn_task,
        stateful=True,
        predict=packnet_predict,
        count=packnet_count,
        task_network=packnet_task_network,
    ),
    **ABLATIONS,
}
EVAL_SPLITS = ("test", "valid")


class TaskEnd(NamedTuple):
    """What a callback of :func:`run_stream` receives after each task.

    Attributes:
      method: the method's name.
      index: the task's index in the stream.
      name: the task's name.
      summary: :func:`report_summary` of the learner's report, plus ``seconds``.
      accuracy_row: ``R[index][0..index]``.
      params: parameters stored after the task (all networks for separate-network methods).
      units: hidden units per layer after the task.
      net: the network after the task.
    """

    method: str
    index: int
    name: str
    summary: dict
    accuracy_row: list
    params: int
    units: list
    net: ExpandableNet


def get_method(name: str | Method) -> Method:
    """The :class:`~den_jax.baselines.Method` called ``name`` (or ``name`` itself)."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {list(METHODS)}")
    return METHODS[name]


def to_stream(tasks: TaskStream | Sequence[Task], name: str = "custom") -> TaskStream:
    """A :class:`~den_jax.data.TaskStream` from a stream or a list of :class:`Task`.

    The shared input width is the tasks' common ``input_dim`` (``None`` when they differ,
    so that every task gets its own input head).
    """
    if isinstance(tasks, TaskStream):
        return tasks
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ValueError("tasks must be a TaskStream or a non-empty list of den_jax.data.Task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    infos = [TaskInfo(t.name, t.input_dim, t.num_classes, dict(t.metadata)) for t in tasks]
    dims = {t.input_dim for t in tasks}
    return TaskStream(name, infos, lambda i: tasks[i], dims.pop() if len(dims) == 1 else None)


def evaluate_task(
    net: ExpandableNet,
    task: str,
    x,
    y,
    *,
    batch_size: int = 2048,
    predict: Callable | None = None,
    state: Any = None,
):
    """``(accuracy, mean one-vs-rest AUROC)`` of ``task`` on ``(x, y)``.

    Args:
      net: the network.
      task: the task's name.
      x: inputs ``[N, d]``.
      y: integer labels ``[N]``.
      batch_size: rows per forward pass.
      predict: ``(net, state, x, task) -> logits`` (a :class:`Method`'s ``predict``);
        ``None``: ``dj.apply(net, x, task)``.
      state: passed to ``predict``.
    """
    if predict is None:
        fwd = jax.jit(apply, static_argnums=2)
        run = lambda xb: fwd(net, xb, task)
    else:
        fwd = jax.jit(predict, static_argnums=3)
        run = lambda xb: fwd(net, state, xb, task)
    logits = np.asarray(apply_in_batches(run, x, batch_size=batch_size))
    return metrics.accuracy(logits, y), metrics.mean_auroc(logits, y)


def _sizes(m: Method, nets: Mapping[str, ExpandableNet], state: Any, depth: int) -> dict:
    if m.separate_networks:
        return {
            "params": sum(count_params(n) for n in nets.values()),
            "nonzero_params": sum(count_nonzero_params(n) for n in nets.values()),
            "units": [sum(n.widths[layer] for n in nets.values()) for layer in range(depth)],
        }
    net = nets["net"]
    if m.count is not None:
        c = m.count(net, state)
        return {"params": int(c["params"]), "nonzero_params": int(c["nonzero"]),
                "units": [int(w) for w in c.get("units", net.widths)]}  # fmt: skip
    return {
        "params": count_params(net),
        "nonzero_params": count_nonzero_params(net),
        "units": [int(w) for w in net.widths],
    }


def stl_reference_params(stream: TaskStream, hidden: Sequence[int]) -> int:
    """Parameters of the separate-networks baseline (STL): one network per task."""
    total = 0
    for info in stream.infos:
        dims = [info.input_dim, *hidden, info.num_classes]
        total += sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    return int(total)


# ----------------------------------------------------------------------------- the loop


def _method_salt(name: str) -> int:
    names = list(METHODS)
    return names.index(name) if name in names else zlib.crc32(name.encode()) % (1 << 30)


def _eval_data(stream: TaskStream, j: int, current: Task | None, split: str):
    if split == "valid":
        task = current if current is not None else stream[j]
        if len(task.y_valid) == 0:
            raise ValueError(f"eval_split='valid': task {task.name!r} has no validation rows")
        return task.x_valid, task.y_valid
    return (current.x_test, current.y_test) if current is not None else stream.test_data(j)


def run_stream(
    method: str | Method,
    tasks: TaskStream | Sequence[Task],
    cfg: Any,
    *,
    hidden: Sequence[int],
    seed: int = 0,
    activation: str = "relu",
    checkpoint_dir: str | None = None,
    resume: bool = False,
    run_config: Mapping[str, Any] | None = None,
    loss: Callable | None = None,
    optimizer: Any = None,
    eval_split: str = "test",
    callbacks: Sequence[Callable[[TaskEnd], None]] = (),
    steps_per_task: Sequence[int] | None = None,
) -> dict:
    """Trains ``method`` on every task of ``tasks`` in order; evaluates after each task.

    Args:
      method: a name from :data:`METHODS` or a :class:`~den_jax.baselines.Method`.
      tasks: a :class:`~den_jax.data.TaskStream` or a list of :class:`~den_jax.data.Task`.
      cfg: the learner's config (``den.DENConfig`` or ``baselines.BaselineConfig``).
      hidden: hidden widths of the initial network.
      seed: seeds initialisation, new units and shuffling (folded with the method).
      activation: hidden activation of the network.
      checkpoint_dir: one orbax step per completed task goes here (``None``: none).
      resume: continue after the newest checkpoint step that verifies; steps after it that
        do not verify are moved to ``checkpoint_dir + ".unusable"``.
      run_config: JSON-serialisable description of the run, saved with every step; a
        resume with a different one is refused, naming the differing keys.
      loss: ``(logits, y) -> scalar`` passed to the learner (default: the config's).
      optimizer: an ``optax.GradientTransformation`` or ``schedule -> transformation``,
        passed to the learner (default: the config's Adam schedule).
      eval_split: ``"test"`` (report) or ``"valid"`` (model selection).
      callbacks: called with a :class:`TaskEnd` after each task (and its checkpoint).
      steps_per_task: optimizer steps for each task (e.g. what DEN spent on it, for
        baselines at equal budget; :func:`den_jax.budget.with_budget`); ``None``: the
        config's own steps. Saved with the checkpoints; a resume with another is refused.

    Returns:
      A JSON-friendly dict: ``accuracy_matrix``, ``auroc_matrix``, ``avg_accuracy``,
      ``forgetting``, ``bwt``, ``auroc`` (mean over tasks after the last one),
      ``final_accuracy``, parameters and units (final, per task, after each task),
      ``capacity_vs_stl``, ``stl_params``, ``seconds``, ``steps_per_task`` (optimizer
      steps spent on each task, from the task reports), ``budget`` (``steps_per_task``
      as given, or ``None``) and ``tasks_report``.

    Raises:
      ValueError: on bad arguments, an occupied ``checkpoint_dir`` without ``resume``, or
        a resume whose ``run_config`` differs from the saved one.
    """
    m = get_method(method)
    stream = to_stream(tasks)
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {eval_split!r}")
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden widths must be positive integers, got {hidden}")
    key = jax.random.fold_in(jax.random.key(seed), _method_salt(m.name))
    T = len(stream)
    steps = None if steps_per_task is None else budget.check_budget(steps_per_task, T)
    if steps is not None:
        budget.with_budget(m.name, cfg, steps[0])  # refuses methods without a budget
    run_config = dict(run_config or {})
    acc: list = [[None] * T for _ in range(T)]
    auc: list = [[None] * T for _ in range(T)]
    reports: list[dict] = []
    sizes: list[dict] = []
    nets: dict[str, ExpandableNet] = {}  # separate networks: one per task; else "net"
    state, start = None, 0

    def fresh(k):
        return init_network(
            k, hidden, shared_input_dim=stream.shared_input_dim, activation=activation
        )

    done = checkpoint.completed_steps(checkpoint_dir) if checkpoint_dir else []
    if done and not resume:
        raise ValueError(
            f"{checkpoint_dir!r} already holds checkpoints of tasks {done}; pass resume=True "
            "(--resume) to continue, or choose a new directory"
        )
    if done:
        good = checkpoint.latest_verified_step(checkpoint_dir)
        for s in done:
            if good is None or s > good:
                checkpoint.move_aside_step(checkpoint_dir, s, "newer than the last good step")
    else:
        good = None
    if good is not None:
        saved = checkpoint.restore_meta(checkpoint_dir, good)["extra"]
        checkpoint.check_config_compatible(saved["config"], jsonable(run_config))
        if saved["stream"]["method"] != m.name:
            raise ValueError(
                f"{checkpoint_dir!r} holds method {saved['stream']['method']!r}, not {m.name!r}"
            )
        if saved["stream"].get("budget") != steps:
            raise ValueError(
                f"{checkpoint_dir!r} was run with steps_per_task "
                f"{saved['stream'].get('budget')}, not {steps}; choose a new directory"
            )
        if m.separate_networks:
            for i in range(good + 1):
                nets[stream.names[i]], _, _ = load_network(checkpoint_dir, i)
        else:
            desc = saved["stream"]["state"]
            nets["net"], state, _ = load_network(
                checkpoint_dir, good, extra_abstract=None if desc is None else abstract_tree(desc)
            )
            state = None if desc is None else jax.tree.map(jnp.asarray, state)
        acc, auc = saved["accuracy_matrix"], saved["auroc_matrix"]
        reports, sizes = saved["reports"], saved["sizes"]
        start = good + 1
        _log.info("[%s] resuming after task %d (%s)", m.name, good, stream.names[good])
    elif not m.separate_networks:
        nets["net"] = fresh(jax.random.fold_in(key, 10_000))

    for i in range(start, T):
        task = stream[i]
        t0 = time.time()
        net = fresh(jax.random.fold_in(key, 10_000 + i)) if m.separate_networks else nets["net"]
        net = add_task(
            net,
            jax.random.fold_in(key, 1000 + i),
            task.name,
            input_dim=task.input_dim,
            output_dim=task.num_classes,
            metadata=dict(task.metadata),
        )
        kwargs = {"state": state} if m.stateful else {}
        if m.needs_history:
            kwargs["history"] = [
                (stream.names[j], (stream[j].x_train, stream[j].y_train)) for j in range(i)
            ]
        if loss is not None:
            kwargs["loss"] = loss
        if optimizer is not None:
            kwargs["optimizer"] = optimizer
        task_cfg = cfg if steps is None else budget.with_budget(m.name, cfg, steps[i])
        net, report = m.learn_task(
            net,
            jax.random.fold_in(key, i),
            task.name,
            (task.x_train, task.y_train),
            (task.x_valid, task.y_valid),
            task_cfg,
            **kwargs,
        )
        report = dict(report)
        new_state = report.pop("state", None)
        state = new_state if m.stateful else None
        nets[task.name if m.separate_networks else "net"] = net
        for j in range(i + 1):
            model = nets[stream.names[j]] if m.separate_networks else net
            x, y = _eval_data(stream, j, task if j == i else None, eval_split)
            acc[i][j], auc[i][j] = evaluate_task(
                model, stream.names[j], x, y, predict=m.predict, state=state
            )
        size = _sizes(m, nets, state, len(hidden))
        params, units = size["params"], size["units"]
        summary = {**report_summary(report), "task": task.name, "seconds": time.time() - t0}
        reports.append({"summary": summary, "report": jsonable(report)})
        sizes.append(size)
        if checkpoint_dir:
            save_network(
                checkpoint_dir,
                i,
                net,
                extra_arrays=state,
                extra_meta={
                    "config": jsonable(run_config),
                    "stream": {
                        "method": m.name,
                        "separate_networks": m.separate_networks,
                        "state": None if state is None else describe_tree(state),
                        "budget": steps,
                    },
                    "accuracy_matrix": acc,
                    "auroc_matrix": auc,
                    "reports": reports,
                    "sizes": sizes,
                },
            )
        _log.info(
            "[%s] task %d/%d %s: phase=%s acc=%.4f avg_acc=%.4f units=%s params=%d (%.1fs)",
            m.name, i + 1, T, task.name, summary["phase"], acc[i][i],
            float(np.mean(acc[i][: i + 1])), units, params, summary["seconds"],
        )  # fmt: skip
        end = TaskEnd(m.name, i, task.name, summary, list(acc[i][: i + 1]), int(params), units, net)
        for cb in callbacks:
            cb(end)
    res = _results(stream, acc, auc, reports, sizes, nets, m, hidden, state)
    res["budget"] = steps
    return res


def _results(stream, acc, auc, reports, sizes, nets, m: Method, hidden, state=None) -> dict:
    T = len(stream)
    if m.separate_networks:
        per_task = {n: count_params(nets[n]) for n in stream.names}
        units_per_task = {n: count_active_units(nets[n]) for n in stream.names}
    elif m.count is not None:
        counts = {n: m.count(nets["net"], state, task=n) for n in stream.names}
        per_task = {n: int(c["params"]) for n, c in counts.items()}
        units_per_task = {n: [int(u) for u in c["units"]] for n, c in counts.items()}
    else:
        net = nets["net"]
        per_task = {n: count_params(net, n) for n in stream.names}
        units_per_task = {n: count_active_units(net, n) for n in stream.names}
    total = sizes[-1]["params"]
    stl = stl_reference_params(stream, hidden)
    return jsonable(
        {
            "accuracy_matrix": acc,
            "auroc_matrix": auc,
            "avg_accuracy": metrics.average_accuracy(acc),
            "forgetting": metrics.forgetting(acc),
            "bwt": metrics.backward_transfer(acc),
            "auroc": float(np.mean(auc[T - 1])),
            "final_accuracy": list(acc[T - 1]),
            "params": int(total),
            "params_per_task": per_task,
            "units": sizes[-1]["units"],
            "units_per_task": units_per_task,
            "params_after_task": [s["params"] for s in sizes],
            "nonzero_params": int(sizes[-1].get("nonzero_params", total)),
            "nonzero_params_after_task": [s.get("nonzero_params") for s in sizes],
            "units_after_task": [s["units"] for s in sizes],
            "capacity_vs_stl": metrics.capacity_ratio(total, stl),
            "stl_params": stl,
            "seconds": float(sum(r["summary"]["seconds"] for r in reports)),
            "steps_per_task": [budget.report_steps(r["report"]) for r in reports],
            "tasks_report": reports,
        }
    )


def _load(checkpoint_dir: str, task: int | str, step: int | None):
    """``(net, state, task_name, method_name)`` of ``task`` from ``checkpoint_dir``."""
    steps = checkpoint.completed_steps(checkpoint_dir)
    if not steps:
        raise ValueError(f"no checkpoints in {checkpoint_dir!r}")
    last = checkpoint.latest_verified_step(checkpoint_dir) if step is None else step
    if last is None:
        raise ValueError(f"no checkpoint in {checkpoint_dir!r} verifies")
    extra = checkpoint.restore_meta(checkpoint_dir, last)["extra"]
    info = extra["stream"]
    if info["separate_networks"]:
        for s in steps if step is None else [step]:
            meta = checkpoint.restore_meta(checkpoint_dir, s)["network"]
            if task in (s, meta["tasks"][0]["name"]):
                net, _, _ = load_network(checkpoint_dir, s, extra_abstract=None)
                return net, None, net.task_names[0], info["method"]
        raise ValueError(f"unknown task {task!r} in {checkpoint_dir!r}")
    desc = info["state"]
    net, state, _ = load_network(
        checkpoint_dir, last, extra_abstract=None if desc is None else abstract_tree(desc)
    )
    state = None if desc is None else jax.tree.map(jnp.asarray, state)
    if isinstance(task, str) and task not in net.task_names:
        raise ValueError(f"unknown task {task!r}; the checkpoint has tasks {list(net.task_names)}")
    return net, state, net.task(task).name, info["method"]


def load_task(
    checkpoint_dir: str, task: int | str, *, step: int | None = None, with_state: bool = False
):
    """Loads the network that predicts ``task`` from :func:`run_stream`'s checkpoints.

    Args:
      checkpoint_dir: the ``checkpoint_dir`` given to :func:`run_stream`.
      task: task index or name.
      step: checkpoint step (task index) to load; default the newest that verifies (for
        separate-network methods: the task's own step).
      with_state: also return the method's saved state (PNN's columns, PackNet's owners).

    Returns:
      ``(net, task_name)``: predict with ``dj.apply(net, x, task_name)``; timestamped
      inference makes the newest network give every earlier task its own outputs. For
      PackNet, ``net`` keeps only the weights owned by tasks ``<= task``. With
      ``with_state``: ``(net, state, task_name)`` as saved (predict with the method's
      ``predict(net, state, x, task_name)``).

    Raises:
      ValueError: no usable checkpoint, an unknown task, or (without ``with_state``) a
        method whose model is not one network (PNN): use :func:`load_predictor`.
    """
    net, state, name, method = _load(checkpoint_dir, task, step)
    if with_state:
        return net, state, name
    m = METHODS.get(method)
    if m is not None and m.task_network is not None:
        return m.task_network(net, state, name), name
    if m is not None and m.predict is not None:
        raise ValueError(
            f"method {method!r} does not predict with dj.apply(net, ...) alone; use "
            "stream.load_predictor(checkpoint_dir, task) or load_task(..., with_state=True)"
        )
    return net, name


def load_predictor(
    checkpoint_dir: str, task: int | str, *, step: int | None = None
) -> Callable[[Any], jax.Array]:
    """A jitted ``x -> logits`` of ``task`` from :func:`run_stream`'s checkpoints, any method.

    Args:
      checkpoint_dir: the ``checkpoint_dir`` given to :func:`run_stream`.
      task: task index or name.
      step: checkpoint step to load (default: the newest that verifies).

    Returns:
      A function of inputs ``[N, d]`` returning the logits the method gives ``task``
      (its ``predict`` hook with the saved state, else ``dj.apply``).
    """
    net, state, name, method = _load(checkpoint_dir, task, step)
    m = METHODS.get(method)
    if m is None or m.predict is None:
        fwd = jax.jit(apply, static_argnums=2)
        return lambda x: fwd(net, jnp.asarray(x), name)
    fwd = jax.jit(m.predict, static_argnums=3)
    return lambda x: fwd(net, state, jnp.asarray(x), name)
