"""Why the scanned DER epoch is slow on XLA:CPU: convolution gradients inside ``lax.scan``.

A stack of ``--layers`` 3x3 convolutions (``--channels`` channels, NHWC, batch
``--batch`` on 32x32 inputs) runs ``--steps`` updates three ways, for three kinds of work:

* ``fwd``: forward only;
* ``grad_w``: gradient with respect to the weights (the backward-filter convolutions);
* ``grad_x``: gradient with respect to the input (the backward-input convolutions);

each as ``--steps`` jitted dispatches (``loop``), as one ``lax.scan`` (``scan``), and as a
fully unrolled scan (``unroll``). Seconds are the second call of each (after compiling).
On XLA:CPU the forward pass costs the same in a loop body, but both convolution gradients
are many times slower there; unrolling removes the loop and the slowdown, at a compile
cost that grows with the number of steps. That is why ``--epoch-loop auto`` uses the step
loop on the CPU (docs/der.md, "Speed paths")::

    python -m benchmarks.scan_conv --out benchmarks/results/scan_conv_cpu.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks import _common

KINDS = ("fwd", "grad_w", "grad_x")


def _conv(x, w):
    import jax

    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _make(kind: str, steps: int, unroll: bool | int):
    """Returns ``(loop, scan)``: ``steps`` updates as dispatches and as one scan."""
    import jax
    import jax.numpy as jnp

    def fwd(ws, x):
        for w in ws:
            x = jax.nn.relu(_conv(x, w))
        return x

    def one(ws, x):
        if kind == "fwd":
            return ws, fwd(ws, x) * 0.5
        if kind == "grad_w":
            gw = jax.grad(lambda w: jnp.mean(fwd(w, x) ** 2))(ws)
            return [a - 0.01 * d for a, d in zip(ws, gw)], x
        gx = jax.grad(lambda xx: jnp.mean(fwd(ws, xx) ** 2))(x)
        return ws, x - 0.01 * gx

    step = jax.jit(one)

    def loop(ws, x):
        for _ in range(steps):
            ws, x = step(ws, x)
        return ws, x

    @jax.jit
    def scan(ws, x):
        body = lambda c, _: (one(*c), None)
        return jax.lax.scan(body, (ws, x), None, length=steps, unroll=unroll)[0]

    return loop, scan


def _seconds(fn, *args) -> tuple[float, float]:
    """(first call incl. compile, second call) in seconds."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    t1 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return t1 - t0, time.perf_counter() - t1


def run(layers: int, channels: int, batch: int, steps: int) -> list[dict]:
    """Times every kind x (loop, scan, unrolled scan); returns one row per kind."""
    import jax

    keys = jax.random.split(jax.random.key(0), layers)
    ws = [jax.random.normal(k, (3, 3, channels, channels)) * 0.1 for k in keys]
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, channels))
    rows = []
    for kind in KINDS:
        loop, scan = _make(kind, steps, 1)
        _, unrolled = _make(kind, steps, True)
        row = {"kind": kind}
        for name, fn in (("loop", loop), ("scan", scan), ("unroll", unrolled)):
            first, second = _seconds(fn, ws, x)
            row[f"{name}_s"] = round(second, 4)
            row[f"{name}_first_call_s"] = round(first, 4)
        row["scan_over_loop"] = round(row["scan_s"] / row["loop_s"], 2)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    a = p.parse_args(argv)
    rows = run(a.layers, a.channels, a.batch, a.steps)
    result = {
        **_common.provenance("benchmarks.scan_conv", ["jax", "jaxlib"], argv),
        "device": _common.jax_device_info(),
        "settings": {k: getattr(a, k) for k in ("layers", "channels", "batch", "steps")},
        "rows": rows,
    }
    for r in rows:
        print(
            f"{r['kind']:7s} loop {r['loop_s']:.3f} s  scan {r['scan_s']:.3f} s "
            f"(x{r['scan_over_loop']})  unrolled {r['unroll_s']:.3f} s"
        )
    if a.out:
        print(_common.write_json(a.out, result))


if __name__ == "__main__":
    main()
