"""DER training: optimizer, jitted data-parallel train step, one epoch (step loop or scan).

PyCIL's recipe: SGD, momentum 0.9, coupled L2 weight decay on every parameter
(torch ``SGD(weight_decay=wd)`` = ``add_decayed_weights`` before the momentum
trace), batch 128, step-wise lr decay x0.1 at epoch milestones.

Data parallelism: the uint8 training set lives on the devices (replicated),
each step receives a batch of *indices* sharded over a 1-D ``"data"`` mesh of
all local devices, gathers and augments the images inside the jitted step, and
the model/optimizer state is replicated. Under ``jit`` the BatchNorm batch
statistics and the loss are computed over the *global* batch, so the result
equals the one-device run up to floating-point reduction order.

Speed paths (docs/der.md, "Speed paths"): :func:`make_train_epoch` with
:func:`run_epoch_scanned` runs the batches of an epoch in one ``lax.scan``
dispatch (same numbers as the step loop :func:`run_epoch`); both pad a last, partial
batch with ``-1`` indices (:func:`pad_batches`) that the step masks out of the
BatchNorm statistics and the loss, so each compiles once per step; ``donate`` lets XLA
update ``state``/``opt_state`` in place (default: on accelerators only);
``compute_dtype=jnp.bfloat16`` runs the backbones in bfloat16 with float32
parameters, optimizer state, logits and loss (opt-in: it changes the numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from den_jax.der import augment, model, pruning

__all__ = [
    "decay_mask_for",
    "epoch_batches",
    "make_mesh",
    "make_optimizer",
    "make_train_epoch",
    "make_train_step",
    "pad_batches",
    "replicate",
    "resolve_donate",
    "run_epoch",
    "run_epoch_scanned",
    "shard_batch",
]


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """1-D mesh ``("data",)`` over ``devices`` (default: all local devices)."""
    devs = np.asarray(list(devices) if devices is not None else jax.local_devices())
    return Mesh(devs, ("data",))


def replicate(tree, mesh: Mesh, *, copy: bool = False):
    """Places a pytree fully replicated on the mesh.

    Args:
      tree: pytree of arrays.
      mesh: device mesh.
      copy: copy every leaf first. ``jax.device_put`` returns an array that is
        already placed as it is, so without a copy the result shares buffers
        with ``tree``; copy a tree before handing it to a donating function
        when the caller keeps using ``tree`` (or when leaves may share buffers).

    Returns:
      The replicated pytree.
    """
    if copy:
        tree = jax.tree.map(jnp.copy, tree)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(x, mesh: Mesh):
    """Places an array split along axis 0 over the mesh's ``data`` axis."""
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))


def make_optimizer(
    *,
    lr: float,
    milestones: Sequence[int],
    steps_per_epoch: int,
    weight_decay: float,
    momentum: float = 0.9,
    gamma: float = 0.1,
    decay_mask: Any = None,
) -> optax.GradientTransformation:
    """torch ``SGD(lr, momentum, weight_decay)`` + ``MultiStepLR(milestones, gamma)``.

    Args:
      lr: initial learning rate.
      milestones: epochs at which the lr is multiplied by ``gamma``.
      steps_per_epoch: optimizer steps per epoch (to turn epochs into steps).
      weight_decay: coupled L2 coefficient (added to the gradient).
      momentum: heavy-ball momentum (torch convention, no dampening).
      gamma: decay factor.
      decay_mask: optional pytree/callable of booleans: where to apply decay.
    """
    schedule = optax.piecewise_constant_schedule(
        lr, {int(m) * steps_per_epoch: gamma for m in milestones}
    )
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=momentum),
    )


def decay_mask_for(params: dict) -> dict:
    """Weight decay on every parameter except the pruning embeddings."""
    return {k: jax.tree.map(lambda _, k=k: k != "mask_e", v) for k, v in params.items()}


def resolve_donate(donate: bool | None) -> bool:
    """Whether the train functions donate ``state`` and ``opt_state``.

    Donation lets XLA update the model and optimizer state in place (no second
    copy in device memory). A donated input is deleted by the call (current JAX
    implements donation on CPU too), so a caller must only use the returned
    state afterwards.

    Args:
      donate: True/False, or None for "donate unless the default backend is the
        CPU" (CPU callers, e.g. tests, may then keep using their inputs).

    Returns:
      The resolved flag.
    """
    return jax.default_backend() != "cpu" if donate is None else bool(donate)


def _jit(fn: Callable, donate: bool | None, wrap: Callable[[Callable], Callable] | None):
    """``jax.jit`` with optional donation of arguments 0 and 1 and a test hook."""
    if wrap is not None:
        fn = wrap(fn)
    return jax.jit(fn, donate_argnums=(0, 1) if resolve_donate(donate) else ())


