"""Runs DEN and the baselines on a task stream; writes results.json, checkpoints and plots.

Usage::

    python -m experiments.den --dataset sklearn_hetero --method all --out runs/hetero
    python -m experiments.den --dataset permuted_mnist --tasks 10 --method all \
        --data-dir ../shared/data/mnist --out runs/pmnist
    python -m experiments.den --dataset npz:data.npz --tasks classes:0,1/2,3 --method den ...
    python -m experiments.den ... --resume        # continue a killed run

Per method, after each task: an orbax checkpoint in ``OUT/checkpoints/METHOD/`` (step =
task index: parameters, unit table, index maps, config, the accuracy rows so far and, for
EWC, its Fisher state), then ``OUT/results.json`` is rewritten. ``--resume`` restarts
each method after its last completed task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import yaml
from tqdm import tqdm

import den_jax as dj
from den_jax import checkpoint, metrics, plots
from den_jax.baselines import BASELINES, BaselineConfig, Method, ewc_state_abstract
from den_jax.data.tasks import TaskStream, make_stream
from den_jax.network_io import abstract_params, load_network, save_network
from den_jax.training import apply_in_batches

METHODS = ("den", "stl", "finetune", "l2", "ewc")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_log = logging.getLogger("experiments.den")


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.den", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dataset", required=True, help="permuted_mnist | sklearn_hetero | npz:PATH")
    p.add_argument(
        "--tasks",
        default=None,
        help="permuted_mnist: N (10); sklearn_hetero: N or names; npz: permute:N | classes:0,1/2,3",
    )
    p.add_argument("--method", default="den", help=f"one of {', '.join(METHODS)}, or all")
    p.add_argument(
        "--config", default=None, help="YAML/JSON: DEN fields, or sections den:/baselines:"
    )
    p.add_argument("--data-dir", default=None, help="directory with the MNIST idx files")
    p.add_argument(
        "--download", action="store_true", help="download MNIST into --data-dir if missing"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the last completed task")
    p.add_argument("--hidden", default="312,128", help="hidden widths, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling")
    p.add_argument("--max-train", type=int, default=None, help="cap on MNIST training images")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--eval-split",
        choices=("test", "valid"),
        default="test",
        help="split behind the accuracy matrix: test (report) or valid (model selection)",
    )
    return p.parse_args(argv)


def parse_methods(spec: str) -> list[str]:
    """``"all"`` or comma-separated names from :data:`METHODS` (order kept, no repeats)."""
    names = list(METHODS) if spec == "all" else [s.strip() for s in spec.split(",")]
    bad = [n for n in names if n not in METHODS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"bad --method {spec!r}: expected 'all' or names from {list(METHODS)}")
    return names


def parse_hidden(spec: str) -> list[int]:
    try:
        widths = [int(s) for s in spec.split(",")]
    except ValueError as err:
        raise ValueError(f"bad --hidden {spec!r}: expected comma-separated integers") from err
    if not widths or min(widths) < 1:
        raise ValueError(f"bad --hidden {spec!r}: widths must be positive")
    return widths


def _default_config_path(dataset: str) -> str | None:
    key = "npz" if dataset.startswith("npz:") else dataset
    path = os.path.join(CONFIG_DIR, f"den_{key}.yaml")
    return path if os.path.isfile(path) else None


def load_configs(path: str | None) -> tuple[Any, BaselineConfig, dict]:
    """Reads ``--config``: returns ``(DENConfig, BaselineConfig, raw dict)``.

    The file is either a flat mapping of DEN fields, or has sections ``den:`` and
    ``baselines:``. Baselines default to DEN's budget: ``steps_task1`` steps per task, the
    same batch size, learning rate, decay and ``l2_lambda`` weight decay.
    """
    from den_jax.den.config import config_from_dict

    raw: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"config file {path!r} does not exist")
        with open(path) as f:
            raw = (json.load(f) if path.endswith(".json") else yaml.safe_load(f)) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path!r} must hold a mapping, got {type(raw).__name__}")
    sectioned = "den" in raw or "baselines" in raw
    den_raw = raw.get("den", {}) if sectioned else raw
    extra = sorted(set(raw) - {"den", "baselines"}) if sectioned else []
    if extra:
        raise ValueError(f"unknown config section(s) {extra}; expected den: and baselines:")
    den_cfg = config_from_dict(den_raw or {})
    base = {
        "steps": den_cfg.steps_task1,
        "batch_size": den_cfg.batch_size,
        "learning_rate": den_cfg.learning_rate,
        "lr_decay": den_cfg.lr_decay_rate,
        "decay_every": den_cfg.lr_decay_steps * den_cfg.batch_size,
        "weight_decay": den_cfg.l2_lambda,
        "loss": "sigmoid" if den_cfg.loss == "sigmoid_ce" else "softmax",
    }
    base.update(raw.get("baselines", {}) if sectioned else {})
    return den_cfg, BaselineConfig.from_mapping(base), raw


# ----------------------------------------------------------------------------- methods


def _den_method() -> Method:
    from den_jax import den

    return Method("den", den.learn_task)


def get_method(name: str) -> Method:
    return _den_method() if name == "den" else BASELINES[name]


def evaluate_task(net: dj.ExpandableNet, task_name: str, x, y) -> tuple[float, float]:
    """``(accuracy, mean one-vs-rest AUROC)`` of ``task_name`` on ``(x, y)``."""
    fwd = jax.jit(dj.apply, static_argnums=2)
    logits = np.asarray(apply_in_batches(lambda xb: fwd(net, xb, task_name), x, batch_size=2048))
    return metrics.accuracy(logits, y), metrics.mean_auroc(logits, y)


def _report_summary(report: dict) -> dict:
    """Flattens a learner report into the per-task summary fields (JSON-friendly).

    Baselines report ``units_added``/``split``/``pruned`` at the top level; DEN reports
    per phase (``phases.expansion.added``/``pruned`` and ``phases.split.split``, lists
    per layer), which are summed.
    """

    def count(v) -> int:
        if isinstance(v, bool):
            return 0
        if isinstance(v, (int, float, np.integer)):
            return int(v)
        if isinstance(v, (list, tuple)):
            return sum(count(x) for x in v)
        return 0

    phases = report.get("phases") if isinstance(report.get("phases"), dict) else {}
    fields = {"units_added": ("units_added", "added"), "split": ("split",), "pruned": ("pruned",)}
    out = {}
    for field, keys in fields.items():
        n = sum(count(report.get(k)) for k in keys if k in report)
        for ph in phases.values():
            if isinstance(ph, dict):
                n += sum(count(ph.get(k)) for k in keys if k in ph)
        out[field] = n
    loss = report.get("loss", report.get("final_task_loss"))
    phase = report.get("phase") or "+".join(k for k, v in phases.items() if v)
    return {"phase": phase, "loss": None if loss is None else float(loss), **out}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (jax.Array, np.ndarray)):
        return np.asarray(x).tolist()
    return x


def stl_reference_params(stream: TaskStream, hidden: Sequence[int]) -> int:
    """Parameters of the separate-networks baseline: one fresh network per task."""
    total = 0
    for info in stream.infos:
        shapes = [(info.input_dim, hidden[0]), (hidden[0],)]
        shapes += [(hidden[i - 1], hidden[i]) for i in range(1, len(hidden))]
        shapes += [(hidden[i],) for i in range(1, len(hidden))]
        shapes += [(hidden[-1], info.num_classes), (info.num_classes,)]
        total += int(sum(np.prod(s) for s in shapes))
    return total


def run_method(
    name: str,
    stream: TaskStream,
    *,
    cfg: Any,
    hidden: Sequence[int],
    seed: int,
    ckpt_dir: str,
    run_config: dict,
    resume: bool,
    eval_split: str = "test",
) -> dict:
    """Trains ``name`` on every task of ``stream``; checkpoints after each task.

    Returns:
      The method's results: accuracy/AUROC matrices, metrics, capacity, per-task reports.
    """
    method = get_method(name)
    key = jax.random.fold_in(jax.random.key(seed), METHODS.index(name))
    T = len(stream)
    shared_dim = stream.shared_input_dim
    acc = [[None] * T for _ in range(T)]
    auc = [[None] * T for _ in range(T)]
    reports: list[dict] = []
    sizes: list[dict] = []
    nets: dict[str, dj.ExpandableNet] = {}  # STL: one per task; else the latest under "net"
    state = None
    start = 0

    def fresh_net(k):
        return dj.init_network(k, hidden, shared_input_dim=shared_dim)

    done = checkpoint.completed_steps(ckpt_dir)
    if done and not resume:
        raise ValueError(
            f"{ckpt_dir!r} already holds checkpoints of tasks {done}; pass --resume to continue "
            "or choose a new --out"
        )
    if done:
        last = done[-1]
        saved = checkpoint.restore_meta(ckpt_dir, last)["extra"]
        checkpoint.check_config_compatible(saved["config"], run_config)
        extra_abs = (lambda m: ewc_state_abstract(_abstract_net(m))) if method.stateful else None
        if method.separate_networks:
            for i in range(last + 1):
                nets[stream.names[i]], _, _ = load_network(ckpt_dir, i)
        else:
            nets["net"], state, _ = load_network(ckpt_dir, last, extra_abstract=extra_abs)
            if method.stateful:
                state = jax.tree.map(jax.numpy.asarray, state)
        acc, auc = saved["accuracy_matrix"], saved["auroc_matrix"]
        reports, sizes = saved["reports"], saved["sizes"]
        start = last + 1
        tqdm.write(f"[{name}] resuming after task {last} ({stream.names[last]})")
    elif not method.separate_networks:
        nets["net"] = fresh_net(jax.random.fold_in(key, 10_000))

    bar = tqdm(range(start, T), desc=name, initial=start, total=T, leave=False)
    for i in bar:
        task = stream[i]
        t0 = time.time()
        net = (
            fresh_net(jax.random.fold_in(key, 10_000 + i))
            if method.separate_networks
            else nets["net"]
        )
        net = dj.add_task(
            net,
            jax.random.fold_in(key, 1000 + i),
            task.name,
            input_dim=task.input_dim,
            output_dim=task.num_classes,
            metadata=dict(task.metadata),
        )
        kwargs = {"state": state} if method.stateful else {}
        net, report = method.learn_task(
            net,
            jax.random.fold_in(key, i),
            task.name,
            (task.x_train, task.y_train),
            (task.x_valid, task.y_valid),
            cfg,
            **kwargs,
        )
        if method.stateful:
            state = report.pop("state")
        else:
            report.pop("state", None)
        nets[task.name if method.separate_networks else "net"] = net
        for j in range(i + 1):
            model = nets[stream.names[j]] if method.separate_networks else net
            x, y = _eval_split(stream, j, task if j == i else None, eval_split)
            acc[i][j], auc[i][j] = evaluate_task(model, stream.names[j], x, y)
        if method.separate_networks:
            params = sum(dj.count_params(n) for n in nets.values())
            units = [sum(n.widths[layer] for n in nets.values()) for layer in range(len(hidden))]
        else:
            params, units = dj.count_params(net), list(net.widths)
        seconds = time.time() - t0
        summary = {**_report_summary(report), "task": task.name, "seconds": seconds}
        reports.append({"summary": summary, "report": _jsonable(report)})
        sizes.append({"params": int(params), "units": units})
        save_network(
            ckpt_dir,
            i,
            net,
            extra_arrays=state if method.stateful else None,
            extra_meta={
                "config": run_config,
                "accuracy_matrix": acc,
                "auroc_matrix": auc,
                "reports": reports,
                "sizes": sizes,
            },
        )
        avg = float(np.mean(acc[i][: i + 1]))
        loss = summary["loss"]
        tqdm.write(
            f"[{name}] task {i + 1}/{T} {task.name}: phase={summary['phase']} "
            f"loss={'n/a' if loss is None else f'{loss:.4f}'} units_added={summary['units_added']} "
            f"split={summary['split']} pruned={summary['pruned']} acc={acc[i][i]:.4f} "
            f"avg_acc={avg:.4f} units={units} params={params} ({seconds:.1f}s)"
        )
    bar.close()
    return _method_results(name, stream, acc, auc, reports, sizes, nets, method, hidden)


def _eval_split(stream: TaskStream, j: int, task, split: str):
    """``(x, y)`` the accuracy matrix is measured on: task ``j``'s test or validation split."""
    if split == "valid":
        task = task if task is not None else stream[j]
        if len(task.y_valid) == 0:
            raise ValueError(f"--eval-split valid: task {task.name!r} has no validation rows")
        return task.x_valid, task.y_valid
    return (task.x_test, task.y_test) if task is not None else stream.test_data(j)


