"""DER training: optimizer, jitted data-parallel train step, one epoch.

PyCIL's recipe: SGD, momentum 0.9, coupled L2 weight decay on every parameter
(torch ``SGD(weight_decay=wd)`` = ``add_decayed_weights`` before the momentum
trace), batch 128, step-wise lr decay x0.1 at epoch milestones.

Data parallelism: the uint8 training set lives on the devices (replicated),
each step receives a batch of *indices* sharded over a 1-D ``"data"`` mesh of
all local devices, gathers and augments the images inside the jitted step, and
the model/optimizer state is replicated. Under ``jit`` the BatchNorm batch
statistics and the loss are computed over the *global* batch, so the result
equals the one-device run up to floating-point reduction order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from den_jax.der import augment, model, pruning


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """1-D mesh ``("data",)`` over ``devices`` (default: all local devices)."""
    devs = np.asarray(list(devices) if devices is not None else jax.local_devices())
    return Mesh(devs, ("data",))


def replicate(tree, mesh: Mesh):
    """Places a pytree fully replicated on the mesh."""
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


def make_train_step(
    tx: optax.GradientTransformation,
    *,
    aux_weight: float,
    mean: Sequence[float],
    std: Sequence[float],
    prune_lambda: float = 0.0,
    aug: dict | None = None,
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
    """
    aug = dict(aug or {})

    def step(state, opt_state, data_x, data_y, idx, key, s):
        x = augment.augment(key, data_x[idx], mean, std, **aug)
        y = data_y[idx]
        params = model.trainable(state)

        def loss_fn(p):
            st = model.with_trainable(state, p)
            masks = None
            if st.mask_e is not None:
                masks = pruning.masks_from_embeddings(p["mask_e"], s)
            logits, aux_logits, _, new_bs = model.forward(st, x, train=True, masks=masks)
            loss, parts = model.der_loss(logits, aux_logits, y, state.num_old, aux_weight)
            if masks is not None:
                parts["sparsity"] = pruning.sparsity_loss(masks, state.base_width)
                loss = loss + prune_lambda * parts["sparsity"]
            parts["acc"] = jnp.mean(jnp.argmax(logits, -1) == y)
            return loss, (new_bs, parts)

        (loss, (new_bs, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if "mask_e" in grads:
            grads["mask_e"] = pruning.compensate_grads(grads["mask_e"], params["mask_e"], s)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if "mask_e" in params:
            params["mask_e"] = pruning.clip_embeddings(params["mask_e"])
        return model.with_trainable(state, params, new_bs), opt_state, {"loss": loss, **parts}

    return jax.jit(step)


def epoch_batches(
    rng: np.random.Generator, n: int, batch_size: int, num_devices: int = 1
) -> list[np.ndarray]:
    """Shuffled index batches of one epoch (torch ``DataLoader(shuffle=True)``).

    The last partial batch is kept (as PyCIL does), cut to a multiple of
    ``num_devices`` so it can be sharded (at most ``num_devices-1`` samples of
    the epoch are skipped, none on one device).
    """
    if batch_size % num_devices:
        raise ValueError(f"batch_size {batch_size} must be divisible by {num_devices} devices")
    perm = rng.permutation(n).astype(np.int32)
    out = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    last = len(out[-1]) - len(out[-1]) % num_devices
    out[-1] = out[-1][:last]
    return [b for b in out if len(b)]


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
    """Runs the train step over ``batches``.

    Args:
      step_fn: from :func:`make_train_step`.
      state, opt_state: replicated DER state and optimizer state.
      data_x, data_y: on-device training set (uint8 images, int32 labels).
      batches: index arrays from :func:`epoch_batches`.
      key: PRNG key of this epoch (folded with the batch index).
      mesh: device mesh.
      s_max: pruning s_max (annealed over the epoch), None without pruning.
      on_batch: called with host metrics after every batch (progress bars).

    Returns:
      ``(state, opt_state, mean metrics over the epoch)``.
    """
    totals: dict[str, float] = {}
    count = 0
    for b, idx in enumerate(batches):
        s = 1.0 if s_max is None else pruning.anneal_s(b, len(batches), s_max)
        state, opt_state, metrics = step_fn(
            state,
            opt_state,
            data_x,
            data_y,
            shard_batch(idx, mesh),
            jax.random.fold_in(key, b),
            jnp.float32(s),
        )
        m = {k: float(v) for k, v in metrics.items()}
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + v * len(idx)
        count += len(idx)
        if on_batch is not None:
            on_batch(m)
    return state, opt_state, {k: v / max(count, 1) for k, v in totals.items()}
