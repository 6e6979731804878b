"""Bias correction of the DER main head after a step (t > 1).

Two options, as the two reference codes do it:

* :func:`weight_align` -- PyCIL ``DERNet.weight_align`` (from WA, Zhao et al.
  2020): gamma = mean_{old c} ||W_c|| / mean_{new c} ||W_c||, new rows scaled by
  gamma (norms over all F*t inputs), the bias left as it is.
* :func:`balanced_finetune` -- the official code's classifier-learning stage
  (``convnet/utils.finetune_last_layer``): reset the head, build a
  class-balanced subset (each class cut to the smallest class count), train
  the head only (the network in eval mode) with CE(logits / delta), delta = 5,
  SGD lr 0.1, momentum 0.9, wd 5e-4, 30 epochs, lr x0.1 at epoch 15, batch 128,
  training augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from den_jax import losses
from den_jax.der import augment, model, pruning

__all__ = [
    "balanced_finetune",
    "balanced_subset",
    "weight_align",
]


def weight_align(state: model.DERState) -> tuple[model.DERState, float]:
    """Scales the new classes' head columns so their mean norm matches the old ones'.

    Args:
      state: state at the end of a step with ``num_old > 0``.

    Returns:
      ``(state, gamma)``; with ``num_old == 0`` the state is returned unchanged, gamma 1.
    """
    if state.num_old == 0:
        return state, 1.0
    w = state.fc["kernel"]  # [F*t, num_total]; column c = class c
    norms = jnp.linalg.norm(w, axis=0)
    gamma = jnp.mean(norms[: state.num_old]) / jnp.mean(norms[state.num_old : state.num_seen])
    cols = jnp.arange(w.shape[1])
    is_new = (cols >= state.num_old) & (cols < state.num_seen)
    kernel = jnp.where(is_new, w * gamma, w)
    return state.replace(fc={"kernel": kernel, "bias": state.fc["bias"]}), float(gamma)


def balanced_subset(labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator):
    """Cuts every class among ``labels[indices]`` to the smallest class count (random pick)."""
    labs = labels[indices]
    classes, counts = np.unique(labs, return_counts=True)
    n = int(counts.min())
    keep = [rng.choice(indices[labs == c], n, replace=False) for c in classes]
    return np.sort(np.concatenate(keep)).astype(np.int32)


def balanced_finetune(
    state: model.DERState,
    key: jax.Array,
    data_x: jax.Array,
    data_y: jax.Array,
    indices: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    rng: np.random.Generator,
    epochs: int = 30,
    lr: float = 0.1,
    milestones: Sequence[int] = (15,),
    weight_decay: float = 5e-4,
    temperature: float = 5.0,
    batch_size: int = 128,
    aug: dict | None = None,
) -> model.DERState:
    """The official code's balanced classifier retraining (see module docstring).

    Args:
      state: state at the end of a step.
      key: PRNG key (head reset and augmentation).
      data_x, data_y: training images (uint8) and order-position labels.
      indices: candidate samples (memory + current step's data).
      mean, std: normalisation.
      rng: numpy generator (balanced subset, shuffling).
      epochs, lr, milestones, weight_decay, temperature, batch_size: the recipe.
      aug: augmentation options (training transform).

    Returns:
      The state with a retrained main head (backbones untouched).
    """
    subset = balanced_subset(np.asarray(data_y), np.asarray(indices), rng)
    k_init, key = jax.random.split(key)
    fc = model.linear_init(k_init, state.fc["kernel"].shape[0], state.num_total)
    steps = -(-len(subset) // batch_size)
    schedule = optax.piecewise_constant_schedule(lr, {m * steps: 0.1 for m in milestones})
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=0.9))
    opt = tx.init(fc)
    aug = dict(aug or {})

    @jax.jit
    def step(fc, opt, idx, k):
        x = augment.augment(k, data_x[idx], mean, std, **aug)
        y = data_y[idx]
        masks = None if state.mask_e is None else pruning.binary_masks(state.mask_e)
        _, _, feats, _ = model.forward(state, x, train=False, masks=masks)
        feats = jax.lax.stop_gradient(feats)

        def loss_fn(p):
            logits = feats @ p["kernel"] + p["bias"]
            logits = jnp.where(jnp.arange(state.num_total) < state.num_seen, logits, model.NEG)
            return losses.softmax_ce(logits / temperature, y)

        loss, g = jax.value_and_grad(loss_fn)(fc)
        upd, opt = tx.update(g, opt, fc)
        return optax.apply_updates(fc, upd), opt, loss

    for e in range(epochs):
        perm = rng.permutation(subset)
        for b in range(0, len(perm), batch_size):
            key, k = jax.random.split(key)
            fc, opt, _ = step(fc, opt, jnp.asarray(perm[b : b + batch_size]), k)
        del e
    return state.replace(fc=fc)