def _abstract_net(meta) -> dj.ExpandableNet:
    return dj.ExpandableNet(params=abstract_params(meta), meta=meta)


def _method_results(name, stream, acc, auc, reports, sizes, nets, method, hidden) -> dict:
    T = len(stream)
    final = [r for r in acc[T - 1]]
    if method.separate_networks:
        per_task = {n: dj.count_params(nets[n]) for n in stream.names}
        units_per_task = {n: dj.count_active_units(nets[n]) for n in stream.names}
    else:
        net = nets["net"]
        per_task = {n: dj.count_params(net, n) for n in stream.names}
        units_per_task = {n: dj.count_active_units(net, n) for n in stream.names}
    total = sizes[-1]["params"]
    stl = stl_reference_params(stream, hidden)
    return {
        "accuracy_matrix": acc,
        "auroc_matrix": auc,
        "avg_accuracy": metrics.average_accuracy(acc),
        "forgetting": metrics.forgetting(acc),
        "bwt": metrics.backward_transfer(acc),
        "auroc": float(np.mean(auc[T - 1])),
        "final_accuracy": final,
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


def load_task_model(out: str, method: str, task: int | str, *, step: int | None = None):
    """Loads the network that predicts ``task`` for ``method`` from a run's checkpoints.

    Args:
      out: the run's ``--out`` directory.
      method: a method name.
      task: task index or name.
      step: checkpoint (task index) to load; default: the latest (for STL: the task's own).

    Returns:
      ``(net, task_name)``; predict with ``dj.apply(net, x, task_name)``.
    """
    ckpt_dir = os.path.join(out, "checkpoints", method)
    steps = checkpoint.completed_steps(ckpt_dir)
    if not steps:
        raise ValueError(f"no checkpoints for method {method!r} in {ckpt_dir!r}")
    names = [t["name"] for t in checkpoint.restore_meta(ckpt_dir, steps[-1])["network"]["tasks"]]
    if method == "stl":
        idx = task if isinstance(task, int) else None
        if idx is None:  # STL checkpoints hold one task each: search them
            for s in steps:
                if checkpoint.restore_meta(ckpt_dir, s)["network"]["tasks"][0]["name"] == task:
                    idx = s
            if idx is None:
                raise ValueError(f"unknown task {task!r} in {ckpt_dir!r}")
        net, _, _ = load_network(ckpt_dir, idx)
        return net, net.task_names[0]
    net, _, _ = load_network(
        ckpt_dir,
        steps[-1] if step is None else step,
        extra_abstract=(lambda m: ewc_state_abstract(_abstract_net(m)))
        if method == "ewc"
        else None,
    )
    spec = net.task(task) if not isinstance(task, str) or task in net.task_names else None
    if spec is None:
        raise ValueError(f"unknown task {task!r}; the checkpoint has tasks {names}")
    return net, spec.name


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    methods = parse_methods(args.method)
    hidden = parse_hidden(args.hidden)
    if args.data_dir is not None and not args.download and not os.path.isdir(args.data_dir):
        raise ValueError(f"--data-dir {args.data_dir!r} is not a directory")
    stream = make_stream(
        args.dataset, args.tasks, data_dir=args.data_dir, download=args.download,
        max_train=args.max_train,
    )  # fmt: skip
    config_path = args.config or _default_config_path(args.dataset)
    den_cfg, base_cfg, _ = load_configs(config_path)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results: dict = {}
    if os.path.isfile(results_path):  # keep other methods' results (runs may be split)
        with open(results_path) as f:
            results = json.load(f)
    results.update(
        {
            "dataset": args.dataset,
            "tasks": stream.names,
            "task_spec": args.tasks,
            "hidden": hidden,
            "seed": args.seed,
            "eval_split": args.eval_split,
            "config_file": config_path,
            "den_config": dataclasses.asdict(den_cfg),
            "baseline_config": dataclasses.asdict(base_cfg),
            "methods": results.get("methods", {}),
        }
    )
    for name in methods:
        cfg = den_cfg if name == "den" else base_cfg
        run_config = {
            "dataset": args.dataset,
            "tasks": args.tasks,
            "task_names": stream.names,
            "hidden": hidden,
            "seed": args.seed,
            "max_train": args.max_train,
            "eval_split": args.eval_split,
            "method": name,
            "config": dataclasses.asdict(cfg),
        }
        t0 = time.time()
        res = run_method(
            name,
            stream,
            cfg=cfg,
            hidden=hidden,
            seed=args.seed,
            ckpt_dir=os.path.abspath(os.path.join(args.out, "checkpoints", name)),
            run_config=run_config,
            resume=args.resume,
            eval_split=args.eval_split,
        )
        res["wall_clock_seconds_this_invocation"] = time.time() - t0
        results["methods"][name] = res
        results[name] = {k: res[k] for k in res if k != "tasks_report"}
        with open(results_path, "w") as f:
            json.dump(_jsonable(results), f, indent=1)
        print(
            f"== {name}: avg_accuracy={res['avg_accuracy']:.4f} forgetting={res['forgetting']:.4f} "
            f"bwt={res['bwt']:.4f} auroc={res['auroc']:.4f} params={res['params']} "
            f"({100 * res['capacity_vs_stl']:.1f}% of STL)"
        )
    if not args.no_plots:
        done = {m: results["methods"][m] for m in results["methods"]}
        mats = {m: r["accuracy_matrix"] for m, r in done.items()}
        plots.plot_accuracy_matrices(
            mats, stream.names, os.path.join(args.out, "accuracy_matrix.png")
        )
        plots.plot_task_curves(mats, stream.names, os.path.join(args.out, "task_accuracy.png"))
        plots.plot_network_size(
            {m: r["params_after_task"] for m, r in done.items()},
            os.path.join(args.out, "network_size.png"),
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
