"""ResNet-32 for CIFAR (He et al. 2016, option-A shortcuts) in flax linen.

This is the backbone of DER (Yan, Xie, He, CVPR 2021 -- Dynamically Expandable
Representation, not Dark Experience Replay) as PyCIL builds it
(``convs/cifar_resnet.py``): a 3x3 stem conv to ``w`` channels, then 3 stages x
5 basic blocks with ``w, 2w, 4w`` channels (``w = 16``), parameter-free option-A
shortcuts (stride-2 subsampling, new channels zero-filled), global average
pooling to a ``4w = 64``-d feature. 463,504 parameters at ``w = 16`` for
3-channel input.

BatchNorm matches torch's (momentum 0.1 -> flax ``momentum=0.9``, eps 1e-5).
One difference remains: torch updates the running variance with the unbiased
batch variance, flax with the biased one (a factor n/(n-1), ~1.008 at batch 128).

Channel-mask pruning (DER section 3.3, see ``pruning.py``) acts on the *inner*
channels of every basic block (the output of its first conv). Removing such a
channel deletes one output filter of conv1, one BN channel and one input slice
of conv2, so a materialised network computes exactly what the masked one does.
``inner_widths`` gives the number of inner channels of each of the 15 blocks.

``dtype`` is the compute dtype (float32 by default; bfloat16 for mixed
precision): convolutions and BatchNorm outputs run in it, while parameters,
BatchNorm statistics and the pooled features stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "BLOCKS_PER_STAGE",
    "BasicBlock",
    "NUM_BLOCKS",
    "NUM_STAGES",
    "ResNet32",
    "count_backbone_params",
    "full_inner_widths",
    "init_backbone",
    "stage_widths",
]

NUM_STAGES = 3
BLOCKS_PER_STAGE = 5
NUM_BLOCKS = NUM_STAGES * BLOCKS_PER_STAGE

# torch kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (9 * C_out)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _bn(train: bool, name: str, dtype: Any = jnp.float32) -> nn.BatchNorm:
    """Torch-equivalent BatchNorm; ``dtype`` is the output dtype.

    Batch and running statistics are float32 whatever ``dtype`` is (flax's
    ``force_float32_reductions``, float32 ``batch_stats``).
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        name=name,
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def _rows(sample_mask: jax.Array | None, h: jax.Array) -> jax.Array | None:
    """BatchNorm ``mask`` from a per-row bool ``[B]``: padding rows leave the statistics."""
    if sample_mask is None:
        return None
    return jnp.broadcast_to(sample_mask[:, None, None, None], h.shape)


def _conv3x3(features: int, name: str, dtype: Any, stride: int = 1) -> nn.Conv:
    """Bias-free 3x3 conv, padding 1, torch ResNet init; float32 kernel, ``dtype`` compute."""
    return nn.Conv(
        features,
        (3, 3),
        strides=stride,
        padding=1,
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def stage_widths(base_width: int) -> tuple[int, int, int]:
    """Returns the channel count of the three stages: ``(w, 2w, 4w)``."""
    return (base_width, 2 * base_width, 4 * base_width)


def full_inner_widths(base_width: int) -> tuple[int, ...]:
    """Unpruned inner widths of the 15 blocks: ``(w,)*5 + (2w,)*5 + (4w,)*5``."""
    return tuple(c for c in stage_widths(base_width) for _ in range(BLOCKS_PER_STAGE))


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU [-> x mask] -> conv3x3 -> BN -> + shortcut -> ReLU.

    Attributes:
      out_channels: residual-stream channels after the block.
      inner_channels: channels of the first conv's output (prunable).
      stride: stride of the first conv (2 at the first block of stages 2 and 3).
      dtype: compute dtype of convs and BatchNorm outputs (parameters stay float32).
    """

    out_channels: int
    inner_channels: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        train: bool,
        sample_mask: jax.Array | None = None,
    ) -> jax.Array:
        h = _conv3x3(self.inner_channels, "conv1", self.dtype, self.stride)(x)
        h = nn.relu(_bn(train, "bn1", self.dtype)(h, mask=_rows(sample_mask, h)))
        if mask is not None:
            h = h * mask.astype(h.dtype)  # f' = f (.) m, DER eq. (mask), per output channel
        h = _conv3x3(self.out_channels, "conv2", self.dtype)(h)
        h = _bn(train, "bn2", self.dtype)(h, mask=_rows(sample_mask, h))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            # Option A: subsample, then append zero channels (PyCIL DownsampleA).
            shortcut = x[:, :: self.stride, :: self.stride, :]
            pad = self.out_channels - shortcut.shape[-1]
            shortcut = jnp.concatenate([shortcut, jnp.zeros_like(shortcut[..., :pad])], axis=-1)
        return nn.relu(h + shortcut)


class ResNet32(nn.Module):
    """CIFAR ResNet-32 feature extractor (no classifier).

    Attributes:
      base_width: channels of the first stage (16 for the paper's ResNet-32).
      inner_widths: inner channels of the 15 blocks (None = unpruned).
      dtype: compute dtype of the convs and BatchNorm outputs (float32 default;
        bfloat16 for mixed precision). Parameters and BN statistics are float32
        either way, and the pooled features are returned in float32.
    """

    base_width: int = 16
    inner_widths: Sequence[int] | None = None
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        return 4 * self.base_width

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        masks: Sequence[jax.Array] | None = None,
        sample_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Computes features.

        Args:
          x: float images ``[B, H, W, C]`` (already normalised).
          train: BatchNorm uses batch statistics and updates running ones.
          masks: optional 15 per-channel masks ``[inner_widths[i]]``.
          sample_mask: optional bool ``[B]``; rows that are False (padding of a last,
            partial batch) take no part in the BatchNorm batch statistics (train mode).

        Returns:
          float32 features ``[B, 4 * base_width]``.
        """
        inner = tuple(self.inner_widths or full_inner_widths(self.base_width))
        if len(inner) != NUM_BLOCKS:
            raise ValueError(f"inner_widths must have {NUM_BLOCKS} entries, got {len(inner)}")
        if masks is not None and len(masks) != NUM_BLOCKS:
            raise ValueError(f"masks must have {NUM_BLOCKS} entries, got {len(masks)}")
        h = _conv3x3(self.base_width, "conv0", self.dtype)(x)
        h = nn.relu(_bn(train, "bn0", self.dtype)(h, mask=_rows(sample_mask, h)))
        i = 0
        for s, c in enumerate(stage_widths(self.base_width)):
            for b in range(BLOCKS_PER_STAGE):
                stride = 2 if (s > 0 and b == 0) else 1
                h = BasicBlock(c, inner[i], stride, self.dtype, name=f"block{i}")(
                    h, None if masks is None else masks[i], train, sample_mask
                )
                i += 1
        # Global average pooling in float32 (a no-op cast in float32 compute).
        return jnp.mean(h.astype(jnp.float32), axis=(1, 2))


def init_backbone(key: jax.Array, base_width: int, in_channels: int, image_size: int = 32) -> dict:
    """Initialises an unpruned ResNet-32.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (BN gamma=1, beta=0, mean 0, var 1).
    """
    x = jnp.zeros((1, image_size, image_size, in_channels), jnp.float32)
    variables = ResNet32(base_width).init(key, x, train=False)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def count_backbone_params(tree) -> int:
    """Number of scalars in a pytree of backbone (or head) parameters."""
    return int(sum(x.size for x in jax.tree.leaves(tree)))
