"""A generic, jit-compiled training loop on in-memory arrays.

:func:`train_steps` runs ``num_steps`` optimizer steps on a params pytree in compiled
``lax.scan`` chunks: the data stay on the device, mini-batches are drawn on the device (a
fresh permutation of the dataset per epoch, as in the usual "shuffle every epoch" loop),
and the host only dispatches one call per chunk (asynchronously; no per-step round
trip). Three hooks make it usable for masked and sparse training (DEN, PackNet-style
freezing, L2/EWC baselines):

* ``loss_fn(params, x_batch, y_batch) -> scalar`` (or ``loss_fn(params, x_batch,
  y_batch, loss_aux)`` when ``loss_aux`` is given): penalties such as a drift or EWC term
  live in the caller's loss; arrays they need (previous weights, Fisher) are best passed
  as ``loss_aux`` so the compiled loop can be reused (see "Compilation" below).
* ``update_mask``: a pytree of 0/1 arrays shaped like ``params``. It is applied *after*
  the optimizer (and after ``prox``): an entry with mask 0 keeps its exact previous value
  whatever Adam moments or weight decay say, so frozen weights stay bit-identical.
* ``prox(params, lr) -> params``: a proximal step applied after each update (L1 soft
  threshold, group lasso), with ``lr`` the learning rate of that step.

Compilation: the loop runs in compiled chunks of ``chunk_size`` steps (a ``lax.scan``;
one host dispatch per chunk). The compiled chunk is cached on the identity of ``tx``,
``loss_fn``, ``prox`` and ``learning_rate`` plus the shapes and ``chunk_size``, *not* on
``num_steps``: calling :func:`train_steps` again with the same objects and shapes, for any
number of steps, does not recompile; new closures recompile once.

Example::

    tx = optax.adam(1e-3)
    loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(
        model(p, x), y).mean()
    params, opt_state, losses = train_steps(
        params, tx.init(params), tx=tx, loss_fn=loss, x=x, y=y,
        key=jax.random.key(0), num_steps=1000, batch_size=256)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[..., jax.Array]
ProxFn = Callable[[Any, jax.Array], Any]
LearningRate = float | Callable[[jax.Array], jax.Array]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_data(x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must share their leading (example) axis, got x {tuple(x.shape)} "
            f"and y {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("the dataset is empty (x has 0 rows)")
    return x, y


def _lr_at(learning_rate: LearningRate | None, step: jax.Array) -> jax.Array:
    if learning_rate is None:
        return jnp.asarray(1.0, jnp.float32)
    if callable(learning_rate):
        return jnp.asarray(learning_rate(step), jnp.float32)
    return jnp.asarray(learning_rate, jnp.float32)


def _call_loss(loss_fn: LossFn, params, xb, yb, loss_aux, has_aux: bool):
    return loss_fn(params, xb, yb, loss_aux) if has_aux else loss_fn(params, xb, yb)


@functools.partial(
    jax.jit,
    static_argnames=(
        "tx",
        "loss_fn",
        "prox",
        "learning_rate",
        "chunk_size",
        "batch_size",
        "has_mask",
        "has_aux",
    ),
    donate_argnames=("params", "opt_state", "perm"),
)
def _train_chunk(
    params,
    opt_state,
    perm,
    x,
    y,
    key,
    update_mask,
    loss_aux,
    first_step,
    num_active,
    step_offset,
    *,
    tx,
    loss_fn,
    prox,
    learning_rate,
    chunk_size,
    batch_size,
    has_mask,
    has_aux,
):
    """Steps ``first_step .. first_step + chunk_size - 1``; steps >= ``num_active`` are no-ops."""
    n = x.shape[0]
    steps_per_epoch = max(n // batch_size, 1)
    grad_fn = jax.value_and_grad(
        lambda p, xb, yb: _call_loss(loss_fn, p, xb, yb, loss_aux, has_aux)
    )

    def one_step(carry, i):
        params, opt_state, perm = carry
        pos = i % steps_per_epoch
        perm = jax.lax.cond(
            pos == 0,
            lambda: jax.random.permutation(jax.random.fold_in(key, i // steps_per_epoch), n),
            lambda: perm,
        )
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
        loss, grads = grad_fn(params, x[idx], y[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if prox is not None:
            new_params = prox(new_params, _lr_at(learning_rate, i + step_offset))
        if has_mask:
            new_params = jax.tree.map(
                lambda m, new, old: jnp.where(m != 0, new, old), update_mask, new_params, params
            )
        return (new_params, opt_state, perm), loss

    def step(carry, j):
        return jax.lax.cond(
            j < num_active,
            lambda c: one_step(c, first_step + j),
            lambda c: (c, jnp.zeros((), jnp.float32)),
            carry,
        )

    (params, opt_state, perm), losses = jax.lax.scan(
        step, (params, opt_state, perm), jnp.arange(chunk_size, dtype=jnp.int32)
    )
    return params, opt_state, perm, losses


def train_steps(
    params: Any,
    opt_state: Any,
    *,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    x: Any,
    y: Any,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    update_mask: Any | None = None,
    prox: ProxFn | None = None,
    learning_rate: LearningRate | None = None,
    loss_aux: Any | None = None,
    step_offset: int = 0,
    chunk_size: int = 100,
) -> tuple[Any, Any, jax.Array]:
    """Runs ``num_steps`` steps of mini-batch training in compiled chunks.

    Each step: draw a batch (a fresh on-device permutation per epoch of
    ``len(x) // batch_size`` steps), compute ``loss_fn`` and its gradient, apply
    ``tx``, then ``prox(params, lr)`` if given, then restore every entry whose
    ``update_mask`` is 0 to its value before the step.

    Args:
      params: the parameters (a pytree of float arrays).
      opt_state: ``tx``'s state for ``params`` (``tx.init(params)`` or a carried state).
      tx: the optax optimizer (keep the same object across calls to reuse the compiled loop).
      loss_fn: ``loss_fn(params, x_batch, y_batch) -> scalar`` (mean over the batch), or
        ``loss_fn(params, x_batch, y_batch, loss_aux)`` when ``loss_aux`` is given.
      x: inputs ``[N, ...]``; moved to the device once.
      y: targets ``[N, ...]``.
      key: PRNG key for the shuffling.
      num_steps: number of optimizer steps, >= 1.
      batch_size: examples per step, 1 <= batch_size <= N.
      update_mask: optional pytree like ``params`` of 0/1 (or bool) arrays, broadcastable to
        each leaf; entries with 0 are never changed (applied after ``tx`` and ``prox``).
      prox: optional proximal step ``prox(params, lr) -> params`` after each update.
      learning_rate: the learning rate passed to ``prox``: a float or a schedule
        ``step -> lr`` (called with ``step_offset + step``). ``None`` passes 1.0.
      loss_aux: optional pytree of arrays passed as the 4th argument of ``loss_fn``.
      step_offset: added to the step index given to a ``learning_rate`` schedule.
      chunk_size: steps per compiled call. The step count is a runtime value (the last
        chunk skips its surplus steps), so phases of different lengths share one compile.

    Returns:
      ``(params, opt_state, losses)`` with ``losses`` the per-step training loss,
      shape ``[num_steps]``.
    """
    num_steps = _check_int("num_steps", num_steps, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    step_offset = _check_int("step_offset", step_offset, 0)
    x, y = _check_data(x, y)
    if batch_size > x.shape[0]:
        raise ValueError(
            f"batch_size {batch_size} is larger than the dataset ({x.shape[0]} examples)"
        )
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}")
    if update_mask is not None:
        try:
            jax.tree.map(
                lambda m, p: jnp.broadcast_shapes(jnp.shape(m), jnp.shape(p)), update_mask, params
            )
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"update_mask must be a pytree shaped like params (0/1 per entry): {err}"
            ) from err
    chex.assert_tree_all_finite(params)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    # Copies, so that buffer donation never invalidates the caller's arrays.
    params = jax.tree.map(jnp.array, params)
    opt_state = jax.tree.map(jnp.array, opt_state)
    perm = jnp.arange(x.shape[0], dtype=jnp.int32)
    statics = dict(
        tx=tx,
        loss_fn=loss_fn,
        prox=prox,
        learning_rate=learning_rate,
        chunk_size=chunk_size,
        batch_size=batch_size,
        has_mask=update_mask is not None,
        has_aux=loss_aux is not None,
    )
    losses = []
    for first in range(0, num_steps, chunk_size):
        params, opt_state, perm, chunk_losses = _train_chunk(
            params,
            opt_state,
            perm,
            x,
            y,
            key,
            update_mask,
            loss_aux,
            jnp.asarray(first, jnp.int32),
            jnp.asarray(min(chunk_size, num_steps - first), jnp.int32),
            jnp.asarray(step_offset, jnp.int32),
            **statics,
        )
        losses.append(chunk_losses)
    return params, opt_state, jnp.concatenate(losses)[:num_steps]


@functools.partial(jax.jit, static_argnames=("fn", "batch_size", "has_aux"))
def _batched_sum(params, x, y, aux, *, fn, batch_size, has_aux):
    n = x.shape[0]
    full = n // batch_size

    def one(xb, yb):
        return _call_loss(fn, params, xb, yb, aux, has_aux) * xb.shape[0]

    total = jnp.asarray(0.0, jnp.float32)
    if full:
        xs = x[: full * batch_size].reshape(full, batch_size, *x.shape[1:])
        ys = y[: full * batch_size].reshape(full, batch_size, *y.shape[1:])
        total = jax.lax.scan(lambda c, b: (c + one(*b), None), total, (xs, ys))[0]
    if n % batch_size:
        total = total + one(x[full * batch_size :], y[full * batch_size :])
    return total / n


def evaluate_loss(
    loss_fn: LossFn,
    params: Any,
    x: Any,
    y: Any,
    *,
    batch_size: int = 1024,
    loss_aux: Any | None = None,
) -> float:
    """Mean of ``loss_fn`` over a whole dataset, computed in batches.

    Args:
      loss_fn: ``loss_fn(params, x_batch, y_batch[, loss_aux]) -> scalar`` returning the
        *mean* loss of the batch (as for :func:`train_steps`).
      params: the parameters.
      x: inputs ``[N, ...]``.
      y: targets ``[N, ...]``.
      batch_size: examples per batch (the last batch may be smaller).
      loss_aux: optional 4th argument of ``loss_fn``.

    Returns:
      The example-weighted mean loss over all ``N`` examples, as a Python float.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    x, y = _check_data(x, y)
    return float(
        _batched_sum(
            params,
            x,
            y,
            loss_aux,
            fn=loss_fn,
            batch_size=min(batch_size, x.shape[0]),
            has_aux=loss_aux is not None,
        )
    )


def apply_in_batches(fn: Callable[[Any], jax.Array], x: Any, *, batch_size: int = 1024):
    """Applies ``fn`` (e.g. a jitted forward pass) to ``x`` in batches; concatenates results.

    Args:
      fn: maps an input batch ``[b, ...]`` to an array ``[b, ...]``.
      x: inputs ``[N, ...]``.
      batch_size: examples per call.

    Returns:
      ``fn`` applied to every row, concatenated along axis 0 (``[N, ...]``).
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    x = jnp.asarray(x)
    outs = [fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return jnp.concatenate(outs, axis=0)
