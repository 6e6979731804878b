"""Channel-mask pruning of DER (Yan, Xie, He, CVPR 2021, section 3.3).

Neither the official code nor PyCIL released this stage; this module follows the
paper's description (adapted from HAT, Serra et al. 2018):

* mask m_l = sigma(s * e_l) per output channel, e_l learned with the weights;
* s annealed within every epoch: s_b = 1/s_max + (s_max - 1/s_max)(b-1)/(B-1)
  for batch b = 1..B;
* gradient compensation g'_e = sigma(e)(1-sigma(e)) / (s sigma(se)(1-sigma(se))) g_e;
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
    "binary_masks",
    "clip_embeddings",
    "compensate_grads",
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


def masks_from_embeddings(mask_e, s) -> tuple:
    """m_l = sigma(s * e_l) for every block."""
    return tuple(jax.nn.sigmoid(s * e) for e in mask_e)


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


def compensate_grads(grads_e, mask_e, s, eps: float = 1e-12) -> tuple:
    """HAT-style gradient compensation for the embeddings (see module docstring)."""

    def one(g, e):
        sig_e = jax.nn.sigmoid(e)
        se = jnp.clip(s * e, -50.0, 50.0)
        sig_se = jax.nn.sigmoid(se)
        return g * sig_e * (1 - sig_e) / (s * sig_se * (1 - sig_se) + eps)

    return tuple(one(g, e) for g, e in zip(grads_e, mask_e))


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
