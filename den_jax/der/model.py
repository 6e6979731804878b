"""DER state, expansion, forward pass and loss (Yan, Xie, He, CVPR 2021, section 3).

DER = *Dynamically Expandable Representation* (not Dark Experience Replay).

At step t the super-feature is u = [Phi_{t-1}(x), F_t(x)] (section 3.1): the
features of the t-1 frozen backbones (inference-mode BatchNorm, no gradient,
statistics untouched) concatenated with the new backbone's. The main head H_t
maps u to the classes seen so far; the auxiliary head H_a maps F_t(x) to
|Y_t|+1 outputs (every old class -> 0). Loss (section 3.2):
L = CE(H_t(u), y) + lambda_a * CE(H_a(F_t(x)), y_aux).

Layout choices:

* the old backbones are a tuple of ``{"params", "batch_stats"}`` trees outside
  the optimised tree (widths may differ after pruning); :func:`old_features`
  stacks the backbones of equal width inside the traced function and runs each
  group as one vmapped ResNet;
* the main head is padded to ``num_total`` classes: kernel ``[F*t, num_total]``
  with the logits of unseen classes masked to a large negative value, so only
  the feature width changes between steps;
* labels are *positions in the class order* (0..num_total-1), so the classes of
  step t are ``[num_old, num_seen)``.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from den_jax import losses
from den_jax.der import resnet

__all__ = [
    "DERState",
    "NEG",
    "abstract_state",
    "add_classes",
    "aux_labels",
    "der_loss",
    "expand",
    "forward",
    "init_der_state",
    "init_mask_embeddings",
    "linear_init",
    "old_features",
    "OLD_BACKBONES",
    "param_counts",
    "trainable",
    "with_trainable",
]

NEG = -1e9  # logit of classes not seen yet


@flax.struct.dataclass
class DERState:
    """Everything DER learns, at one incremental step.

    Attributes:
      old: frozen backbones, one ``{"params", "batch_stats"}`` per earlier step.
      new: the backbone being trained, ``{"params", "batch_stats"}`` (full width).
      fc: main head ``{"kernel": [F * (len(old)+1), num_total], "bias": [num_total]}``.
      aux: auxiliary head ``{"kernel": [F, num_new + 1], "bias": [num_new + 1]}``.
      mask_e: channel-mask embeddings e_l of the new backbone (15 arrays) or None.
      old_inner_widths: inner widths of each old backbone (static).
      base_width: backbone base width (static; F = 4 * base_width).
      num_old: classes seen before this step (static).
      num_seen: classes seen including this step (static).
      num_total: classes over the whole stream; size of the padded head (static).
    """

    old: tuple
    new: dict
    fc: dict
    aux: dict
    mask_e: tuple | None
    old_inner_widths: tuple = flax.struct.field(pytree_node=False)
    base_width: int = flax.struct.field(pytree_node=False)
    num_old: int = flax.struct.field(pytree_node=False)
    num_seen: int = flax.struct.field(pytree_node=False)
    num_total: int = flax.struct.field(pytree_node=False)

    @property
    def feature_dim(self) -> int:
        return 4 * self.base_width

    @property
    def step(self) -> int:
        """0-based index of the current incremental step (= number of old backbones)."""
        return len(self.old)

    @property
    def num_new(self) -> int:
        return self.num_seen - self.num_old


def linear_init(key: jax.Array, fan_in: int, fan_out: int) -> dict:
    """PyCIL ``SimpleLinear``: kaiming_uniform(nonlinearity='linear'), bias 0.

    Returns:
      ``{"kernel": U(-sqrt(3/fan_in), sqrt(3/fan_in)) [fan_in, fan_out], "bias": 0 [fan_out]}``.
    """
    bound = math.sqrt(3.0 / fan_in)
    kernel = jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -bound, bound)
    return {"kernel": kernel, "bias": jnp.zeros((fan_out,), jnp.float32)}


def init_mask_embeddings(base_width: int, value: float = 1.0) -> tuple:
    """Channel-mask embeddings e_l (15 arrays), initialised to ``value`` (sigma(s*1) ~ 1)."""
    return tuple(jnp.full((w,), value, jnp.float32) for w in resnet.full_inner_widths(base_width))


def init_der_state(
    key: jax.Array,
    *,
    base_width: int,
    in_channels: int,
    image_size: int,
    num_first: int,
    num_total: int,
    prune: bool = False,
) -> DERState:
    """State of the first step: one fresh backbone, heads over ``num_first`` classes.

    Args:
      key: PRNG key.
      base_width: backbone base width (16 for ResNet-32).
      in_channels: image channels (3 for CIFAR, 1 for MNIST).
      image_size: image side (32 or 28).
      num_first: classes of the first step.
      num_total: classes of the whole stream (head padding).
      prune: add channel-mask embeddings for section 3.3 pruning.
    """
    if not 0 < num_first <= num_total:
        raise ValueError(f"need 0 < num_first <= num_total, got {num_first}, {num_total}")
    k_bb, k_fc, k_aux = jax.random.split(key, 3)
    f = 4 * base_width
    return DERState(
        old=(),
        new=resnet.init_backbone(k_bb, base_width, in_channels, image_size),
        fc=linear_init(k_fc, f, num_total),
        aux=linear_init(k_aux, f, num_first + 1),
        mask_e=init_mask_embeddings(base_width) if prune else None,
        old_inner_widths=(),
        base_width=base_width,
        num_old=0,
        num_seen=num_first,
        num_total=num_total,
    )


def expand(
    state: DERState,
    key: jax.Array,
    num_new: int,
    frozen: dict | None = None,
    frozen_inner_widths: tuple | None = None,
) -> DERState:
    """Starts the next step (section 3.1): freeze F_t, add F_{t+1}, widen the heads.

    * the finished backbone (or its pruned, materialised copy ``frozen``) joins
      the old ones, BN statistics included;
    * F_{t+1} is a copy of F_t (weights *and* BN statistics, as both codes do);
    * the main head gets F more inputs: the block [old features x old classes]
      is inherited, everything else is freshly initialised (PyCIL ``update_fc``);
    * a fresh auxiliary head with ``num_new + 1`` outputs.

    Args:
      state: state at the end of a step.
      key: PRNG key for the fresh head weights.
      num_new: number of classes of the next step.
      frozen: optional replacement for the finished backbone (pruned copy).
      frozen_inner_widths: inner widths of ``frozen`` (required with it).

    Returns:
      The state of the next step.
    """
    if num_new <= 0 or state.num_seen + num_new > state.num_total:
        raise ValueError(
            f"num_new={num_new} invalid with {state.num_seen} seen of {state.num_total} classes"
        )
    if (frozen is None) != (frozen_inner_widths is None):
        raise ValueError("pass both frozen and frozen_inner_widths, or neither")
    if frozen is None:
        frozen = state.new
        frozen_inner_widths = resnet.full_inner_widths(state.base_width)
    f, t = state.feature_dim, state.step + 1
    k_fc, k_aux = jax.random.split(key)
    fc = linear_init(k_fc, f * (t + 1), state.num_total)
    kernel = fc["kernel"].at[: f * t, : state.num_seen].set(state.fc["kernel"][:, : state.num_seen])
    bias = fc["bias"].at[: state.num_seen].set(state.fc["bias"][: state.num_seen])
    return DERState(
        old=state.old + (jax.tree.map(jnp.asarray, frozen),),
        new=jax.tree.map(jnp.array, state.new),  # copy
        fc={"kernel": kernel, "bias": bias},
        aux=linear_init(k_aux, f, num_new + 1),
        mask_e=None if state.mask_e is None else init_mask_embeddings(state.base_width),
        old_inner_widths=state.old_inner_widths + (tuple(frozen_inner_widths),),
        base_width=state.base_width,
        num_old=state.num_seen,
        num_seen=state.num_seen + num_new,
        num_total=state.num_total,
    )


def _stack_trees(trees: list) -> dict:
    """Stacks equal-structure pytrees along a new leading axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


