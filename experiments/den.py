"""Runs DEN and the baselines on a task stream; writes results.json, checkpoints and plots.

Usage::

    python -m experiments.den --dataset sklearn_hetero --method all --out runs/hetero
    python -m experiments.den --dataset permuted_mnist --tasks 10 --method all \
        --data-dir ../shared/data/mnist --out runs/pmnist
    python -m experiments.den --dataset npz:data.npz --tasks classes:0,1/2,3 --method den ...
    python -m experiments.den ... --resume        # continue a killed run
    python -m experiments.den ... --method den,finetune,l2,ewc --budget den \
        --lambda-grid l2=0.01,0.1,1,10 --lambda-grid ewc=10,100,1000,10000 --seeds 0,1,2

Per method, one orbax checkpoint per task in ``OUT/checkpoints/METHOD/`` (library:
:func:`den_jax.stream.run_stream`); ``OUT/results.json`` is rewritten after each method;
``OUT/run.json`` records what the folder holds (another run into it is refused).
``--budget den`` gives every method that takes a step budget (the baselines, ``dnn_l1``,
``mtl``) DEN's optimizer steps on each task (:mod:`den_jax.budget`); ``--lambda-grid``
chooses L2's / EWC's strength on the validation split (:mod:`den_jax.lambda_search`,
runs in ``OUT/lambda_search/METHOD/``); ``--seeds`` runs each seed into ``OUT/seed_K/``
and writes mean ± std per method to ``OUT/results.json`` and ``OUT/comparison.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from den_jax import budget, checkpoint, comparison, lambda_search, plots, runs, stream
from den_jax.baselines import BaselineConfig
from den_jax.data.tasks import make_stream, stream_fingerprint
from den_jax.den.config import DENConfig, config_from_dict

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.den", description=__doc__)
    p.add_argument("--dataset", required=True, help="permuted_mnist | sklearn_hetero | npz:PATH")
    p.add_argument("--tasks", help="permuted_mnist: N; sklearn_hetero: N or names; "
                   "npz: permute:N | classes:0,1/2,3")  # fmt: skip
    p.add_argument("--method", default="den", help=f"one of {', '.join(stream.METHODS)}, or all")
    p.add_argument("--config", help="YAML/JSON: DEN fields, or sections den:/baselines:")
    p.add_argument("--data-dir", help="directory with the MNIST idx files")
    p.add_argument("--download", action="store_true", help="download MNIST into --data-dir")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the last completed task")
    p.add_argument("--hidden", default="312,128", help="hidden widths, comma-separated")
    p.add_argument("--seed", type=int, help="seed of initialisation and shuffling "
                   "(default: the config's seed, 0)")  # fmt: skip
    p.add_argument("--max-train", type=int, help="cap on MNIST training images")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--eval-split", choices=stream.EVAL_SPLITS, default="test",
                   help="accuracy matrix on: test (report) or valid (model selection)")  # fmt: skip
    p.add_argument("--seeds", help="comma-separated seeds (e.g. 0,1,2): one run per seed in "
                   "OUT/seed_K, mean ± std per method in OUT/results.json")  # fmt: skip
    p.add_argument("--budget", default="fixed", choices=BUDGETS,
                   help="fixed: each config's steps; den: the baselines, dnn_l1 and mtl get "
                   "DEN's optimizer steps on each task (DEN runs first)")  # fmt: skip
    p.add_argument("--lambda-grid", action="append", default=[], metavar="METHOD=V1,V2,...",
                   help="choose l2's / ewc's lambda on the validation split from these "
                   "values (repeat per method; a bare METHOD takes its default grid), then run "
                   "the test split with the best")  # fmt: skip
    p.add_argument("--search-tasks", type=int, metavar="N",
                   help="run the --lambda-grid search on the first N tasks only "
                   "(default: every task)")  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


BUDGETS = ("fixed", "den")


def parse_seeds(spec: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct non-negative integers)."""
    parts = [s.strip() for s in spec.split(",")]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(
            f"bad --seeds {spec!r}: expected distinct non-negative integers, e.g. 0,1,2"
        )
    return [int(p) for p in parts]


