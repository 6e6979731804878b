"""Batched evaluation and herding feature extraction from device-resident uint8 data.

:func:`den_jax.der.evaluate.predict_all` takes host images and uploads every batch as
it goes. :func:`extract` instead reads an on-device uint8 array (the training set the
train step indexes, ``DeviceData.x``, or the test set ``DeviceData.x_test``) by index:
each fixed-size batch of indices is gathered on the device and run through the jitted
eval forward of :func:`den_jax.der.evaluate.make_predict`, so the forward compiles once
per ``(batch_size, image shape, state structure)`` whichever array it reads, no image
crosses the host boundary, and the outputs are read back once. The last batch is padded
with index 0 and its extra rows are dropped; in eval mode every BatchNorm uses running
statistics, so padding rows cannot change the real rows.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.der import model

__all__ = ["extract"]


@jax.jit
def _gather(data_x: jax.Array, idx: jax.Array) -> jax.Array:
    return data_x[idx]


def extract(
    predict: Callable,
    state: model.DERState,
    data_x: jax.Array,
    idx: np.ndarray | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and features of ``data_x[idx]``, batched, read back once.

    Args:
      predict: the jitted eval forward ``(state, uint8 images) -> (logits, features)``
        (:func:`den_jax.der.evaluate.make_predict`).
      state: the DER state.
      data_x: uint8 images on the device ``[N, H, W, C]``.
      idx: positions to extract (default: all ``N``).
      batch_size: batch of the compiled forward (every call has this shape).

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
    outs = [predict(state, _gather(data_x, jnp.asarray(b))) for b in padded]
    host = jax.device_get(outs)  # one read-back for the whole set
    logits = np.concatenate([lg for lg, _ in host])[:n]
    feats = np.concatenate([ft for _, ft in host])[:n]
    return logits, feats