OLD_BACKBONES = ("loop", "vmap")


def old_features(
    state: DERState, x: jax.Array, compute_dtype: Any = jnp.float32, mode: str = "loop"
) -> jax.Array:
    """Phi_{t-1}(x): concatenated features of the frozen backbones, ``[B, F*(t-1)]``.

    ``mode="loop"`` (default) runs one ResNet apply per frozen backbone inside
    the traced function. ``mode="vmap"`` stacks backbones with equal
    ``old_inner_widths`` along a new leading axis and runs them as one
    ``jax.vmap``-ed ResNet (XLA turns the batched convolutions into grouped
    ones, about 8x slower than the loop on XLA:CPU, see docs/benchmarks.md); a
    width that occurs once runs on its own. Both concatenate in the original
    backbone order and agree up to float reduction order.

    Args:
      state: the DER state.
      x: normalised images ``[B, H, W, C]``.
      compute_dtype: compute dtype of the backbones (features are float32).
      mode: ``"loop"`` or ``"vmap"``.

    Returns:
      float32 features ``[B, F * len(state.old)]`` under ``stop_gradient``.
    """
    chex.assert_rank(x, 4)
    if mode not in OLD_BACKBONES:
        raise ValueError(f"old_backbones must be one of {OLD_BACKBONES}, got {mode!r}")
    if not state.old:
        return jnp.zeros((x.shape[0], 0), jnp.float32)
    groups: dict[tuple, list[int]] = {}
    for i, widths in enumerate(state.old_inner_widths):
        key = (i,) if mode == "loop" else tuple(widths)
        groups.setdefault(key, []).append(i)
    feats: list[jax.Array | None] = [None] * len(state.old)
    for members in groups.values():
        net = resnet.ResNet32(
            state.base_width, state.old_inner_widths[members[0]], dtype=compute_dtype
        )
        if len(members) == 1:
            feats[members[0]] = net.apply(state.old[members[0]], x, train=False)
            continue
        stacked = _stack_trees([state.old[i] for i in members])
        out = jax.vmap(lambda v, net=net: net.apply(v, x, train=False))(stacked)  # [G, B, F]
        for j, i in enumerate(members):
            feats[i] = out[j]
    return jax.lax.stop_gradient(jnp.concatenate(feats, axis=-1))


