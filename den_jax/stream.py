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

from den_jax import checkpoint, metrics
from den_jax.baselines import BASELINES, Method
from den_jax.capacity import count_active_units, count_params
from den_jax.data.tasks import Task, TaskInfo, TaskStream
from den_jax.den import learn_task as den_learn_task
from den_jax.network import ExpandableNet, add_task, apply, init_network
from den_jax.network_io import load_network, save_network
from den_jax.runs import abstract_tree, describe_tree, jsonable, report_summary
from den_jax.training import apply_in_batches

__all__ = [
    "METHODS",
    "TaskEnd",
    "evaluate_task",
    "get_method",
    "load_task",
    "run_stream",
    "stl_reference_params",
    "to_stream",
]

_log = logging.getLogger(__name__)

METHODS: Mapping[str, Method] = {"den": Method("den", den_learn_task), **BASELINES}
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


def evaluate_task(net: ExpandableNet, task: str, x, y, *, batch_size: int = 2048):
    """``(accuracy, mean one-vs-rest AUROC)`` of ``task`` on ``(x, y)``."""
    fwd = jax.jit(apply, static_argnums=2)
    logits = np.asarray(apply_in_batches(lambda xb: fwd(net, xb, task), x, batch_size=batch_size))
    return metrics.accuracy(logits, y), metrics.mean_auroc(logits, y)


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

    Returns:
      A JSON-friendly dict: ``accuracy_matrix``, ``auroc_matrix``, ``avg_accuracy``,
      ``forgetting``, ``bwt``, ``auroc`` (mean over tasks after the last one),
      ``final_accuracy``, parameters and units (final, per task, after each task),
      ``capacity_vs_stl``, ``stl_params``, ``seconds`` and ``tasks_report``.

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
        if loss is not None:
            kwargs["loss"] = loss
        if optimizer is not None:
            kwargs["optimizer"] = optimizer
        net, report = m.learn_task(
            net,
            jax.random.fold_in(key, i),
            task.name,
            (task.x_train, task.y_train),
            (task.x_valid, task.y_valid),
            cfg,
            **kwargs,
        )
        report = dict(report)
        new_state = report.pop("state", None)
        state = new_state if m.stateful else None
        nets[task.name if m.separate_networks else "net"] = net
        for j in range(i + 1):
            model = nets[stream.names[j]] if m.separate_networks else net
            x, y = _eval_data(stream, j, task if j == i else None, eval_split)
            acc[i][j], auc[i][j] = evaluate_task(model, stream.names[j], x, y)
        if m.separate_networks:
            params = sum(count_params(n) for n in nets.values())
            units = [sum(n.widths[layer] for n in nets.values()) for layer in range(len(hidden))]
        else:
            params, units = count_params(net), [int(w) for w in net.widths]
        summary = {**report_summary(report), "task": task.name, "seconds": time.time() - t0}
        reports.append({"summary": summary, "report": jsonable(report)})
        sizes.append({"params": int(params), "units": units})
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
    return _results(stream, acc, auc, reports, sizes, nets, m, hidden)


def _results(stream, acc, auc, reports, sizes, nets, m: Method, hidden) -> dict:
    T = len(stream)
    if m.separate_networks:
        per_task = {n: count_params(nets[n]) for n in stream.names}
        units_per_task = {n: count_active_units(nets[n]) for n in stream.names}
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
            "units_after_task": [s["units"] for s in sizes],
            "capacity_vs_stl": metrics.capacity_ratio(total, stl),
            "stl_params": stl,
            "seconds": float(sum(r["summary"]["seconds"] for r in reports)),
            "tasks_report": reports,
        }
    )


def load_task(checkpoint_dir: str, task: int | str, *, step: int | None = None):
    """Loads the network that predicts ``task`` from :func:`run_stream`'s checkpoints.

    Args:
      checkpoint_dir: the ``checkpoint_dir`` given to :func:`run_stream`.
      task: task index or name.
      step: checkpoint step (task index) to load; default the newest that verifies (for
        separate-network methods: the task's own step).

    Returns:
      ``(net, task_name)``: predict with ``dj.apply(net, x, task_name)``; timestamped
      inference makes the newest network give every earlier task its own outputs.
    """
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
                return net, net.task_names[0]
        raise ValueError(f"unknown task {task!r} in {checkpoint_dir!r}")
    desc = info["state"]
    net, _, _ = load_network(
        checkpoint_dir, last, extra_abstract=None if desc is None else abstract_tree(desc)
    )
    if isinstance(task, str) and task not in net.task_names:
        raise ValueError(f"unknown task {task!r}; the checkpoint has tasks {list(net.task_names)}")
    return net, net.task(task).name
