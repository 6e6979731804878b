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

The step itself is :func:`train_step` (gradient, ``tx``, ``prox``, mask), a pure function
that other loops (the growth trainer's epochs, your own ``lax.scan``) reuse, so there is
one training-step implementation. :func:`train_steps` raises ``FloatingPointError``
naming the first step whose loss is non-finite (checked once per call, on the host).
:func:`as_arrays` turns ``(x, y)`` or an iterable of ``(x_batch, y_batch)`` into arrays;
:func:`resolve_optimizer` is the learners' ``optimizer=`` convention.

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

__all__ = [
    "LearningRate",
    "LossFn",
    "Optimizer",
    "ProxFn",
    "apply_in_batches",
    "as_arrays",
    "check_finite_run",
    "evaluate_loss",
    "resolve_optimizer",
    "train_step",
    "train_steps",
]

LossFn = Callable[..., jax.Array]
ProxFn = Callable[[Any, jax.Array], Any]
LearningRate = float | Callable[[jax.Array], jax.Array]
Optimizer = optax.GradientTransformation | Callable[[Any], optax.GradientTransformation]


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


def train_step(
    params: Any,
    opt_state: Any,
    xb: Any,
    yb: Any,
    *,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    loss_aux: Any | None = None,
    update_mask: Any | None = None,
    prox: ProxFn | None = None,
    lr: jax.Array | None = None,
) -> tuple[Any, Any, jax.Array, Any]:
    """One optimizer step on one batch: the single step implementation of the library.

    Pure and traceable (call it inside ``jax.jit`` or ``lax.scan``): gradient of
    ``loss_fn``, ``tx.update``, ``optax.apply_updates``, then ``prox(params, lr)`` if
    given, then every entry whose ``update_mask`` is 0 gets its value from before the step.

    Args:
      params: the parameters (any pytree of float arrays).
      opt_state: ``tx``'s state for ``params``.
      xb: the batch inputs.
      yb: the batch targets.
      tx: the optax optimizer.
      loss_fn: ``loss_fn(params, xb, yb) -> scalar``, or ``loss_fn(params, xb, yb,
        loss_aux)`` when ``loss_aux`` is not None (e.g. a dropout key, previous weights).
      loss_aux: optional 4th argument of ``loss_fn``.
      update_mask: optional 0/1 pytree broadcastable to ``params``; 0 entries keep their
        exact value.
      prox: optional proximal step ``prox(params, lr) -> params`` after the update.
      lr: the learning rate given to ``prox`` (``None``: 1.0).

    Returns:
      ``(params, opt_state, loss, grads)``: the new parameters and optimizer state, the
      batch loss before the step and the gradients.
    """
    if loss_aux is None:
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    else:
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, loss_aux)
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if prox is not None:
        new_params = prox(new_params, jnp.asarray(1.0 if lr is None else lr, jnp.float32))
    if update_mask is not None:
        new_params = jax.tree.map(
            lambda m, new, old: jnp.where(m != 0, new, old), update_mask, new_params, params
        )
    return new_params, opt_state, loss, grads


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

    def one_step(carry, i):
        params, opt_state, perm = carry
        pos = i % steps_per_epoch
        perm = jax.lax.cond(
            pos == 0,
            lambda: jax.random.permutation(jax.random.fold_in(key, i // steps_per_epoch), n),
            lambda: perm,
        )
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
        new_params, opt_state, loss, _ = train_step(
            params,
            opt_state,
            x[idx],
            y[idx],
            tx=tx,
            loss_fn=loss_fn,
            loss_aux=loss_aux if has_aux else None,
            update_mask=update_mask if has_mask else None,
            prox=prox,
            lr=None if prox is None else _lr_at(learning_rate, i + step_offset),
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

    Raises:
      FloatingPointError: a loss (or the final parameters) is non-finite; the message
        names the first such step. Nothing non-finite is returned.
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
    losses = jnp.concatenate(losses)[:num_steps]
    check_finite_run(losses, params, step_offset=step_offset)
    return params, opt_state, losses


def check_finite_run(losses: jax.Array, params: Any, *, step_offset: int = 0) -> None:
    """Raises ``FloatingPointError`` naming the first step whose loss is non-finite.

    One host transfer for the whole run (no per-step synchronisation). A finite loss
    history with non-finite final parameters (the last update overflowed) is reported as
    the last step.

    Args:
      losses: per-step losses ``[num_steps]``.
      params: the parameters after the run.
      step_offset: added to the step numbers in the message.
    """
    params_ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(params)]))
    host_losses, host_ok = jax.device_get((losses, params_ok))
    bad = np.flatnonzero(~np.isfinite(np.asarray(host_losses)))
    if bad.size:
        i = int(bad[0])
        raise FloatingPointError(
            f"non-finite training loss {float(host_losses[i])} at step {i} of "
            f"{len(host_losses)} (global step {i + step_offset}); lower the learning rate or "
            "check the inputs and the loss"
        )
    if not bool(host_ok):
        i = len(host_losses) - 1
        raise FloatingPointError(
            f"the parameters became non-finite at step {i} of {len(host_losses)} (global step "
            f"{i + step_offset}) although every loss was finite; lower the learning rate"
        )


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


