"""CPU benchmark: Permuted-MNIST MLP train steps (den_jax vs plain PyTorch) and DEN per task.

Measures, on this machine:
  * optimizer steps per second of the 784-312-128-10 MLP with Adam at batch 256, with
    ``den_jax.training.train_steps`` (one compiled scan; compile time excluded and
    reported separately) and with a plain PyTorch loop (``torch.set_num_threads`` = the
    number of cores) on the same data;
  * seconds per task of ``den_jax.den.learn_task`` for the first ``--den-tasks`` tasks of
    Permuted MNIST with the given DEN config (official step counts by default);
  * selective retraining (Alg. 2) two ways at the widths and selection of a measured task
    (``--selective-widths``, ``--selective-units``): masked dense steps (every unit in the
    forward pass, updates masked after Adam, as ``den_jax.den`` trains) against compact
    steps (the selected rows and columns gathered into a smaller MLP, trained, scattered
    back, as the official code builds a compact network). Both compute the same function:
    unselected units have no non-zero path to the task's outputs.

Not a test: run by hand; writes ``benchmarks/results/den_cpu.json``::

    python -m benchmarks.den_cpu --data-dir ../shared/data/mnist --den-tasks 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import den_jax as dj
from den_jax.data.tasks import permuted_mnist
from den_jax.training import train_steps


def bench_jax(x, y, steps: int, batch: int) -> dict:
    net = dj.init_network(jax.random.key(0), [312, 128], shared_input_dim=784)
    net = dj.add_task(net, jax.random.key(1), "t0", input_dim=784, output_dim=10)
    meta = net.meta
    tx = optax.adam(1e-3)

    def loss_fn(p, xb, yb):
        logits = dj.apply(dj.ExpandableNet(params=p, meta=meta), xb, "t0")
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    kw = dict(tx=tx, loss_fn=loss_fn, x=xj, y=yj, batch_size=batch, key=jax.random.key(2))
    t0 = time.perf_counter()
    p, s, losses = train_steps(net.params, tx.init(net.params), num_steps=steps, **kw)
    jax.block_until_ready(losses)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    p, s, losses = train_steps(p, s, num_steps=steps, **kw)
    jax.block_until_ready(losses)
    warm = time.perf_counter() - t0
    return {
        "steps": steps,
        "seconds": warm,
        "steps_per_second": steps / warm,
        "compile_plus_run_seconds": first,
        "final_loss": float(losses[-100:].mean()),
    }


def bench_torch(x, y, steps: int, batch: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 312), torch.nn.ReLU(), torch.nn.Linear(312, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    n, per_epoch = len(xt), len(xt) // batch
    gen = torch.Generator().manual_seed(0)

    def run(num):
        perm = torch.randperm(n, generator=gen)
        losses = []
        for i in range(num):
            if i % per_epoch == 0:
                perm = torch.randperm(n, generator=gen)
            idx = perm[(i % per_epoch) * batch : (i % per_epoch + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    run(20)  # warm-up
    t0 = time.perf_counter()
    losses = run(steps)
    sec = time.perf_counter() - t0
    return {
        "steps": steps,
        "seconds": sec,
        "steps_per_second": steps / sec,
        "threads": threads,
        "torch_version": torch.__version__,
        "final_loss": float(np.mean(losses[-100:])),
    }


def bench_den(data_dir: str, num_tasks: int, config: str | None) -> dict:
    from den_jax import den

    cfg = den.load_config(config) if config else den.DENConfig()
    stream = permuted_mnist(data_dir, num_tasks)
    key = jax.random.key(0)
    net = dj.init_network(key, [312, 128], shared_input_dim=784)
    per_task = []
    for i in range(num_tasks):
        task = stream[i]
        net = dj.add_task(net, jax.random.fold_in(key, 1000 + i), task.name, input_dim=784,
                          output_dim=10)  # fmt: skip
        t0 = time.perf_counter()
        net, report = den.learn_task(
            net, jax.random.fold_in(key, i), task.name, (task.x_train, task.y_train),
            (task.x_valid, task.y_valid), cfg,
        )  # fmt: skip
        steps = sum(ph.get("steps", 0) + ph.get("retrain", {}).get("steps", 0)
                    for ph in report["phases"].values())  # fmt: skip
        phase_s = {k: ph["seconds"] for k, ph in report["phases"].items() if "seconds" in ph}
        per_task.append({"task": task.name, "seconds": time.perf_counter() - t0,
                         "optimizer_steps": steps, "widths": list(net.widths),
                         "params": report["params"], "phase_seconds": phase_s})  # fmt: skip
    total = sum(t["seconds"] for t in per_task)
    return {"config": config, "selective_retraining": cfg.selective_retraining,
            "tasks": per_task, "total_seconds": total}  # fmt: skip


def bench_selective(x, y, steps: int, batch: int, widths, selected, drift: float = 0.1) -> dict:
    """Steps/s of selective retraining, masked dense against compact (gather/train/scatter)."""
    rng = np.random.default_rng(0)
    dims = [x.shape[1], *widths, 10]
    params = [(jnp.asarray(rng.normal(0, 0.05, (a, b)), jnp.float32), jnp.zeros((b,)))
              for a, b in zip(dims[:-1], dims[1:])]  # fmt: skip
    chosen = [np.sort(rng.choice(w, k, replace=False)) for w, k in zip(widths, selected)]
    sel = [np.arange(x.shape[1]), *chosen, np.arange(10)]
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    tx = optax.adam(1e-3)

    def run(p0, masks, n):
        def loss_fn(p, xb, yb):
            h = xb
            for i, (w, b) in enumerate(p):
                h = h @ w + b
                h = jax.nn.relu(h) if i < len(p) - 1 else h
            ce = optax.softmax_cross_entropy_with_integer_labels(h, yb).mean()
            return ce + drift * sum(jnp.sum((w - w0) ** 2) for (w, _), (w0, _) in zip(p, p0))

        def body(i, carry):
            p, s = carry
            idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), i), (batch,), 0,
                                     xj.shape[0])  # fmt: skip
            g = jax.grad(loss_fn)(p, xj[idx], yj[idx])
            u, s = tx.update(g, s, p)
            if masks is not None:
                u = jax.tree.map(lambda a, m: a * m, u, masks)
            return optax.apply_updates(p, u), s

        return jax.lax.fori_loop(0, n, body, (p0, tx.init(p0)))[0]

    def masks_of(p):
        out = []
        for i, (w, _) in enumerate(p):
            rows = np.zeros(w.shape[0], np.float32)
            rows[sel[i]] = 1
            cols = np.zeros(w.shape[1], np.float32)
            cols[sel[i + 1]] = 1
            out.append((jnp.asarray(np.outer(rows, cols)), jnp.asarray(cols)))
        return out

    def gather(p):
        return [(w[sel[i]][:, sel[i + 1]], b[sel[i + 1]]) for i, (w, b) in enumerate(p)]

    def scatter(p, small):
        return [(w.at[np.ix_(sel[i], sel[i + 1])].set(ws), b.at[sel[i + 1]].set(bs))
                for i, ((w, b), (ws, bs)) in enumerate(zip(p, small))]  # fmt: skip

    masks = masks_of(params)
    dense = jax.jit(lambda p: run(p, masks, steps))
    compact = jax.jit(lambda p: scatter(p, run(gather(p), None, steps)))
    out = {"widths": list(widths), "selected_units": list(selected), "steps": steps}
    for name, fn in (("masked_dense", dense), ("compact", compact)):
        jax.block_until_ready(fn(params))  # compile + one run
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params))
        sec = time.perf_counter() - t0
        out[name] = {"seconds": sec, "steps_per_second": steps / sec}
    out["compact_speedup"] = out["masked_dense"]["seconds"] / out["compact"]["seconds"]
    return out


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--den-tasks", type=int, default=2, help="0 skips the DEN timing")
    p.add_argument("--config", default="experiments/configs/den_permuted_mnist.yaml")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--selective-widths", default="611,142",
                   help="hidden widths for the selective-retraining comparison (Permuted "
                   "MNIST task 10, shipped config, seed 0)")  # fmt: skip
    p.add_argument("--selective-units", default="450,86", help="units selected per layer")
    p.add_argument("--only-selective", action="store_true",
                   help="run only the selective-retraining comparison")  # fmt: skip
    p.add_argument("--out", default="benchmarks/results/den_cpu.json")
    args = p.parse_args()
    task = permuted_mnist(args.data_dir, 1)[0]
    x, y = task.x_train, task.y_train
    threads = os.cpu_count() or 1
    result = {
        "command": "python -m benchmarks.den_cpu " + " ".join(sys.argv[1:]),
        "commit": _commit(),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": threads,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "mlp": "784-312-128-10 ReLU, Adam 1e-3, softmax CE",
        "batch": args.batch,
    }
    widths = [int(v) for v in args.selective_widths.split(",")]
    chosen = [int(v) for v in args.selective_units.split(",")]
    result["selective_retraining"] = bench_selective(x, y, args.steps, args.batch, widths, chosen)
    if args.only_selective:
        args.no_torch, args.den_tasks = True, 0
    else:
        result["jax"] = bench_jax(x, y, args.steps, args.batch)
    if not args.no_torch:
        result["torch"] = bench_torch(x, y, args.steps, args.batch, threads)
        result["jax_over_torch_speed"] = (
            result["jax"]["steps_per_second"] / result["torch"]["steps_per_second"]
        )
    if args.den_tasks:
        result["den"] = bench_den(args.data_dir, args.den_tasks, args.config)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
