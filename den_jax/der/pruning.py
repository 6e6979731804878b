"""Channel-mask pruning of DER (Yan, Xie, He, CVPR 2021, section 3.3).

Neither the official code nor PyCIL released this stage; this module follows the
paper's description (adapted from HAT, Serra et al. 2018):

* mask m_l = sigma(s * e_l) per output channel, e_l learned with the weights;
* s annealed within every epoch: s_b = 1/s_max + (s_max - 1/s_max)(b-1)/(B-1)
  for batch b = 1..B;
* gradient compensation g'_e = sigma(e)(1-sigma(e)) / (s sigma(se)(1-sigma(se))) g_e,
  i.e. g'_e = sigma'(e) dL/dm: :func:`mask` is a ``jax.custom_vjp`` whose backward
  returns exactly this product (no division, no recomputed sigma'(s e)), so it is
  correct for every s e in float32 and bfloat16 (the autodiff-then-divide form is 0/0
  once sigma(s e) saturates, s e > ~17 in float32). Choice: the VJP is the paper's form
  (factor 1). HAT's code also multiplies by s_max (its ``smax/s * (cosh(s e)+1)/(cosh(e)+1)``
  equals ``s_max sigma'(e)/(s sigma'(s e))``); here that factor is a separate gradient
  scale on the embeddings applied in the optimizer (``DERConfig.mask_grad_scale``), so the
  paper's gradient and the embeddings' effective learning rate are named apart;
* sparsity loss L_S = sum_l K_l ||m_{l-1}||_1 ||m_l||_1 / sum_l K_l c_{l-1} c_l,
  total loss L_ER + lambda_s * L_S;
* after the step, binarise the masks (e > 0 <=> sigma(s_max e) > 1/2) and drop
  the masked channels, which gives a smaller frozen backbone F^P_t.

Scope (a documented choice): masks act on the inner channel of each of the 15
basic blocks (the output of conv1). These channels can be removed exactly; the
residual-stream channels (stem, conv2 outputs) are shared by the option-A
shortcuts across a stage and are kept. With only inner masks, L_S reduces to
the fraction of the prunable conv weights kept:
L_S = sum_i 9 (c_in_i + c_out_i) ||m_i||_1 / sum_i 9 (c_in_i + c_out_i) w_i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.der import resnet

__all__ = [
    "EMB_CLIP",
    "anneal_s",
    "backbone_macs",
    "binary_masks",
    "clip_embeddings",
    "compensate_grads",
    "mask",
    "masks_from_embeddings",
    "materialise",
    "sparsity_loss",
]

EMB_CLIP = 6.0  # HAT's thres_emb: |e| <= 6 after each update


def anneal_s(batch_index: int, num_batches: int, s_max: float) -> float:
    """s for 0-based batch ``batch_index`` of an epoch with ``num_batches`` batches."""
    if num_batches <= 1:
        return float(s_max)
    return 1.0 / s_max + (s_max - 1.0 / s_max) * batch_index / (num_batches - 1)


@jax.custom_vjp
def mask(e: jax.Array, s: jax.Array) -> jax.Array:
    """m = sigma(s * e) with the compensated gradient d m / d e := sigma'(e) (paper, 3.3).

    The backward pass maps the cotangent ``g = dL/dm`` to ``sigma(e) sigma(-e) g`` for
    ``e`` (= sigma'(e) dL/dm, the paper's g'_e, computed without a division) and to 0 for
    ``s`` (a schedule, not a parameter). Works in the dtype of ``e``.

    Args:
      e: embeddings, any shape.
      s: temperature (scalar, may be traced).

    Returns:
      The soft mask, same shape and dtype as ``e``.
    """
    return jax.nn.sigmoid(jnp.asarray(s, e.dtype) * e)


def _mask_fwd(e, s):
    return mask(e, s), (e, s)


def _mask_bwd(res, g):
    e, s = res
    # sigma(e) sigma(-e) is sigma'(e) without cancellation; float32 inside, one rounding.
    e32 = e.astype(jnp.float32)
    de = g.astype(jnp.float32) * (jax.nn.sigmoid(e32) * jax.nn.sigmoid(-e32))
    return de.astype(e.dtype), jnp.zeros_like(s)


mask.defvjp(_mask_fwd, _mask_bwd)


def masks_from_embeddings(mask_e, s) -> tuple:
    """m_l = sigma(s * e_l) for every block, with the compensated gradient (:func:`mask`)."""
    s = jnp.asarray(s, jnp.float32)
    return tuple(mask(e, s) for e in mask_e)


def binary_masks(mask_e) -> tuple:
    """The masks at s -> infinity: 1 where e > 0, else 0 (float32)."""
    return tuple((e > 0).astype(jnp.float32) for e in mask_e)


def _block_io(base_width: int, in_channels: int) -> list[tuple[int, int]]:
    """(c_in, c_out) of every block: the residual-stream widths around it."""
    io, c_prev = [], base_width
    for c in resnet.stage_widths(base_width):
        for _ in range(resnet.BLOCKS_PER_STAGE):
            io.append((c_prev, c))
            c_prev = c
    del in_channels  # the stem is not masked
    return io


def sparsity_loss(masks, base_width: int) -> jax.Array:
    """L_S: the (soft) fraction of prunable conv weights kept, in [0, 1]."""
    io = _block_io(base_width, 0)
    num = sum(9.0 * (ci + co) * jnp.sum(m) for (ci, co), m in zip(io, masks))
    den = sum(9.0 * (ci + co) * w for (ci, co), w in zip(io, resnet.full_inner_widths(base_width)))
    return num / den


def compensate_grads(grads_e, mask_e, s) -> tuple:
    """The identity: :func:`mask`'s VJP already returns the compensated gradient.

    Kept so that callers written for the earlier two-stage form (autodiff, then
    divide by s sigma'(s e)) keep working; the division path is gone.

    Args:
      grads_e: gradients of the embeddings (already compensated).
      mask_e, s: unused.

    Returns:
      ``grads_e`` as a tuple.
    """
    del mask_e, s
    return tuple(grads_e)


def backbone_macs(
    base_width: int,
    inner_widths=None,
    *,
    in_channels: int = 3,
    image_size: int = 32,
) -> int:
    """Multiply-accumulates of one ResNet-32 forward pass of one image (convolutions only).

    Stem ``H W 9 c_in w``; block i: conv1 ``H_i W_i 9 c_in_i k_i``, conv2 ``H_i W_i 9 k_i
    c_out_i`` with ``k_i`` its (possibly pruned) inner width and ``H_i`` the block's output
    size (SAME padding, stride 2 at the first block of stages 2 and 3). BN, ReLU, pooling
    and the heads are left out (< 1% here). FLOPs = 2 MACs.

    Args:
      base_width: first-stage channels.
      inner_widths: 15 inner widths (None = unpruned).
      in_channels, image_size: input images ``[image_size, image_size, in_channels]``.

    Returns:
      MACs per image (0.06886e9 for the unpruned width-16 net on 32x32x3).
    """
    inner = tuple(inner_widths or resnet.full_inner_widths(base_width))
    h = image_size
    macs = h * h * 9 * in_channels * base_width
    for i, ((ci, co), k) in enumerate(zip(_block_io(base_width, in_channels), inner)):
        if i in (resnet.BLOCKS_PER_STAGE, 2 * resnet.BLOCKS_PER_STAGE):
            h = -(-h // 2)
        macs += h * h * 9 * (ci * k + k * co)
    return int(macs)


def clip_embeddings(mask_e) -> tuple:
    """Keeps |e| <= EMB_CLIP so sigma(s e) stays trainable (HAT)."""
    return tuple(jnp.clip(e, -EMB_CLIP, EMB_CLIP) for e in mask_e)


def materialise(backbone: dict, mask_e) -> tuple[dict, tuple[int, ...]]:
    """Builds the smaller backbone F^P_t that the binarised masks describe.

    For every block i with kept channels K: conv1 kernel ``[3,3,c_in,w] -> [..., K]``,
    bn1 scale/bias/mean/var ``[w] -> [K]``, conv2 kernel ``[3,3,w,c_out] -> [:, :, K, :]``.
    A block whose channels are all masked keeps one channel with zero conv2
    input weights, so the output is unchanged and no zero-width conv appears.

    Args:
      backbone: ``{"params", "batch_stats"}`` of a full-width ResNet32.
      mask_e: the 15 embedding arrays.

    Returns:
      ``(variables, inner_widths)`` for ``ResNet32(base_width, inner_widths)``;
      with ``masks=binary_masks(mask_e)`` the full network computes the same
      function.
    """
    params = jax.tree.map(np.asarray, backbone["params"])
    stats = jax.tree.map(np.asarray, backbone["batch_stats"])
    widths = []
    for i, e in enumerate(mask_e):
        name = f"block{i}"
        keep = np.flatnonzero(np.asarray(e) > 0)
        dead = keep.size == 0
        if dead:
            keep = np.array([0])
        p, st = dict(params[name]), dict(stats[name])
        p["conv1"] = {"kernel": p["conv1"]["kernel"][..., keep]}
        p["bn1"] = {k: v[keep] for k, v in p["bn1"].items()}
        st["bn1"] = {k: v[keep] for k, v in st["bn1"].items()}
        k2 = p["conv2"]["kernel"][:, :, keep, :]
        p["conv2"] = {"kernel": np.zeros_like(k2) if dead else k2}
        params[name], stats[name] = p, st
        widths.append(int(keep.size))
    to_jnp = lambda t: jax.tree.map(jnp.asarray, t)
    return {"params": to_jnp(params), "batch_stats": to_jnp(stats)}, tuple(widths)