def resolve_optimizer(
    optimizer: Optimizer | None, schedule: Any, *, name: str = "optimizer"
) -> optax.GradientTransformation:
    """The learners' ``optimizer=`` convention.

    Args:
      optimizer: ``None`` (``optax.adam(schedule)``), an ``optax.GradientTransformation``
        (used as is; its own learning rate applies) or a one-argument factory
        ``schedule -> GradientTransformation``.
      schedule: the learner's learning-rate schedule (a float or ``step -> lr``).
      name: the argument's name, for error messages.

    Returns:
      The optimizer.

    Raises:
      ValueError: ``optimizer`` is neither, or the factory returns something else.
    """
    if optimizer is None:
        return optax.adam(schedule)
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if not callable(optimizer):
        raise ValueError(
            f"{name} must be an optax.GradientTransformation or a factory schedule -> "
            f"GradientTransformation, got {type(optimizer).__name__}"
        )
    tx = optimizer(schedule)
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(
            f"{name}: the factory must return an optax.GradientTransformation when called "
            f"with the learning-rate schedule, got {type(tx).__name__}"
        )
    return tx


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _is_pair(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_array(a) for a in v)


def as_arrays(data: Any, name: str) -> tuple[Any, Any]:
    """``(x, y)`` arrays from a pair of arrays or from an iterable of ``(x_batch, y_batch)``.

    Args:
      data: ``(x, y)`` with array-likes ``x [N, ...]`` and ``y [N, ...]`` (returned
        as arrays, not copied when they already are), or any iterable or iterator of
        ``(x_batch, y_batch)`` pairs (a list of batches, a generator, a data loader):
        the batches are concatenated along axis 0.
      name: what ``data`` is (e.g. ``"task 'mnist_0' train"``), used in error messages.

    Returns:
      ``(x, y)`` with the same number of rows (>= 1).

    Raises:
      ValueError: ``data`` is none of those, a batch is not a pair, the batches'
        trailing shapes differ, x and y row counts differ, or there is no row.
    """
    if data is None or isinstance(data, (str, bytes, dict)) or _is_array(data):
        what = f"an array of shape {tuple(data.shape)}" if _is_array(data) else repr(data)[:60]
        raise ValueError(
            f"{name} must be a pair (x, y) of arrays or an iterable of (x_batch, y_batch) "
            f"pairs, got {what}"
        )
    if isinstance(data, (tuple, list)) and len(data) == 2 and not any(map(_is_pair, data)):
        x, y = (v if _is_array(v) else np.asarray(v) for v in data)
    else:
        try:
            batches = iter(data)
        except TypeError:
            raise ValueError(
                f"{name} must be a pair (x, y) of arrays or an iterable of (x_batch, y_batch) "
                f"pairs, got {type(data).__name__}"
            ) from None
        xs, ys = [], []
        for i, batch in enumerate(batches):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError(
                    f"{name}: batch {i} must be a pair (x_batch, y_batch), got "
                    f"{type(batch).__name__}"
                )
            xb, yb = np.asarray(batch[0]), np.asarray(batch[1])
            if xb.ndim < 1 or yb.ndim < 1 or xb.shape[0] != yb.shape[0]:
                raise ValueError(
                    f"{name}: batch {i} has x {xb.shape} and y {yb.shape}; expected the same "
                    "number of rows"
                )
            if xs and (xb.shape[1:] != xs[0].shape[1:] or yb.shape[1:] != ys[0].shape[1:]):
                raise ValueError(
                    f"{name}: batch {i} has x {xb.shape} and y {yb.shape}, but batch 0 has "
                    f"x {xs[0].shape} and y {ys[0].shape}; trailing shapes must agree"
                )
            xs.append(xb)
            ys.append(yb)
        if not xs:
            raise ValueError(f"{name}: the iterable yielded no batch")
        x, y = np.concatenate(xs), np.concatenate(ys)
    if np.ndim(x) < 1 or np.ndim(y) < 1 or np.shape(x)[0] != np.shape(y)[0]:
        raise ValueError(
            f"{name}: x {tuple(np.shape(x))} and y {tuple(np.shape(y))} must have the same "
            "number of rows"
        )
    if np.shape(x)[0] == 0:
        raise ValueError(f"{name}: the data has no rows")
    return x, y
