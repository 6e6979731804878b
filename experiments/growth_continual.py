"""Continual learning on a data stream with a growing network (digits).

The digits training data arrives in ``--chunks`` chunks. The network (start ``[8, 8]``)
learns the first chunk, then keeps learning each new chunk with
``continual_learning`` on the same 10-class head, growing when the validation loss
plateaus. A last stage adds a new task with a different output size ("parity": even or
odd, 2 outputs) on all the data: a new head via ``add_task``; units grown from then on
are invisible to the first task. After every stage the test accuracy of every task is
logged.

    python -m experiments.growth_continual --out /tmp/growth_continual
    python -m experiments.growth_continual --quick --out /tmp/growth_continual_q

``--quick`` changes the defaults only (2 chunks, 2 epochs per stage): flags given
explicitly keep their values. ``--epochs`` and ``--chunks`` must be >= 1 (and every chunk
must hold a batch), ``--seed`` >= 0; bad flags give one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from den_jax import growth as g
from den_jax import plots
from den_jax.checkpoint import write_json_atomic
from experiments.growth_cli import Parser, int_at_least, pick, run_cli


def parse_args(argv=None):
    """Parses and checks the flags; ``--quick`` fills in only the flags not given."""
    p = Parser(prog="python -m experiments.growth_continual", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="defaults 2 chunks, 2 epochs per stage (smoke test)"
    )
    p.add_argument("--out", default=None, help="directory for JSON and PNGs")
    p.add_argument("--epochs", type=int_at_least(1), help="epochs per stage (default 30)")
    p.add_argument("--chunks", type=int_at_least(1), help="chunks of the stream (default 3)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    args = p.parse_args(argv)
    args.epochs = pick(args.epochs, args.quick, 2, 30)
    args.chunks = pick(args.chunks, args.quick, 2, 3)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    epochs, n_chunks = args.epochs, args.chunks
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.3, random_state=args.seed, stratify=y
    )
    cfg = g.TrainerConfig(learning_rate=3e-3, batch_size=32, seed=args.seed)
    if n_chunks > len(x_tr) // cfg.batch_size:
        raise ValueError(
            f"--chunks {n_chunks} is too many: {len(x_tr)} training samples allow at most "
            f"{len(x_tr) // cfg.batch_size} chunks of one batch ({cfg.batch_size}) or more"
        )
    strategy = g.LossPlateau(
        patience=1 if args.quick else 3,
        cooldown=1 if args.quick else 2,
        min_delta=10.0 if args.quick else 1e-3,
        max_units_per_growth=16,
        max_network_size=160,
    )
    chunks = np.array_split(np.random.default_rng(args.seed).permutation(len(x_tr)), n_chunks)
    state = g.init_state(cfg, jax.random.PRNGKey(args.seed), 64, 10, (8, 8))
    stages = []
    for i, idx in enumerate(chunks):
        kwargs = dict(strategy=strategy, enable_growth=True)
        if i == 0:
            state = g.train(state, cfg, x_tr[idx], y_tr[idx], epochs, **kwargs)
        else:
            state = g.continual_learning(state, cfg, x_tr[idx], y_tr[idx], epochs, **kwargs)
        stages.append(
            {
                "stage": f"chunk {i}",
                "widths": list(state.net.widths),
                "digits_test": g.evaluate(state, cfg, x_te, y_te, task="main"),
            }
        )
    state = g.continual_learning(
        state,
        cfg,
        x_tr,
        y_tr % 2,
        epochs,
        new_task="parity",
        strategy=strategy,
        enable_growth=True,
    )
    stages.append(
        {
            "stage": "new task: parity",
            "widths": list(state.net.widths),
            "digits_test": g.evaluate(state, cfg, x_te, y_te, task="main"),
            "parity_test": g.evaluate(state, cfg, x_te, y_te % 2, task="parity"),
        }
    )
    report = {
        "seed": args.seed,
        "epochs_per_stage": epochs,
        "stages": stages,
        "summary": g.growth_summary(state.history),
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        plots.plot_history(
            state.history,
            os.path.join(args.out, "growth_continual_history.png"),
            title=f"digits stream ({n_chunks} chunks, then parity task)",
        )
        write_json_atomic(os.path.join(args.out, "growth_continual.json"), report)
    for s in stages:
        extra = f", parity acc {s['parity_test']['accuracy']:.4f}" if "parity_test" in s else ""
        print(
            f"{s['stage']}: widths {s['widths']}, digits acc "
            f"{s['digits_test']['accuracy']:.4f}{extra}"
        )
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
