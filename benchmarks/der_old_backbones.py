"""How the frozen DER backbones should run: one apply per backbone, or stacked under vmap.

For k frozen CIFAR ResNet-32 backbones (``--base-width``, batch ``--batch``, 32x32x3
inputs), the jitted forward of :func:`den_jax.der.model.old_features` in each mode of
``den_jax.der.model.OLD_BACKBONES``:

* ``loop``: one ResNet apply per backbone inside the traced function (the default);
* ``vmap``: the backbones stacked along a new leading axis under ``jax.vmap``. XLA turns
  the batched convolutions into grouped convolutions (``feature_group_count = k``), so
  this row is also the batched-channel (grouped) formulation;

next to one backbone alone. Milliseconds per batch: the best of ``--repeats`` blocks of
``--iters`` calls after compiling; compile seconds are recorded too. The default is chosen
from this table per backend (``DERConfig.old_backbones``)::

    python -m benchmarks.der_old_backbones --ks 2,4,8 \\
        --out benchmarks/results/der_old_backbones_cpu.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks import _common


def _state(k: int, base_width: int):
    import jax

    from den_jax.der import model

    key = jax.random.key(0)
    st = model.init_der_state(
        key,
        base_width=base_width,
        in_channels=3,
        image_size=32,
        num_first=2,
        num_total=2 * (k + 1),
        prune=False,
    )
    for t in range(1, k + 1):
        st = model.expand(st, jax.random.fold_in(key, t), 2, None, None)
    return st


def _time(fn, args, iters: int, repeats: int) -> tuple[float, float]:
    """(compile seconds, best ms per call)."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t1 = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t1) / iters)
    return compile_s, 1000 * best


def run(ks: Sequence[int], base_width: int, batch: int, iters: int, repeats: int) -> list[dict]:
    """One row per (k, mode), plus ``one_backbone`` rows (k = 1, loop)."""
    import jax
    import jax.numpy as jnp

    from den_jax.der import model

    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3), jnp.float32)
    rows = []
    for k in [1, *ks]:
        st = _state(k, base_width)
        modes = ("loop",) if k == 1 else model.OLD_BACKBONES
        for mode in modes:
            fn = jax.jit(lambda s, xx, mode=mode: model.old_features(s, xx, mode=mode))
            compile_s, ms = _time(fn, (st, x), iters, repeats)
            rows.append(
                {
                    "k": k,
                    "mode": "one_backbone" if k == 1 else mode,
                    "ms_per_batch": round(ms, 2),
                    "compile_s": round(compile_s, 2),
                }
            )
            print(f"k={k} {rows[-1]['mode']:12s} {ms:8.1f} ms/batch  compile {compile_s:.1f} s")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=_common.parse_int_list, default=[2, 4, 8])
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    a = p.parse_args(argv)
    rows = run(a.ks, a.base_width, a.batch, a.iters, a.repeats)
    fastest = {}
    for k in a.ks:
        mine = [r for r in rows if r["k"] == k]
        fastest[str(k)] = min(mine, key=lambda r: r["ms_per_batch"])["mode"]
    result = {
        **_common.provenance("benchmarks.der_old_backbones", ["jax", "jaxlib", "flax"], argv),
        "device": _common.jax_device_info(),
        "settings": {k: getattr(a, k) for k in ("ks", "base_width", "batch", "iters", "repeats")},
        "rows": rows,
        "fastest_mode_per_k": fastest,
    }
    if a.out:
        print(_common.write_json(a.out, result))


if __name__ == "__main__":
    main()
