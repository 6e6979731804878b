"""Regression on scikit-learn's bundled diabetes data with a network that grows.

Starts at one hidden layer of 4 ReLU units; an :class:`~den_jax.growth.Adaptive`
strategy (loss plateau on the validation loss or small gradients; every second growth
adds a layer) grows it up to ``--max-units`` hidden units. Half-way the run is saved,
restored from disk and continued (checkpoint and restart). Inputs and targets are
standardised with training statistics; 60/20/20 train/validation/test split.

    python -m experiments.growth_diabetes --out /tmp/growth_diabetes
    python -m experiments.growth_diabetes --quick --out /tmp/growth_diabetes_q

``--quick`` changes the defaults only (8 epochs, forced growth): flags given explicitly
keep their values. ``--epochs`` must be >= 2 (the run is saved half-way), ``--max-units``
>= 1 and ``--seed`` >= 0; bad flags give one ``error:`` line and exit code 2. The
half-way checkpoint goes to a new temporary folder (named in the JSON report).
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

from den_jax import growth as g
from den_jax import plots
from den_jax.checkpoint import write_json_atomic
from experiments.growth_cli import Parser, int_at_least, pick, run_cli


def data(seed: int):
    x, y = load_diabetes(return_X_y=True)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, random_state=seed)
    x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed)
    mx, sx, my, sy = x_tr.mean(0), x_tr.std(0), y_tr.mean(), y_tr.std()

    def norm(a, b):
        return ((a - mx) / sx).astype(np.float32), ((b - my) / sy).astype(np.float32)

    return norm(x_tr, y_tr), norm(x_val, y_val), norm(x_te, y_te)


def parse_args(argv=None):
    """Parses and checks the flags; ``--quick`` fills in only the flags not given."""
    p = Parser(prog="python -m experiments.growth_diabetes", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="default 8 epochs, forced growth (smoke test)"
    )
    p.add_argument("--out", default=None, help="directory for JSON and PNGs")
    p.add_argument("--epochs", type=int_at_least(2), help="epochs (default 200)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--max-units", type=int_at_least(1), default=64)
    args = p.parse_args(argv)
    args.epochs = pick(args.epochs, args.quick, 8, 200)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    epochs = args.epochs
    train, val, test = data(args.seed)
    cfg = g.TrainerConfig(problem="regression", learning_rate=3e-3, batch_size=32, seed=args.seed)
    strategy = g.Adaptive(
        loss=g.LossPlateau(
            patience=1 if args.quick else 8,
            cooldown=1 if args.quick else 4,
            min_delta=10.0 if args.quick else 1e-3,
            monitor="val_loss",
            max_units_per_growth=8,
        ),
        gradient=g.GradientMagnitude(threshold=1e-3, patience=5),
        max_network_size=args.max_units,
        depth_every=2,
        max_layers=3,
    )
    state = g.init_state(cfg, jax.random.PRNGKey(args.seed), 10, 1, (4,))
    ckpt_dir = tempfile.mkdtemp(prefix="growth_diabetes_")
    kwargs = dict(strategy=strategy, enable_growth=True, validation=val)
    state = g.train(state, cfg, *train, epochs // 2, **kwargs)
    g.save_checkpoint(ckpt_dir, state, cfg)
    restored = g.restore_checkpoint(ckpt_dir, cfg)  # restart from disk and continue
    state = g.train(restored, cfg, *train, epochs - epochs // 2, **kwargs)
    report = {
        "seed": args.seed,
        "epochs": epochs,
        "final_widths": list(state.net.widths),
        "growth_events": len(state.history.events),
        "test": g.evaluate(state, cfg, *test),
        "validation": g.evaluate(state, cfg, *val),
        "checkpoint_dir": ckpt_dir,
        "summary": g.growth_summary(state.history),
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        plots.plot_history(
            state.history, os.path.join(args.out, "growth_diabetes_history.png"), title="diabetes"
        )
        plots.plot_architecture(
            state.history,
            os.path.join(args.out, "growth_diabetes_architecture.png"),
            title="diabetes: hidden widths",
        )
        write_json_atomic(os.path.join(args.out, "growth_diabetes.json"), report)
    print(report["summary"])
    print("test:", report["test"])
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