def _make_step_body(
    tx: optax.GradientTransformation,
    *,
    aux_weight: float,
    mean: Sequence[float],
    std: Sequence[float],
    prune_lambda: float,
    aug: dict | None,
    compute_dtype: Any,
    old_backbones: str = "loop",
) -> Callable:
    """The un-jitted per-batch update shared by the step and the scanned epoch.

    Returns:
      ``body(state, opt_state, data_x, data_y, idx, key, s) -> (state, opt_state,
      metrics)`` (see :func:`make_train_step`).
    """
    aug = dict(aug or {})

    def body(state, opt_state, data_x, data_y, idx, key, s):
        chex.assert_rank(idx, 1)
        valid = idx >= 0  # -1 marks the padding of a last, partial batch
        safe = jnp.where(valid, idx, 0)
        x = augment.augment(key, data_x[safe], mean, std, **aug)
        y = data_y[safe]
        weights = valid.astype(jnp.float32)
        params = model.trainable(state)

        def loss_fn(p):
            st = model.with_trainable(state, p)
            masks = None
            if st.mask_e is not None:
                masks = pruning.masks_from_embeddings(p["mask_e"], s)
            logits, aux_logits, _, new_bs = model.forward(
                st,
                x,
                train=True,
                masks=masks,
                compute_dtype=compute_dtype,
                old_backbones=old_backbones,
                sample_mask=valid,
            )
            loss, parts = model.der_loss(
                logits, aux_logits, y, state.num_old, aux_weight, weights=weights
            )
            if masks is not None:
                parts["sparsity"] = pruning.sparsity_loss(masks, state.base_width)
                loss = loss + prune_lambda * parts["sparsity"]
            hits = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            parts["acc"] = jnp.sum(weights * hits) / jnp.maximum(jnp.sum(weights), 1.0)
            return loss, (new_bs, parts)

        (loss, (new_bs, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if "mask_e" in grads:
            grads["mask_e"] = pruning.compensate_grads(grads["mask_e"], params["mask_e"], s)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if "mask_e" in params:
            params["mask_e"] = pruning.clip_embeddings(params["mask_e"])
        return model.with_trainable(state, params, new_bs), opt_state, {"loss": loss, **parts}

    return body


def make_train_step(
    tx: optax.GradientTransformation,
    *,
    aux_weight: float,
    mean: Sequence[float],
    std: Sequence[float],
    prune_lambda: float = 0.0,
    aug: dict | None = None,
    compute_dtype: Any = jnp.float32,
    old_backbones: str = "loop",
    donate: bool | None = None,
    wrap: Callable[[Callable], Callable] | None = None,
) -> Callable:
    """Builds the jitted DER train step.

    The step is ``(state, opt_state, data_x, data_y, idx, key, s) ->
    (state, opt_state, metrics)`` where ``data_x`` is the uint8 training set
    ``[N, H, W, C]`` (on device), ``data_y`` its int32 labels (positions in the
    class order), ``idx`` the int32 batch indices ``[B]`` (sharded), ``key`` a
    PRNG key for augmentation, and ``s`` the pruning temperature (ignored
    without masks). The old backbones only run forward (inference BN, stop
    gradient); only ``model.trainable(state)`` is differentiated.

    Args:
      tx: optimizer over ``model.trainable(state)``.
      aux_weight: lambda_a (0 at the first step, 1 after).
      mean, std: normalisation constants.
      prune_lambda: lambda_s of the sparsity loss (used when masks exist).
      aug: keyword arguments of :func:`augment.augment` (pad, flip, brightness).
      compute_dtype: compute dtype of the backbones (``jnp.bfloat16`` for mixed
        precision; changes the numbers). Parameters, optimizer state, logits and
        loss stay float32.
      old_backbones: ``"loop"`` (default; fastest on XLA:CPU) or ``"vmap"``, see
        :func:`den_jax.der.model.old_features`.
      donate: donate ``state`` and ``opt_state`` (deleted by the call); None =
        donate unless the backend is the CPU (see :func:`resolve_donate`).
      wrap: test hook applied to the python step before ``jax.jit`` (e.g.
        ``chex.assert_max_traces``); None leaves the step as it is.

    Returns:
      The jitted step.
    """
    body = _make_step_body(
        tx,
        aux_weight=aux_weight,
        mean=mean,
        std=std,
        prune_lambda=prune_lambda,
        aug=aug,
        compute_dtype=compute_dtype,
        old_backbones=old_backbones,
    )
    return _jit(body, donate, wrap)


def make_train_epoch(
    tx: optax.GradientTransformation,
    *,
    aux_weight: float,
    mean: Sequence[float],
    std: Sequence[float],
    prune_lambda: float = 0.0,
    aug: dict | None = None,
    compute_dtype: Any = jnp.float32,
    old_backbones: str = "loop",
    donate: bool | None = None,
    wrap: Callable[[Callable], Callable] | None = None,
) -> Callable:
    """Builds a jitted function that runs S full batches in one dispatch (``lax.scan``).

    The function is ``epoch(state, opt_state, data_x, data_y, idx, key,
    s_values) -> (state, opt_state, metrics)`` with ``idx`` the int32 indices
    ``[S, B]`` (sharded on the batch axis), ``key`` the epoch's PRNG key and
    ``s_values`` the float32 pruning temperatures ``[S]``. Batch ``b`` runs the
    same body as :func:`make_train_step` with key ``jax.random.fold_in(key, b)``
    and temperature ``s_values[b]``, exactly as :func:`run_epoch` calls the
    step, so the two agree up to float reduction order. ``metrics`` holds the
    per-batch values, ``{name: [S]}``; :func:`run_epoch_scanned` averages them.

    Args:
      tx, aux_weight, mean, std, prune_lambda, aug, compute_dtype, old_backbones:
        as in :func:`make_train_step`. The frozen backbones are closed over by
        the scanned body, not carried through the scan.
      donate: donate ``state`` and ``opt_state``; None = unless on CPU.
      wrap: test hook applied to the python epoch function before ``jax.jit``.

    Returns:
      The jitted epoch function.
    """
    body = _make_step_body(
        tx,
        aux_weight=aux_weight,
        mean=mean,
        std=std,
        prune_lambda=prune_lambda,
        aug=aug,
        compute_dtype=compute_dtype,
        old_backbones=old_backbones,
    )

    def epoch(state, opt_state, data_x, data_y, idx, key, s_values):
        chex.assert_rank(idx, 2)
        chex.assert_shape(s_values, (idx.shape[0],))

        old = state.old  # frozen: closed over, not part of the carry

        def scan_step(carry, xs):
            b, batch_idx, s = xs
            st, opt, metrics = body(
                carry[0].replace(old=old),
                carry[1],
                data_x,
                data_y,
                batch_idx,
                jax.random.fold_in(key, b),
                s,
            )
            return (st.replace(old=()), opt), metrics

        steps = jnp.arange(idx.shape[0], dtype=jnp.int32)
        (state, opt_state), metrics = jax.lax.scan(
            scan_step, (state.replace(old=()), opt_state), (steps, idx, s_values)
        )
        return state.replace(old=old), opt_state, metrics

    return _jit(epoch, donate, wrap)


def epoch_batches(
    rng: np.random.Generator, n: int, batch_size: int, num_devices: int = 1
) -> list[np.ndarray]:
    """Shuffled index batches of one epoch (torch ``DataLoader(shuffle=True)``).

    The last partial batch is kept (as PyCIL does); :func:`pad_batches` pads it to the
    full size with ``-1`` so that every batch has one shape (one compile) and shards
    evenly over ``num_devices``.
    """
    if batch_size % num_devices:
        raise ValueError(f"batch_size {batch_size} must be divisible by {num_devices} devices")
    perm = rng.permutation(n).astype(np.int32)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def pad_batches(batches: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Stacks ``batches`` into ``[S, B]`` (B = the first batch's size), padding with ``-1``.

    The train step reads ``-1`` as a padding row: it is gathered as row 0, takes no
    part in the BatchNorm statistics and has weight 0 in the loss and metrics, so a
    padded batch computes what the unpadded one would (up to float reduction order;
    only the augmentation draws of a padded batch differ, as they are drawn for B rows).

    Args:
      batches: index arrays, all of one size but possibly a smaller last one.

    Returns:
      ``(idx int32 [S, B], real sizes)``.

    Raises:
      ValueError: if a batch other than the last differs in size from the first.
    """
    if not batches:
        return np.zeros((0, 0), np.int32), []
    size = len(batches[0])
    sizes = [len(b) for b in batches]
    if any(n != size for n in sizes[:-1]) or sizes[-1] > size:
        raise ValueError(f"batches must be of one size but a smaller last one, got {sizes}")
    out = np.full((len(batches), size), -1, np.int32)
    for i, b in enumerate(batches):
        out[i, : len(b)] = b
    return out, sizes


def _epoch_mean(per_batch: Sequence[dict], sizes: Sequence[int]) -> dict:
    """Batch-size weighted mean of host metrics (float64 on the host)."""
    totals: dict[str, float] = {}
    for m, n in zip(per_batch, sizes):
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + v * n
    count = sum(sizes)
    return {k: v / max(count, 1) for k, v in totals.items()}


def _s_value(b: int, num_batches: int, s_max: float | None) -> float:
    """Pruning temperature of batch ``b`` (1 without pruning)."""
    return 1.0 if s_max is None else pruning.anneal_s(b, num_batches, s_max)


def run_epoch(
    step_fn: Callable,
    state,
    opt_state,
    data_x,
    data_y,
    batches: Sequence[np.ndarray],
    key: jax.Array,
    mesh: Mesh,
    *,
    s_max: float | None = None,
    on_batch: Callable[[dict], None] | None = None,
):
    """Runs the train step over ``batches``, one dispatch per batch.

    A smaller last batch is padded to the full size (:func:`pad_batches`), so the step
    compiles once per epoch shape.

    Args:
      step_fn: from :func:`make_train_step`.
      state, opt_state: DER state and optimizer state, placed replicated on the
        mesh first (a no-op when they already are; an unplaced first input would
        otherwise give the step a second trace). Donated when ``step_fn``
        donates: use only the returned ones.
      data_x, data_y: on-device training set (uint8 images, int32 labels).
      batches: index arrays from :func:`epoch_batches`.
      key: PRNG key of this epoch (folded with the batch index).
      mesh: device mesh.
      s_max: pruning s_max (annealed over the epoch), None without pruning.
      on_batch: called with the batch's *device* metrics after every dispatch
        (progress bars); reading them (``float``) syncs, so count batches instead.

    Returns:
      ``(state, opt_state, mean metrics over the epoch)``. Metrics stay on the
      device until the epoch ends and are read back with one ``device_get``.
    """
    state, opt_state = replicate((state, opt_state), mesh)
    padded, sizes = pad_batches(batches)
    per_batch = []
    for b, idx in enumerate(padded):
        state, opt_state, metrics = step_fn(
            state,
            opt_state,
            data_x,
            data_y,
            shard_batch(idx, mesh),
            jax.random.fold_in(key, b),
            jnp.float32(_s_value(b, len(padded), s_max)),
        )
        per_batch.append(metrics)
        if on_batch is not None:
            on_batch(metrics)
    host = jax.device_get(per_batch)  # the epoch's one host sync
    host = [{k: float(v) for k, v in m.items()} for m in host]
    return state, opt_state, _epoch_mean(host, sizes)


def run_epoch_scanned(
    epoch_fn: Callable,
    state,
    opt_state,
    data_x,
    data_y,
    batches: Sequence[np.ndarray],
    key: jax.Array,
    mesh: Mesh,
    *,
    s_max: float | None = None,
):
    """Runs one epoch as one scanned dispatch (a smaller last batch padded into it).

    The batches are stacked into ``[S, B]`` by :func:`pad_batches` (sharded on the
    batch axis) and run by ``epoch_fn`` (:func:`make_train_epoch`) with batch ``b``'s
    key ``fold_in(key, b)`` and temperature ``anneal_s(b, S, s_max)``: the
    computation of :func:`run_epoch` with the same keys, temperatures and metric
    averaging; only the dispatching differs.

    Args:
      epoch_fn: from :func:`make_train_epoch`.
      state, opt_state: DER state and optimizer state, placed replicated on the
        mesh first (as in :func:`run_epoch`). Donated when the function donates:
        use only the returned ones.
      data_x, data_y: on-device training set (uint8 images, int32 labels).
      batches: index arrays from :func:`epoch_batches` (all of one size but
        possibly the last).
      key: PRNG key of this epoch (folded with the batch index).
      mesh: device mesh.
      s_max: pruning s_max (annealed over the epoch), None without pruning.

    Returns:
      ``(state, opt_state, mean metrics over the epoch)``.

    Raises:
      ValueError: if a batch other than the last differs in size from the first.
    """
    padded, sizes = pad_batches(batches)
    n = len(sizes)
    if n == 0:
        return state, opt_state, {}
    state, opt_state = replicate((state, opt_state), mesh)
    idx = jax.device_put(padded, NamedSharding(mesh, PartitionSpec(None, "data")))
    s_values = np.asarray([_s_value(b, n, s_max) for b in range(n)], np.float32)
    state, opt_state, metrics = epoch_fn(
        state, opt_state, data_x, data_y, idx, key, replicate(s_values, mesh)
    )
    metrics = jax.device_get(metrics)  # the epoch's one host sync
    per_batch = [{k: float(v[b]) for k, v in metrics.items()} for b in range(n)]
    return state, opt_state, _epoch_mean(per_batch, sizes)