def forward(
    state: DERState,
    x: jax.Array,
    *,
    train: bool,
    masks: tuple | None = None,
    compute_dtype: Any = jnp.float32,
    old_backbones: str = "loop",
    sample_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """DER forward pass.

    Args:
      state: the DER state (``state.new["params"]`` may be a traced trainable copy).
      x: normalised images ``[B, H, W, C]``.
      train: the *new* backbone's BatchNorm in training mode (old ones never are).
      masks: channel masks m_l for the new backbone (pruning), or None.
      compute_dtype: compute dtype of all backbones (float32 default, bfloat16 for
        mixed precision). Parameters, BN statistics, features, heads and logits
        stay float32.
      old_backbones: how the frozen backbones run, see :func:`old_features`.
      sample_mask: optional bool ``[B]``, False on padding rows: in training mode they
        take no part in the new backbone's BatchNorm statistics (the only place rows
        interact), so the real rows compute what an unpadded batch would.

    Returns:
      ``(logits [B, num_total], aux_logits [B, num_new+1], features [B, F*t],
      new_batch_stats)``, all float32; logits of unseen classes are ``NEG``.
    """
    chex.assert_rank(x, 4)
    net = resnet.ResNet32(state.base_width, dtype=compute_dtype)
    if train:
        new_feat, upd = net.apply(
            state.new,
            x,
            train=True,
            masks=masks,
            sample_mask=sample_mask,
            mutable=["batch_stats"],
        )
        new_bs = upd["batch_stats"]
    else:
        new_feat = net.apply(state.new, x, train=False, masks=masks)
        new_bs = state.new["batch_stats"]
    u = jnp.concatenate([old_features(state, x, compute_dtype, old_backbones), new_feat], axis=-1)
    logits = u @ state.fc["kernel"] + state.fc["bias"]
    seen = jnp.arange(state.num_total) < state.num_seen
    logits = jnp.where(seen, logits, NEG)
    aux_logits = new_feat @ state.aux["kernel"] + state.aux["bias"]
    return logits, aux_logits, u, new_bs


def aux_labels(labels: jax.Array, num_old: int) -> jax.Array:
    """Auxiliary targets: every old class -> 0, new class c -> c - num_old + 1."""
    return jnp.where(labels < num_old, 0, labels - num_old + 1)


def der_loss(
    logits: jax.Array,
    aux_logits: jax.Array,
    labels: jax.Array,
    num_old: int,
    aux_weight: float,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """L_ER = CE(H_t(u), y) + lambda_a * CE(H_a(F_t(x)), y_aux) (section 3.2).

    Args:
      logits: ``[B, num_total]`` main-head logits (unseen masked).
      aux_logits: ``[B, num_new+1]``.
      labels: ``[B]`` int labels (positions in the class order).
      num_old: classes seen before this step.
      aux_weight: lambda_a (1; use 0 at the first step).
      weights: optional per-row weights ``[B]`` (1 real, 0 padding); both
        cross-entropies become means over the weighted rows.

    Returns:
      ``(loss, {"ce": ..., "aux": ...})``.
    """
    if weights is None:
        ce = losses.softmax_ce(logits, labels)
        aux = losses.softmax_ce(aux_logits, aux_labels(labels, num_old))
    else:
        chex.assert_equal_shape_prefix([logits, weights], 1)
        total = jnp.maximum(jnp.sum(weights), 1.0)
        per_ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        per_aux = optax.softmax_cross_entropy_with_integer_labels(
            aux_logits, aux_labels(labels, num_old)
        )
        ce = jnp.sum(weights * per_ce) / total
        aux = jnp.sum(weights * per_aux) / total
    return ce + aux_weight * aux, {"ce": ce, "aux": aux}


def trainable(state: DERState) -> dict:
    """The optimised tree: new backbone params, both heads, mask embeddings."""
    out = {"backbone": state.new["params"], "fc": state.fc, "aux": state.aux}
    if state.mask_e is not None:
        out["mask_e"] = state.mask_e
    return out


def with_trainable(state: DERState, params: dict, batch_stats: dict | None = None) -> DERState:
    """Puts an (updated) trainable tree and new-backbone BN statistics back into the state."""
    new = {
        "params": params["backbone"],
        "batch_stats": state.new["batch_stats"] if batch_stats is None else batch_stats,
    }
    return state.replace(new=new, fc=params["fc"], aux=params["aux"], mask_e=params.get("mask_e"))


def param_counts(state: DERState) -> dict:
    """Parameter counts of the model as it stands (heads over seen classes only).

    Returns:
      ``{"all": ..., "trainable": ..., "backbones": [...]}``; BN statistics excluded.
    """
    fdim = state.feature_dim * (state.step + 1)
    heads = fdim * state.num_seen + state.num_seen + resnet.count_backbone_params(state.aux)
    old = [resnet.count_backbone_params(v["params"]) for v in state.old]
    new = resnet.count_backbone_params(state.new["params"])
    return {"all": sum(old) + new + heads, "trainable": new + heads, "backbones": old + [new]}


def add_classes(state: DERState, key: jax.Array, num_new: int) -> DERState:
    """Single-backbone baselines (fine-tuning, joint): widen the label space only.

    The backbone is kept (no new extractor); the head columns of the new classes
    are freshly initialised and a fresh auxiliary head is made (unused with
    ``aux_weight = 0``).
    """
    if num_new <= 0 or state.num_seen + num_new > state.num_total:
        raise ValueError(
            f"num_new={num_new} invalid with {state.num_seen} seen of {state.num_total} classes"
        )
    k_fc, k_aux = jax.random.split(key)
    fresh = linear_init(k_fc, state.fc["kernel"].shape[0], state.num_total)
    cols = jnp.arange(state.num_total)
    is_new = (cols >= state.num_seen) & (cols < state.num_seen + num_new)
    fc = {
        "kernel": jnp.where(is_new, fresh["kernel"], state.fc["kernel"]),
        "bias": jnp.where(is_new, 0.0, state.fc["bias"]),
    }
    return state.replace(
        fc=fc,
        aux=linear_init(k_aux, state.feature_dim, num_new + 1),
        num_old=state.num_seen,
        num_seen=state.num_seen + num_new,
    )


def abstract_state(
    *,
    base_width: int,
    in_channels: int,
    image_size: int,
    old_inner_widths: tuple,
    num_old: int,
    num_seen: int,
    num_total: int,
    prune: bool,
) -> DERState:
    """Shapes/dtypes of a DER state (``jax.ShapeDtypeStruct`` leaves), for typed restores.

    Args mirror the fields of :class:`DERState`; ``old_inner_widths`` gives the
    (possibly pruned) inner widths of every old backbone.
    """
    x = jnp.zeros((1, image_size, image_size, in_channels), jnp.float32)
    f = 4 * base_width
    t = len(old_inner_widths)

    def build():
        def bb(widths):
            v = resnet.ResNet32(base_width, tuple(widths)).init(jax.random.key(0), x)
            return {"params": v["params"], "batch_stats": v["batch_stats"]}

        return DERState(
            old=tuple(bb(w) for w in old_inner_widths),
            new=bb(resnet.full_inner_widths(base_width)),
            fc=linear_init(jax.random.key(0), f * (t + 1), num_total),
            aux=linear_init(jax.random.key(0), f, num_seen - num_old + 1),
            mask_e=init_mask_embeddings(base_width) if prune else None,
            old_inner_widths=tuple(tuple(w) for w in old_inner_widths),
            base_width=base_width,
            num_old=num_old,
            num_seen=num_seen,
            num_total=num_total,
        )

    return jax.eval_shape(build)
