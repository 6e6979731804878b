"""Batched evaluation and herding feature extraction from device-resident uint8 data.

:func:`den_jax.der.evaluate.predict_all` takes host images and uploads every batch as
it goes. :func:`extract` instead reads an on-device uint8 array (the same one the train
step indexes, ``DeviceData.x``) by index: one jitted function gathers a fixed-size batch
of indices, normalises and runs the eval forward pass, so it compiles once per
``(batch_size, image shape, state structure)`` and no image crosses the host boundary.
The last batch is padded with index 0 and its extra rows are dropped; in eval mode every
BatchNorm uses running statistics, so padding rows cannot change the real rows.
"""

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from den_jax.der import augment, model, pruning

__all__ = ["extract", "make_extract"]


def make_extract(mean: Sequence[float], std: Sequence[float], old_backbones: str = "loop"):
    """Jitted ``(state, data_x uint8 [N, H, W, C], idx int32 [B]) -> (logits, features)``.

    Args:
      mean, std: normalisation constants (test transform = normalise only).
      old_backbones: how the frozen backbones run (:func:`den_jax.der.model.old_features`).

    Returns:
      The jitted function; logits ``[B, num_total]`` and features ``[B, F*t]``, float32.
    """

    @jax.jit
    def fn(state: model.DERState, data_x: jax.Array, idx: jax.Array):
        chex.assert_rank(idx, 1)
        x = augment.normalize(data_x[idx], mean, std)
        masks = None if state.mask_e is None else pruning.binary_masks(state.mask_e)
        logits, _, feats, _ = model.forward(
            state, x, train=False, masks=masks, old_backbones=old_backbones
        )
        return logits, feats

    return fn


def extract(
    fn,
    state: model.DERState,
    data_x: jax.Array,
    idx: np.ndarray | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and features of ``data_x[idx]``, batched, read back once.

    Args:
      fn: from :func:`make_extract`.
      state: the DER state.
      data_x: uint8 images on the device ``[N, H, W, C]``.
      idx: positions to extract (default: all ``N``).
      batch_size: batch of the compiled function (every call has this shape).

    Returns:
      numpy ``(logits [len(idx), num_total], features [len(idx), F*t])``.

    Raises:
      ValueError: if there is nothing to extract.
    """
    idx = np.arange(data_x.shape[0], dtype=np.int32) if idx is None else np.asarray(idx, np.int32)
    n = len(idx)
    if n == 0:
        raise ValueError("extract needs at least one index")
    pad = (-n) % batch_size
    padded = np.concatenate([idx, np.zeros(pad, np.int32)]).reshape(-1, batch_size)
    outs = [fn(state, data_x, jnp.asarray(b)) for b in padded]
    host = jax.device_get(outs)  # one read-back for the whole set
    logits = np.concatenate([lg for lg, _ in host])[:n]
    feats = np.concatenate([ft for _, ft in host])[:n]
    return logits, feats
