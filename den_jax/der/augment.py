"""On-device data augmentation and normalisation, jit-friendly.

Reproduces PyCIL's / the official DER code's CIFAR training transform
(``RandomCrop(32, padding=4)`` with zero fill, ``RandomHorizontalFlip()``,
``ColorJitter(brightness=63/255)``, ``ToTensor()``, ``Normalize(mean, std)``)
on uint8 batches that live on the device, so no host pipeline is needed. Float batches
(already normalised, ``StreamData.from_float``) are augmented as they are: pass
``brightness=0`` (the jitter assumes [0, 1] pixels); zero padding is then the mean colour.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from den_jax.data.images import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
)

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "augment",
    "normalize",
]


def normalize(x: jax.Array, mean, std) -> jax.Array:
    """uint8 or [0,1] float ``[B,H,W,C]`` -> ``(x/255 - mean) / std`` (float32).

    Args:
      x: images; uint8 values are scaled by 1/255 first.
      mean, std: per-channel sequences of length C.
    """
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    mean = jnp.asarray(np.asarray(mean, np.float32))
    std = jnp.asarray(np.asarray(std, np.float32))
    return (x - mean) / std


def augment(
    key: jax.Array,
    x: jax.Array,
    mean,
    std,
    *,
    pad: int = 4,
    flip: bool = True,
    brightness: float = 63.0 / 255.0,
) -> jax.Array:
    """Random crop (zero padding), horizontal flip, brightness jitter, normalise.

    Args:
      key: PRNG key.
      x: uint8 images ``[B, H, W, C]`` (scaled by 1/255), or float images used as they
        are (e.g. already normalised, with ``mean`` 0, ``std`` 1 and ``brightness=0``).
      mean, std: per-channel normalisation constants.
      pad: zero padding of the random crop (4 in DER/PyCIL); 0 disables.
      flip: random horizontal flip with probability 1/2.
      brightness: factor b of ColorJitter: multiply by U(1-b, 1+b), clip to [0,1].

    Returns:
      float32 ``[B, H, W, C]``, normalised.
    """
    chex.assert_rank(x, 4)
    b, h, w, c = x.shape
    k_crop, k_flip, k_bri = jax.random.split(key, 3)
    img = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    if pad > 0:
        padded = jnp.pad(img, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offs = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
        img = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
            padded, offs
        )
    if flip:
        do = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
        img = jnp.where(do, img[:, :, ::-1, :], img)
    if brightness > 0:
        factor = jax.random.uniform(
            k_bri, (b, 1, 1, 1), minval=max(0.0, 1 - brightness), maxval=1 + brightness
        )
        img = jnp.clip(img * factor, 0.0, 1.0)
    return normalize(img, mean, std)
