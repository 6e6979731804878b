"""Digits (scikit-learn's bundled 8x8 digits): a network that starts at [8, 8] and grows
versus a fixed network of its final size trained from scratch for as many steps.

For each seed: stratified 60/20/20 train/validation/test split; the growing network
starts at ``[8, 8]`` and grows with a loss-plateau strategy on the validation loss
(capped at ``--max-units`` hidden units); the fixed network has the grown network's final
widths and trains from scratch for the same number of epochs, hence the same number of
optimizer steps. Both report test accuracy after the last epoch (no early stopping).

    python -m experiments.growth_digits --out /tmp/growth_digits            # full
    python -m experiments.growth_digits --quick --out /tmp/growth_digits_q  # smoke test

Writes ``growth_digits.json`` and PNGs (history, architecture, unit importance) to --out.
``--quick`` changes the defaults only (1 seed, 6 epochs, forced growth): flags given
explicitly keep their values. ``--seeds``, ``--epochs`` and ``--max-units`` must be >= 1;
bad flags give one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from den_jax import growth as g
from den_jax import plots
from den_jax.checkpoint import write_json_atomic
from den_jax.growth import importance
from experiments.growth_cli import Parser, int_at_least, pick, run_cli


def split(seed: int):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_rest, y_tr, y_rest = train_test_split(
        x, y, test_size=0.4, random_state=seed, stratify=y
    )
    x_val, x_te, y_val, y_te = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
    )
    return (x_tr, y_tr), (x_val, y_val), (x_te, y_te)


def strategy(max_units: int, quick: bool = False) -> g.LossPlateau:
    return g.LossPlateau(
        patience=1 if quick else 3,
        cooldown=1 if quick else 2,
        min_delta=10.0 if quick else 1e-3,  # quick: every epoch counts as a plateau
        growth_ratio=0.5,
        max_units_per_growth=16,
        monitor="val_loss",
        max_network_size=max_units,
    )


def run_seed(seed: int, epochs: int, max_units: int, out: str | None, quick: bool = False) -> dict:
    train, val, test = split(seed)
    cfg = g.TrainerConfig(learning_rate=3e-3, batch_size=32, seed=seed)
    t0 = time.time()
    grow = g.init_state(cfg, jax.random.PRNGKey(seed), 64, 10, (8, 8))
    grow = g.train(
        grow,
        cfg,
        *train,
        epochs,
        strategy=strategy(max_units, quick),
        enable_growth=True,
        validation=val,
    )
    t_grow = time.time() - t0
    final_widths = list(grow.net.widths)
    t0 = time.time()
    fixed = g.init_state(cfg, jax.random.PRNGKey(1000 + seed), 64, 10, final_widths)
    fixed = g.train(fixed, cfg, *train, epochs, validation=val)
    t_fixed = time.time() - t0
    small = g.init_state(cfg, jax.random.PRNGKey(2000 + seed), 64, 10, (8, 8))
    small = g.train(small, cfg, *train, epochs)
    result = {
        "seed": seed,
        "epochs": epochs,
        "final_widths": final_widths,
        "growth_events": len(grow.history.events),
        "grown": {"test": g.evaluate(grow, cfg, *test), "steps": grow.step, "seconds": t_grow},
        "fixed_final_size": {
            "test": g.evaluate(fixed, cfg, *test),
            "steps": fixed.step,
            "seconds": t_fixed,
        },
        "fixed_8_8": {"test": g.evaluate(small, cfg, *test), "steps": small.step},
        "params": {"grown": grow.history.epochs[-1]["params"], "start": 682},
        "summary": g.growth_summary(grow.history),
    }
    if out and seed == 0:
        plots.plot_history(
            grow.history,
            os.path.join(out, "growth_digits_history.png"),
            title="digits, start [8, 8]",
        )
        plots.plot_architecture(
            grow.history,
            os.path.join(out, "growth_digits_architecture.png"),
            title=f"digits: widths [8, 8] -> {final_widths}",
        )
        scores = importance.unit_importance(grow.net, "main", method="weight")
        plots.plot_layer_importance(
            scores,
            os.path.join(out, "growth_digits_importance.png"),
            title="digits: unit importance (|w_in| |w_out|)",
        )
    return result


def parse_args(argv=None):
    """Parses and checks the flags; ``--quick`` fills in only the flags not given."""
    p = Parser(prog="python -m experiments.growth_digits", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="defaults 1 seed x 6 epochs, forced growth (smoke)"
    )
    p.add_argument("--out", default=None, help="directory for JSON and PNGs")
    p.add_argument("--seeds", type=int_at_least(1), help="number of seeds (default 3)")
    p.add_argument("--epochs", type=int_at_least(1), help="epochs per run (default 80)")
    p.add_argument("--max-units", type=int_at_least(1), default=128)
    args = p.parse_args(argv)
    args.seeds = pick(args.seeds, args.quick, 1, 3)
    args.epochs = pick(args.epochs, args.quick, 6, 80)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    seeds, epochs = args.seeds, args.epochs
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    results = [run_seed(s, epochs, args.max_units, args.out, args.quick) for s in range(seeds)]
    acc = {
        k: [r[k]["test"]["accuracy"] for r in results]
        for k in ("grown", "fixed_final_size", "fixed_8_8")
    }
    report = {
        "config": {
            "seeds": list(range(seeds)),
            "epochs": epochs,
            "max_units": args.max_units,
            "batch_size": 32,
            "learning_rate": 3e-3,
            "optimizer": "adam",
        },
        "runs": results,
        "mean_test_accuracy": {k: float(np.mean(v)) for k, v in acc.items()},
        "mean_gap_points": float(100 * (np.mean(acc["fixed_final_size"]) - np.mean(acc["grown"]))),
        "steps_grown_vs_fixed": [
            (r["grown"]["steps"], r["fixed_final_size"]["steps"]) for r in results
        ],
    }
    if args.out:
        write_json_atomic(os.path.join(args.out, "growth_digits.json"), report)
    for r in results:
        print(
            f"seed {r['seed']}: widths {r['final_widths']}, grown acc "
            f"{r['grown']['test']['accuracy']:.4f}, fixed acc "
            f"{r['fixed_final_size']['test']['accuracy']:.4f}, [8,8] acc "
            f"{r['fixed_8_8']['test']['accuracy']:.4f}, steps {r['grown']['steps']}"
        )
    print(report["mean_test_accuracy"], "gap (points):", report["mean_gap_points"])
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