def parse_methods(spec: str) -> list[str]:
    """``"all"`` or comma-separated method names (order kept, no repeats)."""
    names, known = [s.strip() for s in spec.split(",")], list(stream.METHODS)
    names = known if spec == "all" else names
    if not names or len(set(names)) != len(names) or set(names) - set(known):
        raise ValueError(f"bad --method {spec!r}: expected 'all' or names from {known}")
    return names


def parse_hidden(spec: str) -> list[int]:
    widths = [int(s) for s in spec.split(",") if s.strip().isdigit()]
    if len(widths) != len(spec.split(",")) or min(widths) < 1:
        raise ValueError(f"bad --hidden {spec!r}: expected comma-separated positive integers")
    return widths


def read_mapping(path: str) -> dict:
    """The mapping in a YAML or JSON file; errors name the file and what was wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except OSError as err:
        raise ValueError(f"config file {path!r} cannot be read: {err.strerror}") from err
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path!r} is not valid JSON/YAML: {err}") from err
    if not isinstance(raw, (dict, type(None))):
        raise ValueError(f"config file {path!r} must hold a mapping, got {type(raw).__name__}")
    return raw or {}


def load_configs(path: str | None) -> tuple[DENConfig, BaselineConfig]:
    """Reads ``--config`` (flat DEN fields, or sections ``den:`` and ``baselines:``).

    Baselines default to DEN's budget: ``steps_task1`` steps per task, the same batch size,
    learning rate, decay and ``l2_lambda`` weight decay.
    """
    raw = {} if path is None else read_mapping(path)
    sectioned = "den" in raw or "baselines" in raw
    extra = sorted(set(raw) - {"den", "baselines"}) if sectioned else []
    if extra:
        raise ValueError(
            f"config file {path!r}: unknown section(s) {extra}; expected den:, baselines:"
        )
    den_cfg = config_from_dict((raw.get("den") if sectioned else raw) or {})
    base = {
        "steps": den_cfg.steps_task1,
        "batch_size": den_cfg.batch_size,
        "learning_rate": den_cfg.learning_rate,
        "lr_decay": den_cfg.lr_decay_rate,
        "decay_every": den_cfg.lr_decay_steps * den_cfg.batch_size,
        "weight_decay": den_cfg.l2_lambda,
        "loss": "sigmoid" if den_cfg.loss == "sigmoid_ce" else "softmax",
        **((raw.get("baselines") or {}) if sectioned else {}),
    }
    return den_cfg, BaselineConfig.from_mapping(base)


def run(args: argparse.Namespace) -> dict:
    """One run into ``args.out``, or with ``--seeds`` one per seed and their mean ± std."""
    if getattr(args, "seeds", None):
        return run_seeds(args)
    return run_one(args)


def run_seeds(args: argparse.Namespace) -> dict:
    """Runs every seed of ``--seeds`` into ``OUT/seed_K``; aggregates into ``OUT``.

    The lambda grid (``--lambda-grid``) is searched on the first seed's validation split;
    the other seeds use the values it chose.
    """
    if args.seed is not None:
        raise ValueError("give either --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds)
    parse_methods(args.method)  # fail before any run
    lambda_search.parse_lambda_grid(args.lambda_grid)
    top_info = {"seeds": seeds, "dataset": args.dataset, "task_spec": args.tasks,
                "hidden": parse_hidden(args.hidden), "eval_split": args.eval_split}  # fmt: skip
    top = runs.open_run_folder(args.out, top_info, resume=args.resume)
    per_seed, chosen = {}, {}
    for k in seeds:
        sub = copy.copy(args)
        sub.seeds, sub.seed, sub.out = None, k, os.path.join(args.out, f"seed_{k}")
        sub.fixed_lambda = dict(chosen)
        if chosen:
            sub.lambda_grid = []
        res = run_one(sub)
        per_seed[k] = res["methods"]
        if not chosen:
            chosen = {m: s["best"] for m, s in res.get("lambda_search", {}).items()}
    agg = comparison.aggregate_seeds(per_seed)
    top.update({**top_info, "folders": {str(k): f"seed_{k}" for k in seeds},
                "lambda": chosen, "aggregate": agg})  # fmt: skip
    top["methods"] = {
        m: {key: v for key, v in row.items() if isinstance(v, dict) and "mean" in v}
        for m, row in agg.items()
    }
    checkpoint.write_json_atomic(os.path.join(args.out, "results.json"), top)
    title = f"{args.dataset}, seeds {','.join(map(str, seeds))}"
    with open(os.path.join(args.out, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(comparison.markdown_seed_table(agg, title=title))
    for m, row in agg.items():
        acc, fg = row.get("avg_accuracy"), row.get("forgetting")
        if acc and fg:
            print(f"== {m} over {len(row['seeds'])} seeds: avg_accuracy={acc['mean']:.4f} ± "
                  f"{acc['std']:.4f} forgetting={fg['mean']:.4f} ± {fg['std']:.4f}")  # fmt: skip
    return top


def _den_steps(results: dict) -> list | None:
    """DEN's per-task optimizer steps from this folder's results (``None``: no DEN run)."""
    den = results.get("methods", {}).get("den")
    if den is None:
        return None
    steps = den.get("steps_per_task") or budget.steps_spent(den)
    return None if any(s is None for s in steps) else steps


def run_one(args: argparse.Namespace) -> dict:
    """One run (one seed) of the methods of ``args.method`` into ``args.out``."""
    methods, hidden = parse_methods(args.method), parse_hidden(args.hidden)
    grids = lambda_search.parse_lambda_grid(args.lambda_grid)
    fixed_lambda = dict(getattr(args, "fixed_lambda", None) or {})
    if args.budget == "den" and "den" in methods:  # DEN first: its steps are the budget
        methods = ["den"] + [m for m in methods if m != "den"]
    if args.data_dir is not None and not args.download and not os.path.isdir(args.data_dir):
        raise ValueError(f"--data-dir {args.data_dir!r} is not a directory")
    tasks = make_stream(args.dataset, args.tasks, data_dir=args.data_dir,
                        download=args.download, max_train=args.max_train)  # fmt: skip
    config_path = args.config
    if config_path is None:
        key = "npz" if args.dataset.startswith("npz:") else args.dataset
        default = os.path.join(CONFIG_DIR, f"den_{key}.yaml")
        config_path = default if os.path.isfile(default) else None
    den_cfg, base_cfg = load_configs(config_path)
    seed = den_cfg.seed if args.seed is None else args.seed  # one seed: --seed wins
    den_cfg = dataclasses.replace(den_cfg, seed=seed)
    run_info = {
        "dataset": args.dataset, "task_spec": args.tasks, "tasks": tasks.names,
        "data_sha256": stream_fingerprint(tasks), "hidden": hidden, "seed": seed,
        "max_train": args.max_train, "eval_split": args.eval_split,
        "den_config": dataclasses.asdict(den_cfg), "baseline_config": dataclasses.asdict(base_cfg),
    }  # fmt: skip
    results = runs.open_run_folder(args.out, run_info, resume=args.resume)
    results.update({**run_info, "config_file": config_path})
    results.setdefault("methods", {})
    results_path = os.path.join(args.out, "results.json")
    unknown = sorted(set(grids) - set(methods))
    if unknown:
        raise ValueError(f"--lambda-grid names {unknown}, which --method does not run")
    search_n = getattr(args, "search_tasks", None)
    if search_n is not None and not 2 <= search_n <= len(tasks):
        raise ValueError(
            f"bad --search-tasks {search_n}: expected 2..{len(tasks)} (the stream's tasks)"
        )
    search_tasks = tasks if search_n is None or not grids else tasks[:search_n]
    for name in methods:
        cfg = den_cfg if stream.get_method(name).uses_den_config else base_cfg
        steps = None
        if args.budget == "den" and budget.takes_budget(name, cfg):
            steps = _den_steps(results)
            if steps is None:
                raise ValueError(
                    f"--budget den: method {name!r} needs DEN's per-task steps; add den to "
                    f"--method or run den into {args.out!r} first"
                )
            results["den_steps_per_task"] = steps
        run_config = {**run_info, "method": name, "config": dataclasses.asdict(cfg)}
        for k in ("den_config", "baseline_config", "data_sha256"):
            run_config.pop(k)
        if steps is not None:
            run_config["steps_per_task"] = steps
        common = dict(hidden=hidden, seed=seed, resume=args.resume, steps_per_task=steps)
        if name in grids:
            n = len(search_tasks)
            search = lambda_search.select_lambda(
                name, search_tasks, cfg, grids[name],
                run_config={**run_config, "tasks": tasks.names[:n]},
                checkpoint_root=os.path.abspath(os.path.join(args.out, "lambda_search", name)),
                callbacks=[lambda e, n=n: _log_task(e, n, "valid")],
                **{**common, "steps_per_task": None if steps is None else steps[:n]},
            )  # fmt: skip
            search["tasks"] = tasks.names[:n]
            results.setdefault("lambda_search", {})[name] = search
            checkpoint.write_json_atomic(
                os.path.join(args.out, "lambda_search.json"), results["lambda_search"]
            )
            fixed_lambda[name] = search["best"]
            print(f"== {name}: lambda {search['best']:g} chosen on validation from "
                  f"{dict(zip(search['grid'], search['scores']))}")  # fmt: skip
        if name in fixed_lambda:
            cfg = lambda_search.with_lambda(name, cfg, fixed_lambda[name])
            run_config["config"] = dataclasses.asdict(cfg)
            results.setdefault("lambda", {})[name] = fixed_lambda[name]
        bar = tqdm(total=len(tasks), desc=name, leave=False)
        res = stream.run_stream(
            name, tasks, cfg, eval_split=args.eval_split, run_config=run_config,
            checkpoint_dir=os.path.abspath(os.path.join(args.out, "checkpoints", name)),
            callbacks=[lambda e, bar=bar: (bar.update(1), _log_task(e, len(tasks)))], **common,
        )  # fmt: skip
        bar.close()
        results["methods"][name] = res
        results[name] = {k: v for k, v in res.items() if k != "tasks_report"}
        checkpoint.write_json_atomic(results_path, results)
        print(
            f"== {name}: avg_accuracy={res['avg_accuracy']:.4f} forgetting={res['forgetting']:.4f}"
            f" bwt={res['bwt']:.4f} auroc={res['auroc']:.4f} params={res['params']} "
            f"({100 * res['capacity_vs_stl']:.1f}% of STL) steps={sum(res['steps_per_task'])}"
        )
    if not args.no_plots:
        done = results["methods"]
        mats = {m: r["accuracy_matrix"] for m, r in done.items()}
        path = lambda name: os.path.join(args.out, name)  # noqa: E731
        plots.plot_accuracy_matrices(mats, tasks.names, path("accuracy_matrix.png"))
        plots.plot_task_curves(mats, tasks.names, path("task_accuracy.png"))
        plots.plot_network_size({m: r["params_after_task"] for m, r in done.items()},
                                path("network_size.png"))  # fmt: skip
    # The architecture-methods table (growth, forgetting, forward transfer vs STL).
    results["comparison"] = comparison.compare(results["methods"])
    with open(os.path.join(args.out, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(comparison.markdown_table(results["comparison"], title=args.dataset))
    checkpoint.write_json_atomic(results_path, results)
    if not args.no_plots:
        plots.plot_accuracy_vs_params(results["methods"], os.path.join(args.out,
                                      "accuracy_vs_params.png"))  # fmt: skip
    return results


def _log_task(e: stream.TaskEnd, num_tasks: int, split: str = "") -> None:
    s = e.summary
    loss = "n/a" if s["loss"] is None else f"{s['loss']:.4f}"
    tag = f"{e.method} ({split})" if split else e.method
    tqdm.write(
        f"[{tag}] task {e.index + 1}/{num_tasks} {e.name}: phase={s['phase']} loss={loss} "
        f"units_added={s['units_added']} split={s['split']} pruned={s['pruned']} "
        f"acc={e.accuracy_row[-1]:.4f} avg_acc={sum(e.accuracy_row) / len(e.accuracy_row):.4f} "
        f"units={e.units} params={e.params} ({s['seconds']:.1f}s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING, format=fmt, force=True)  # orbax adds absl's
    args = parse_args(argv)
    try:
        with logging_redirect_tqdm():
            run(args)
    except (ValueError, OSError, FloatingPointError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
