"""DER (Dynamically Expandable Representation, Yan et al. CVPR 2021) on class-incremental data.

Examples::

    python -m experiments.cifar100_der --preset smoke --out /tmp/der_smoke     # synthetic
    python -m experiments.cifar100_der --preset b0_10 --data-dir ~/data --out runs/b0_10
    python -m experiments.cifar100_der --preset b0_10 --out runs/b0_10 --resume
    python -m experiments.cifar100_der --dataset fashion_mnist --data-dir DIR \\
        --init-classes 2 --increment 2 --epochs 5 --out /tmp/fm

Writes ``OUT/results.json``, ``OUT/accuracy.png``, ``OUT/grouped.png`` and one
orbax checkpoint per completed step in ``OUT/checkpoints``. See docs/der.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from den_jax import checkpoint as ckpt
from den_jax.data import splits
from den_jax.der import augment, bias_correction, evaluate, memory, model, pruning, train

# PyCIL's DER schedule (models/der.py), batch 128, 2000 exemplars, weight alignment.
_PYCIL = dict(
    dataset="cifar100",
    num_classes=100,
    base_width=16,
    first_epochs=200,
    first_lr=0.1,
    first_milestones=[60, 120, 170],
    first_wd=5e-4,
    later_epochs=170,
    later_lr=0.1,
    later_milestones=[80, 120, 150],
    later_wd=2e-4,
    batch_size=128,
    memory=2000,
    memory_per_class=None,
    bias_correction="weight_align",
    aux_weight=1.0,
    order_seed=1993,
    seed=1993,
    prune=False,
    prune_lambda=0.5,
    s_max=400.0,
    method="der",
    train_per_class=None,
    test_per_class=None,
    ft_epochs=30,
    ft_temperature=5.0,
    compute_dtype="float32",
    epoch_loop="auto",
)

PRESETS = {
    "seed": dict(_PYCIL, init_classes=25, increment=25),
    "b0_10": dict(_PYCIL, init_classes=10, increment=10),
    "b0_5": dict(_PYCIL, init_classes=20, increment=20),
    "b50_10": dict(_PYCIL, init_classes=50, increment=10),
    "smoke": dict(
        _PYCIL,
        dataset="synthetic",
        num_classes=6,
        init_classes=2,
        increment=2,
        base_width=4,
        first_epochs=2,
        first_milestones=[1],
        later_epochs=2,
        later_milestones=[1],
        batch_size=16,
        memory=24,
        train_per_class=24,
        ft_epochs=2,
    ),
}

# Keys that may differ when resuming (they do not change what is computed).
RESUME_IGNORE = ("out", "resume", "data_dir", "crash_after_step", "download", "no_plots")
# Recorded in the config, but may differ when resuming: the scanned epoch and the step loop
# compute the same model (up to float reduction order).
RESUME_MAY_DIFFER = ("epoch_loop",)
# Values of keys added after a checkpoint was written (older configs lack them).
LEGACY_DEFAULTS = {"compute_dtype": "float32", "epoch_loop": "step"}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_DATASETS = ("cifar100", "fashion_mnist", "mnist", "synthetic")
_log = logging.getLogger("cifar100_der")


def resolve_epoch_loop(backend: str | None = None) -> str:
    """``--epoch-loop auto``: ``"scan"`` on accelerators, ``"step"`` on the CPU.

    XLA:CPU runs convolution gradients inside ``lax.scan`` about 20x slower than as
    separate calls (docs/benchmarks.md), so the CPU keeps one dispatch per batch.
    """
    return "step" if (backend or jax.default_backend()) == "cpu" else "scan"


def parse_args(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="b0_10", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--dataset", choices=_DATASETS, help="default: the preset's (cifar100)")
    p.add_argument("--synthetic", action="store_true", help="same as --dataset synthetic")
    p.add_argument("--data-dir", help="cifar-100-python.tar.gz or idx files live here")
    p.add_argument("--download", action="store_true", help="download CIFAR-100 into --data-dir")
    p.add_argument("--out", required=True, help="output folder (results, plots, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue after the last saved step")
    p.add_argument("--method", choices=("der", "finetune", "joint"))
    p.add_argument("--epochs", type=int, help="epochs of every step (first and later)")
    p.add_argument("--first-epochs", type=int)
    p.add_argument("--later-epochs", type=int)
    p.add_argument("--milestones", type=int, nargs="*", help="milestones of every step")
    p.add_argument("--first-milestones", type=int, nargs="*")
    p.add_argument("--later-milestones", type=int, nargs="*")
    p.add_argument("--lr", type=float, help="lr of every step")
    p.add_argument("--first-wd", type=float)
    p.add_argument("--later-wd", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--memory", type=int, help="total exemplars (fixed-total mode)")
    p.add_argument("--memory-per-class", type=int, help="fixed-per-class mode")
    p.add_argument("--bias-correction", choices=("weight_align", "balanced_ft", "none"))
    p.add_argument("--ft-epochs", type=int, help="epochs of balanced fine-tuning")
    p.add_argument("--prune", action="store_true", default=None, help="channel-mask pruning")
    p.add_argument("--prune-lambda", type=float, help="lambda_s of the sparsity loss")
    p.add_argument("--s-max", type=float)
    p.add_argument("--aux-weight", type=float, help="lambda_a (0 at the first step anyway)")
    p.add_argument("--init-classes", type=int)
    p.add_argument("--increment", type=int)
    p.add_argument("--num-classes", type=int, help="synthetic data only")
    p.add_argument("--base-width", type=int, help="ResNet-32 first-stage channels (16)")
    p.add_argument("--order-seed", type=int, help="class-order seed (1993); -1 = natural")
    p.add_argument("--seed", type=int, help="training seed")
    p.add_argument("--train-per-class", type=int, help="subsample the training set")
    p.add_argument("--test-per-class", type=int, help="subsample the test set")
    p.add_argument(
        "--compute-dtype",
        choices=sorted(COMPUTE_DTYPES),
        help="backbone compute dtype while training (float32; bfloat16 changes the numbers)",
    )
    p.add_argument(
        "--epoch-loop",
        choices=("auto", "scan", "step"),
        help="scan: one lax.scan dispatch per epoch; step: one dispatch per batch; auto "
        "(default): scan on accelerators, step on the CPU (XLA:CPU runs conv gradients inside "
        "a scan 20x slower)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--crash-after-step", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.preset not in PRESETS:
        raise ValueError(f"unknown preset {a.preset!r}; expected one of {sorted(PRESETS)}")
    cfg = dict(PRESETS[a.preset], preset=a.preset)
    if a.synthetic:
        cfg["dataset"] = "synthetic"
    simple = (
        "dataset method first_epochs later_epochs first_milestones later_milestones first_wd "
        "later_wd batch_size memory memory_per_class bias_correction ft_epochs prune "
        "prune_lambda s_max aux_weight init_classes increment num_classes base_width "
        "order_seed seed train_per_class test_per_class compute_dtype epoch_loop"
    ).split()
    for k in simple:
        v = getattr(a, k)
        if v is not None:
            cfg[k] = v
    if cfg["epoch_loop"] == "auto":
        cfg["epoch_loop"] = resolve_epoch_loop()
    if a.epochs is not None:
        cfg["first_epochs"] = cfg["later_epochs"] = a.epochs
    if a.milestones is not None:
        cfg["first_milestones"] = cfg["later_milestones"] = a.milestones
    if a.lr is not None:
        cfg["first_lr"] = cfg["later_lr"] = a.lr
    if cfg["dataset"] in ("fashion_mnist", "mnist"):
        cfg["num_classes"] = 10
    elif cfg["dataset"] == "cifar100":
        cfg["num_classes"] = 100
    for k in ("first_milestones", "later_milestones"):
        cfg[k] = [m for m in cfg[k] if m < cfg[k.split("_")[0] + "_epochs"]]
    cfg.update(
        out=a.out,
        resume=a.resume,
        data_dir=a.data_dir,
        download=a.download,
        no_plots=a.no_plots,
        crash_after_step=a.crash_after_step,
    )
    if cfg["dataset"] != "synthetic" and not cfg["data_dir"]:
        raise ValueError(
            f"--dataset {cfg['dataset']} needs --data-dir (or use --synthetic for a smoke run)"
        )
    return cfg


def check_resume_config(saved: dict, current: dict) -> None:
    """Refuses to resume with a config that computes something else.

    Keys added after a checkpoint was written take their old behaviour
    (``LEGACY_DEFAULTS``); ``RESUME_MAY_DIFFER`` keys may differ.

    Args:
      saved: config stored with the checkpoint.
      current: config of this run (without ``RESUME_IGNORE`` keys).

    Raises:
      ValueError: naming every differing key.
    """
    ckpt.check_config_compatible({**LEGACY_DEFAULTS, **saved}, current, ignore=RESUME_MAY_DIFFER)


def synthetic_data(num_classes: int, per_class: int, size: int, channels: int, seed: int):
    """Class colours + noise, uint8 ``[N, size, size, channels]`` (for smoke tests only).

    Each class is a flat random colour (robust to crops and flips) plus pixel noise.
    """
    rng = np.random.default_rng(seed)
    templates = rng.integers(30, 226, (num_classes, 1, 1, channels))

    def make(n):
        y = np.repeat(np.arange(num_classes), n)
        x = templates[y] + rng.normal(0, 40, (len(y), size, size, channels))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    return make(per_class), make(max(per_class // 3, 4))


def load_data(cfg: dict):
    """Returns ``((x_train, y_train), (x_test, y_test), mean, std)``, uint8 NHWC."""
    name = cfg["dataset"]
    if name == "synthetic":
        tr, te = synthetic_data(cfg["num_classes"], cfg["train_per_class"] or 24, 8, 3, 0)
        return tr, te, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    d = cfg["data_dir"]
    if not os.path.isdir(d) and not cfg["download"]:
        raise ValueError(f"--data-dir {d!r} is not a directory")
    if name == "cifar100":
        from den_jax.data import cifar100

        if cfg["download"]:
            cifar100.download_cifar100(d)
        tr, te = cifar100.load_cifar100(d, "train"), cifar100.load_cifar100(d, "test")
        return tr, te, augment.CIFAR100_MEAN, augment.CIFAR100_STD
    from den_jax.data.idx import load_idx_dataset

    tr, te = load_idx_dataset(d, "train"), load_idx_dataset(d, "test")
    tr, te = (tr[0][..., None], tr[1]), (te[0][..., None], te[1])
    if name == "mnist":
        return tr, te, augment.MNIST_MEAN, augment.MNIST_STD
    return tr, te, augment.FASHION_MNIST_MEAN, augment.FASHION_MNIST_STD


def subsample(x, y, per_class: int | None, seed: int):
    if not per_class:
        return x, y
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    )
    keep.sort()
    return x[keep], y[keep]


def save_plots(results: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = results["num_seen"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(seen, results["top1_curve"], "o-", label="top-1")
    ax.plot(seen, results["top5_curve"], "s--", label="top-5")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(
        f"{results['method']} {results['preset']}: avg {results['avg_incremental_accuracy']:.2f}"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=120)
    plt.close(fig)

    groups = sorted({k for g in results["grouped"] for k in g if k not in ("old", "new")})
    mat = np.full((len(results["grouped"]), len(groups)), np.nan)
    for i, g in enumerate(results["grouped"]):
        for j, k in enumerate(groups):
            mat[i, j] = g.get(k, np.nan)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(groups), 1 + 0.4 * len(mat)))
    im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(groups)), groups, rotation=90)
    ax.set_yticks(range(len(mat)), [f"step {i}" for i in range(len(mat))])
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "grouped.png"), dpi=120)
    plt.close(fig)


def _abstract(cfg, meta, in_channels, image_size):
    return {
        "state": model.abstract_state(
            base_width=cfg["base_width"],
            in_channels=in_channels,
            image_size=image_size,
            old_inner_widths=tuple(tuple(w) for w in meta["old_inner_widths"]),
            num_old=meta["num_old"],
            num_seen=meta["num_seen"],
            num_total=cfg["num_classes"],
            prune=cfg["prune"],
        )
    }


def _train_step_epochs(cfg, t, state, fns, tx, data_x, data_y, idx_pool, key, rng, mesh):
    """Trains one DER step for its epochs; ``fns = (step_fn, epoch_fn or None)``.

    With ``epoch_fn`` each epoch is one scanned dispatch plus the last partial
    batch (:func:`train.run_epoch_scanned`), else one dispatch per batch. The
    state is copied onto the mesh first: the train functions may donate it.
    """
    step_fn, epoch_fn = fns
    epochs = cfg["first_epochs"] if t == 0 else cfg["later_epochs"]
    opt_state = train.replicate(tx.init(model.trainable(state)), mesh)
    state = train.replicate(state, mesh, copy=True)
    s_max = cfg["s_max"] if cfg["prune"] else None
    step_bar = None
    if epoch_fn is not None:
        step_bar = tqdm(total=epochs, desc=f"step {t}", leave=False)
    for e in range(epochs):
        batches = [
            idx_pool[b]
            for b in train.epoch_batches(rng, len(idx_pool), cfg["batch_size"], mesh.size)
        ]
        epoch_key = jax.random.fold_in(key, e)
        if epoch_fn is not None:
            state, opt_state, m = train.run_epoch_scanned(
                epoch_fn,
                step_fn,
                state,
                opt_state,
                data_x,
                data_y,
                batches,
                epoch_key,
                mesh,
                s_max=s_max,
            )
            step_bar.update(1)
            step_bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{100 * m['acc']:.1f}")
        else:
            bar = tqdm(total=len(batches), desc=f"step {t} epoch {e + 1}/{epochs}", leave=False)

            def on_batch(m, bar=bar):
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{100 * m['acc']:.1f}")

            state, opt_state, m = train.run_epoch(
                step_fn,
                state,
                opt_state,
                data_x,
                data_y,
                batches,
                epoch_key,
                mesh,
                s_max=s_max,
                on_batch=on_batch,
            )
            bar.close()
        tqdm.write(
            f"step {t} epoch {e + 1}/{epochs}: loss {m['loss']:.4f} acc {100 * m['acc']:.2f}"
        )
    if step_bar is not None:
        step_bar.close()
    return state


def run(cfg: dict) -> dict:
    """Runs (or resumes) the whole class-incremental stream; returns the results dict."""
    out = cfg["out"]
    ckpt_dir = os.path.join(out, "checkpoints")
    os.makedirs(out, exist_ok=True)
    (xtr, ytr), (xte, yte), mean, std = load_data(cfg)
    xtr, ytr = subsample(xtr, ytr, cfg["train_per_class"], cfg["seed"])
    xte, yte = subsample(xte, yte, cfg["test_per_class"], cfg["seed"])
    num_classes = cfg["num_classes"]
    order = splits.class_order(num_classes, None if cfg["order_seed"] < 0 else cfg["order_seed"])
    ytr_r, yte_r = splits.remap_labels(ytr, order), splits.remap_labels(yte, order)
    sizes = splits.step_sizes(num_classes, cfg["init_classes"], cfg["increment"])
    bounds = splits.boundaries(sizes)
    in_channels, image_size = xtr.shape[-1], xtr.shape[1]
    mesh = train.make_mesh()
    if cfg["batch_size"] % mesh.size:
        raise ValueError(f"--batch-size {cfg['batch_size']} not divisible by {mesh.size} devices")
    data_x = train.replicate(jnp.asarray(xtr), mesh)
    data_y = train.replicate(jnp.asarray(ytr_r), mesh)
    predict = evaluate.make_predict(mean, std)
    cfg_saved = {k: v for k, v in cfg.items() if k not in RESUME_IGNORE}
    base_key = jax.random.key(cfg["seed"])

    results = dict(
        preset=cfg["preset"],
        method=cfg["method"],
        dataset=cfg["dataset"],
        class_order=[int(c) for c in order],
        steps=sizes,
        num_seen=[],
        top1_curve=[],
        top5_curve=[],
        grouped=[],
        acc_matrix=[],
        forgetting=[],
        params=[],
        seconds=[],
        devices=mesh.size,
        config=cfg_saved,
    )
    mem: dict = {}
    state, frozen, start = None, None, 0
    done = ckpt.latest_step(ckpt_dir)
    if done is not None and not cfg["resume"]:
        raise ValueError(f"{ckpt_dir} already holds step {done}: pass --resume or a new --out")
    if done is not None:
        meta = ckpt.restore_meta(ckpt_dir, done)
        check_resume_config(meta["config"], cfg_saved)
        abstract = _abstract(cfg, meta, in_channels, image_size)
        if meta["frozen_inner_widths"] is not None:
            abstract["frozen"] = model.abstract_state(
                base_width=cfg["base_width"],
                in_channels=in_channels,
                image_size=image_size,
                old_inner_widths=(tuple(meta["frozen_inner_widths"]),),
                num_old=0,
                num_seen=1,
                num_total=num_classes,
                prune=False,
            ).old[0]
        arrays, meta = ckpt.restore_step(ckpt_dir, done, abstract)
        state = jax.tree.map(jnp.asarray, arrays["state"])
        if "frozen" in arrays:
            frozen = (
                jax.tree.map(jnp.asarray, arrays["frozen"]),
                tuple(meta["frozen_inner_widths"]),
            )
        mem = memory.from_json(meta["memory"])
        results = meta["results"]
        start = done + 1
        if start >= len(sizes):
            _log.info("all %d steps already done", len(sizes))
        tqdm.write(f"resumed after step {done} from {ckpt_dir}")

    for t in range(start, len(sizes)):
        t0 = time.time()
        key = jax.random.fold_in(base_key, t)
        k_init, k_train, k_ft = jax.random.split(key, 3)
        rng = np.random.default_rng([cfg["seed"], t])
        if t == 0:
            state = model.init_state(
                k_init,
                base_width=cfg["base_width"],
                in_channels=in_channels,
                image_size=image_size,
                num_first=sizes[0],
                num_total=num_classes,
                prune=cfg["prune"] and cfg["method"] == "der",
            )
        elif cfg["method"] == "der":
            state = model.expand(state, k_init, sizes[t], *(frozen or (None, None)))
        else:
            state = model.add_classes(state, k_init, sizes[t])
        lo, hi = (0 if t == 0 else bounds[t - 1]), bounds[t]
        new_idx = splits.indices_in_range(ytr_r, lo, hi)
        if cfg["method"] == "joint":
            pool = splits.indices_in_range(ytr_r, 0, hi)
        elif cfg["method"] == "der":
            pool = np.concatenate([new_idx, memory.memory_indices(mem)]).astype(np.int32)
        else:
            pool = new_idx
        lr = cfg["first_lr"] if t == 0 else cfg["later_lr"]
        epochs = cfg["first_epochs"] if t == 0 else cfg["later_epochs"]
        steps_per_epoch = len(train.epoch_batches(rng, len(pool), cfg["batch_size"], mesh.size))
        tx = train.make_optimizer(
            lr=lr,
            milestones=cfg["first_milestones"] if t == 0 else cfg["later_milestones"],
            steps_per_epoch=steps_per_epoch,
            weight_decay=cfg["first_wd"] if t == 0 else cfg["later_wd"],
            decay_mask=train.decay_mask_for(model.trainable(state)),
        )
        aux_w = cfg["aux_weight"] if (t > 0 and cfg["method"] == "der") else 0.0
        fn_kw = dict(
            aux_weight=aux_w,
            mean=mean,
            std=std,
            prune_lambda=cfg["prune_lambda"],
            compute_dtype=COMPUTE_DTYPES[cfg["compute_dtype"]],
        )
        fns = (
            train.make_train_step(tx, **fn_kw),
            train.make_train_epoch(tx, **fn_kw) if cfg["epoch_loop"] == "scan" else None,
        )
        if epochs > 0:
            state = _train_step_epochs(
                cfg, t, state, fns, tx, data_x, data_y, pool, k_train, rng, mesh
            )
        gamma = None
        if cfg["method"] == "der" and t > 0:
            if cfg["bias_correction"] == "weight_align":
                state, gamma = bias_correction.weight_align(state)
            elif cfg["bias_correction"] == "balanced_ft":
                state = bias_correction.balanced_finetune(
                    state,
                    k_ft,
                    data_x,
                    data_y,
                    pool,
                    mean=mean,
                    std=std,
                    rng=rng,
                    epochs=cfg["ft_epochs"],
                    temperature=cfg["ft_temperature"],
                    batch_size=cfg["batch_size"],
                )
        frozen = None
        if cfg["method"] == "der" and state.mask_e is not None:
            frozen = pruning.materialise(state.new, state.mask_e)
        if cfg["method"] == "der":
            quota = memory.per_class_quota(cfg["memory"], hi, cfg["memory_per_class"])
            groups = {c: splits.indices_in_range(ytr_r, c, c + 1) for c in range(lo, hi)}
            feats = lambda idx, st=state: evaluate.predict_all(predict, st, xtr[idx])[1]
            mem = memory.update_memory(mem, groups, feats, quota)
        test_sel = splits.indices_in_range(yte_r, 0, hi)
        ev = evaluate.evaluate_state(
            predict, state, xte[test_sel], yte_r[test_sel], bounds[: t + 1]
        )
        if num_classes < 50:
            ev["grouped"] = evaluate.grouped_accuracy(
                np.argmax(evaluate.predict_all(predict, state, xte[test_sel])[0], 1),
                yte_r[test_sel],
                state.num_old,
                group=cfg["increment"],
            )
        counts = model.param_counts(state)
        if frozen is not None:
            pruned_bb = sum(x.size for x in jax.tree.leaves(frozen[0]["params"]))
            counts["all_unpruned"] = counts["all"]
            counts["all"] = counts["all"] - counts["backbones"][-1] + pruned_bb
            counts["backbones"][-1] = pruned_bb
            counts["pruned_inner_widths"] = list(frozen[1])
        results["num_seen"].append(hi)
        results["top1_curve"].append(ev["top1"])
        results["top5_curve"].append(ev["top5"])
        results["grouped"].append(ev["grouped"])
        results["acc_matrix"].append(ev["task_acc"])
        results["forgetting"].append(evaluate.forgetting(results["acc_matrix"]))
        results["params"].append(counts)
        results["avg_incremental_accuracy"] = evaluate.average_incremental_accuracy(
            results["top1_curve"]
        )
        if gamma is not None:
            results.setdefault("weight_align_gamma", []).append(gamma)
        results["seconds"].append(time.time() - t0)
        tqdm.write(
            f"step {t}: {hi} classes, top1 {ev['top1']:.2f} top5 {ev['top5']:.2f} "
            f"old {ev['grouped'].get('old', float('nan')):.2f} new {ev['grouped']['new']:.2f} "
            f"avg {results['avg_incremental_accuracy']:.2f} params {counts['all']} "
            f"({results['seconds'][-1]:.0f} s)"
        )
        meta = dict(
            config=cfg_saved,
            step=t,
            num_old=state.num_old,
            num_seen=state.num_seen,
            old_inner_widths=[list(w) for w in state.old_inner_widths],
            frozen_inner_widths=None if frozen is None else list(frozen[1]),
            class_order=results["class_order"],
            memory=memory.to_json(mem),
            rng={"seed": cfg["seed"], "next_step": t + 1, "derivation": "fold_in(key(seed), t)"},
            results=results,
        )
        arrays = {"state": jax.device_get(state)}
        if frozen is not None:
            arrays["frozen"] = frozen[0]
        ckpt.save_step(ckpt_dir, t, arrays, meta)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        if not cfg["no_plots"]:
            save_plots(results, out)
        if cfg["crash_after_step"] is not None and t == cfg["crash_after_step"]:
            raise SystemExit(f"simulated crash after step {t} (--crash-after-step)")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if not cfg["no_plots"]:
        save_plots(results, out)
    return results


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        cfg = parse_args(argv)
        results = run(cfg)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({k: results[k] for k in ("top1_curve", "avg_incremental_accuracy")}))


if __name__ == "__main__":
    main()
