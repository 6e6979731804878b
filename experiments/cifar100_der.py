"""DER (Dynamically Expandable Representation, Yan et al. CVPR 2021) on class-incremental data.

Examples::

    python -m experiments.cifar100_der --preset smoke --out /tmp/der_smoke     # synthetic
    python -m experiments.cifar100_der --preset b0_10 --data-dir ~/data --out runs/b0_10
    python -m experiments.cifar100_der --preset b0_10 --out runs/b0_10 --resume
    python -m experiments.cifar100_der --dataset fashion_mnist --data-dir DIR \\
        --init-classes 2 --increment 2 --epochs 5 --out /tmp/fm

Writes ``OUT/results.json``, ``OUT/accuracy.png``, ``OUT/grouped.png`` and one
orbax checkpoint per completed step in ``OUT/checkpoints``. The protocol itself is
``den_jax.der.protocol`` (see docs/der.md); this script parses, loads and plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from den_jax.data import images
from den_jax.der import config, protocol

# Flags whose value overrides the DERConfig field of the same name.
_FIELDS = (
    "dataset method first_epochs later_epochs first_milestones later_milestones first_wd "
    "later_wd batch_size memory memory_per_class bias_correction ft_epochs prune "
    "prune_lambda s_max aux_weight init_classes increment num_classes base_width "
    "order_seed seed train_per_class test_per_class compute_dtype epoch_loop "
    "mask_grad_scale mask_init val_per_class"
).split()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one "error: ..." line and exit 2, from main()
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = p.add_argument
    add("--preset", default="b0_10", help=f"one of {sorted(config.PRESETS)}")
    add("--dataset", choices=images.DATASETS, help="default: the preset's (cifar100)")
    add("--synthetic", action="store_true", help="same as --dataset synthetic")
    add("--data-dir", help="cifar-100-python.tar.gz or idx files live here")
    add("--download", action="store_true", help="download CIFAR-100 into --data-dir")
    add("--out", required=True, help="output folder (results, plots, checkpoints)")
    add("--resume", action="store_true", help="continue after the last saved step")
    add("--method", choices=config.METHODS)
    add("--epochs", type=int, help="epochs of every step (first and later)")
    add("--first-epochs", type=int)
    add("--later-epochs", type=int)
    add("--milestones", type=int, nargs="*", help="milestones of every step")
    add("--first-milestones", type=int, nargs="*")
    add("--later-milestones", type=int, nargs="*")
    add("--lr", type=float, help="lr of every step")
    add("--first-wd", type=float)
    add("--later-wd", type=float)
    add("--batch-size", type=int)
    add("--memory", type=int, help="total exemplars (fixed-total mode)")
    add("--memory-per-class", type=int, help="fixed-per-class mode")
    add("--bias-correction", choices=config.BIAS_CORRECTIONS)
    add("--ft-epochs", type=int, help="epochs of balanced fine-tuning")
    add("--prune", action="store_true", default=None, help="channel-mask pruning")
    add("--prune-lambda", type=float, help="lambda_s of the sparsity loss")
    add("--s-max", type=float)
    add("--mask-grad-scale", type=float, help="embedding gradient factor (HAT: s_max)")
    add("--mask-init", type=float, help="initial mask embedding e")
    add(
        "--val-per-class",
        type=int,
        help="hold out this many training images per class and evaluate on them (tuning)",
    )
    add("--aux-weight", type=float, help="lambda_a (0 at the first step anyway)")
    add("--init-classes", type=int)
    add("--increment", type=int)
    add("--num-classes", type=int, help="synthetic data only")
    add("--base-width", type=int, help="ResNet-32 first-stage channels (16)")
    add("--order-seed", type=int, help="class-order seed (1993); -1 = natural")
    add("--seed", type=int, help="training seed")
    add("--train-per-class", type=int, help="subsample the training set")
    add("--test-per-class", type=int, help="subsample the test set")
    add(
        "--compute-dtype",
        choices=sorted(config.COMPUTE_DTYPES),
        help="backbone compute dtype while training (float32; bfloat16 changes the numbers)",
    )
    add(
        "--epoch-loop",
        choices=config.EPOCH_LOOPS,
        help="scan: one lax.scan dispatch per epoch; step: one dispatch per batch; auto "
        "(default): scan on accelerators, step on the CPU (XLA:CPU runs conv gradients inside "
        "a scan 20x slower)",
    )
    add("--no-plots", action="store_true")
    add("--debug", action="store_true", help="show tracebacks")
    add("--crash-after-step", type=int, help=argparse.SUPPRESS)
    return p


def parse_args(argv=None) -> tuple[config.DERConfig, argparse.Namespace]:
    """Returns the run's config (preset + overrides) and the parsed options."""
    a = build_parser().parse_args(argv)
    over = {k: getattr(a, k) for k in (*_FIELDS, "epochs", "milestones", "lr")}
    if a.synthetic:
        over["dataset"] = "synthetic"
    cfg = config.build_config(a.preset, over)
    if cfg.dataset != "synthetic" and not a.data_dir:
        raise ValueError(
            f"--dataset {cfg.dataset} needs --data-dir (or use --synthetic for a smoke run)"
        )
    return cfg, a


def save_plots(results: dict, out: str) -> None:
    """``accuracy.png`` (top-1/top-5 curves) and ``grouped.png`` (accuracy per group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = results["num_seen"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(seen, results["top1_curve"], "o-", label="top-1")
    ax.plot(seen, results["top5_curve"], "s--", label="top-5")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("accuracy (%)")
    avg = results["avg_incremental_accuracy"]
    ax.set_title(f"{results['method']} {results['preset']}: avg {avg:.2f}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=120)
    plt.close(fig)

    groups = sorted({k for g in results["grouped"] for k in g if k not in ("old", "new")})
    mat = np.asarray([[g.get(k, np.nan) for k in groups] for g in results["grouped"]], float)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(groups), 1 + 0.4 * len(mat)))
    im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(groups)), groups, rotation=90)
    ax.set_yticks(range(len(mat)), [f"step {i}" for i in range(len(mat))])
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "grouped.png"), dpi=120)
    plt.close(fig)


def validation_split(train, per_class: int, seed: int):
    """Holds out ``per_class`` training images of every class: ``(train', validation)``.

    The test split is never touched; the held-out images are drawn with
    ``default_rng([seed, 7])`` and removed from the training set.
    """
    x, y = np.asarray(train[0]), np.asarray(train[1])
    rng = np.random.default_rng([seed, 7])
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) <= per_class:
            raise ValueError(
                f"class {c} has {len(idx)} training images, cannot hold out {per_class}"
            )
        val[rng.choice(idx, per_class, replace=False)] = True
    return (x[~val], y[~val]), (x[val], y[val])


def run(cfg: config.DERConfig, a: argparse.Namespace) -> dict:
    """Loads the data and runs (or resumes) the protocol; plots after every step."""
    tr, te, mean, std = images.load_data(
        cfg.dataset,
        a.data_dir,
        download=a.download,
        num_classes=cfg.num_classes,
        synthetic_per_class=cfg.train_per_class or 24,
    )
    if cfg.val_per_class is not None:
        tr, te = validation_split(tr, cfg.val_per_class, cfg.seed)
    data = protocol.make_stream(cfg, tr, te, mean=mean, std=std)

    def on_step(t: int, results: dict) -> None:
        if not a.no_plots:
            save_plots(results, a.out)
        if a.crash_after_step is not None and t == a.crash_after_step:
            raise SystemExit(f"simulated crash after step {t} (--crash-after-step)")

    results = protocol.run_protocol(
        cfg, data, a.out, resume=a.resume, on_step=on_step, progress=True
    )
    if not a.no_plots:
        save_plots(results, a.out)
    return results


def main(argv=None) -> None:
    # force: importing orbax has already given the root logger absl's handler.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    for name in ("absl", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        with logging_redirect_tqdm():
            cfg, a = parse_args(argv)
            results = run(cfg, a)
    except (ValueError, OSError, FloatingPointError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: results[k] for k in ("top1_curve", "avg_incremental_accuracy")}))


if __name__ == "__main__":
    main()
