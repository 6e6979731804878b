"""One incremental step of the DER protocol as one call: :func:`learn_step`.

:func:`learn_step` does everything step t of PyCIL's DER protocol does: start the step
(first backbone, or freeze the last one and add a copy: section 3.1), build the training
pool (new classes + memory; all seen data for ``joint``; new data for ``finetune``), make
the step's optimizer (SGD, its lr, milestones and weight decay), set lambda_a (0 at step
0), run the epochs, correct the head's bias (weight alignment or balanced fine-tuning),
materialise a pruned backbone, herd the memory with the final model, and evaluate.
``den_jax.der.protocol.run_protocol`` runs the whole stream with checkpoints.

Randomness of step t: PRNG key ``fold_in(key(cfg.seed), t)`` (:func:`step_key`) split
into (init, train, fine-tune) keys, and numpy ``default_rng([cfg.seed, t])`` for batches.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from den_jax.data import splits
from den_jax.data.images import StreamData
from den_jax.der import (
    bias_correction,
    evaluate,
    features,
    memory,
    model,
    pruning,
    resnet,
    train,
)
from den_jax.der.config import (
    COMPUTE_DTYPES,
    NOTEBOOK_ORDER_SEED,
    DERConfig,
    resolve_epoch_loop,
    step_schedule,
)

__all__ = [
    "DeviceData",
    "class_order",
    "learn_step",
    "make_stream",
    "place_train_data",
    "pruned_backbone",
    "step_key",
]

_log = logging.getLogger(__name__)
Optimizer = optax.GradientTransformation | Callable[[int], optax.GradientTransformation]


class DeviceData(NamedTuple):
    """The stream's images placed on a mesh once.

    ``x`` training images, ``y`` their int32 labels, ``mesh``; ``x_test`` the test
    images (None: evaluation uploads them from the host).
    """

    x: jax.Array
    y: jax.Array
    mesh: Mesh
    x_test: jax.Array | None = None


def make_stream(cfg: DERConfig, train_split, test_split, *, mean=None, std=None) -> StreamData:
    """:class:`StreamData` with the config's classes, order and subsampling.

    Args:
      cfg: the run's config (num_classes, init_classes, increment, order_seed,
        train/test_per_class, seed).
      train_split, test_split: ``(images, labels)`` with original labels. uint8 images need
        ``mean`` and ``std``; float images are taken as already normalised
        (:meth:`StreamData.from_float`).
    """
    kw = dict(
        num_classes=cfg.num_classes,
        init_classes=cfg.init_classes,
        increment=cfg.increment,
        order_seed=cfg.order_seed,
        train_per_class=cfg.train_per_class,
        test_per_class=cfg.test_per_class,
        seed=cfg.seed,
    )
    notebook = cfg.order_seed == NOTEBOOK_ORDER_SEED
    if notebook:
        kw["order_seed"] = -1  # natural order first; the list-seed order is applied below
    if np.asarray(train_split[0]).dtype == np.uint8:
        if mean is None or std is None:
            raise ValueError("uint8 images need mean and std (or pass normalised float images)")
        data = StreamData.from_uint8(train_split, test_split, mean=mean, std=std, **kw)
    else:
        data = StreamData.from_float(train_split, test_split, **kw)
    if notebook:
        order = class_order(cfg)
        data = data._replace(
            y_train=splits.remap_labels(data.y_train, order),
            y_test=splits.remap_labels(data.y_test, order),
            class_order=order,
        )
    return data


def class_order(cfg: DERConfig) -> np.ndarray:
    """The class order of the run: PyCIL's ``np.random.seed(order_seed)`` permutation.

    ``order_seed == NOTEBOOK_ORDER_SEED`` gives ``np.random.seed([1993])`` (a list seed, as
    the notebook passes ``"seed": [1993]``): 43, 92, 14, 57, 89, ... for 100 classes;
    ``-1`` the natural order.
    """
    if cfg.order_seed == NOTEBOOK_ORDER_SEED:
        rs = np.random.RandomState([1993])  # same stream as np.random.seed([1993])
        return rs.permutation(cfg.num_classes).astype(np.int64)
    return splits.class_order(cfg.num_classes, None if cfg.order_seed < 0 else cfg.order_seed)


def place_train_data(data: StreamData, mesh: Mesh | None = None) -> DeviceData:
    """Replicates the training images and labels, and the test images, on ``mesh``.

    Args:
      data: the stream.
      mesh: default: all local devices.

    Returns:
      The :class:`DeviceData` that training, herding and evaluation read from.
    """
    mesh = train.make_mesh() if mesh is None else mesh
    x = train.replicate(jnp.asarray(data.x_train), mesh)
    x_test = train.replicate(jnp.asarray(data.x_test), mesh)
    return DeviceData(x, train.replicate(jnp.asarray(data.y_train), mesh), mesh, x_test)


def step_key(cfg: DERConfig, step: int) -> jax.Array:
    """The PRNG key of incremental step ``step``: ``fold_in(key(cfg.seed), step)``."""
    return jax.random.fold_in(jax.random.key(cfg.seed), step)


def pruned_backbone(state: model.DERState) -> tuple[dict, tuple[int, ...]] | None:
    """The materialised (pruned) copy of the step's backbone, or None without masks."""
    if state.mask_e is None:
        return None
    return pruning.materialise(state.new, state.mask_e)


@functools.lru_cache(maxsize=8)
def _predict(mean: tuple, std: tuple, old_backbones: str):
    return evaluate.make_predict(mean, std, old_backbones)


def _check_inputs(state, data: StreamData, cfg: DERConfig, step: int | None) -> int:
    if not isinstance(cfg, DERConfig):
        raise ValueError(f"cfg must be a DERConfig, got {type(cfg).__name__}")
    if data.num_classes != cfg.num_classes:
        raise ValueError(f"data has {data.num_classes} classes, cfg.num_classes={cfg.num_classes}")
    sizes = splits.step_sizes(cfg.num_classes, cfg.init_classes, cfg.increment)
    if list(data.sizes) != sizes:
        raise ValueError(
            f"data has steps of {list(data.sizes)} classes but cfg (init_classes="
            f"{cfg.init_classes}, increment={cfg.increment}) gives {sizes}"
        )
    bounds = data.bounds
    if state is not None and state.num_seen not in bounds:
        raise ValueError(f"state has {state.num_seen} classes, not a step boundary of {bounds}")
    expected = 0 if state is None else bounds.index(state.num_seen) + 1
    if step is not None and step != expected:
        raise ValueError(f"step={step} but the state is at the start of step {expected}")
    if expected >= len(bounds):
        raise ValueError(f"all {len(bounds)} steps are done (state sees {state.num_seen})")
    return expected


def _start_step(state, key, data: StreamData, cfg: DERConfig, t: int) -> model.DERState:
    if t == 0:
        h, w, c = data.image_shape
        del w
        return model.init_der_state(
            key,
            base_width=cfg.base_width,
            in_channels=c,
            image_size=h,
            num_first=data.sizes[0],
            num_total=cfg.num_classes,
            prune=cfg.prune and cfg.method == "der",
        )
    if cfg.method == "der":
        return model.expand(state, key, data.sizes[t], *(pruned_backbone(state) or (None, None)))
    return model.add_classes(state, key, data.sizes[t])


def _scale_mask_grads(factor: float) -> optax.GradientTransformation:
    """Multiplies the ``mask_e`` gradients by ``factor`` (HAT's s_max); others unchanged."""

    def update(updates, state, params=None):
        del params
        out = dict(updates)
        out["mask_e"] = jax.tree.map(lambda g: g * factor, updates["mask_e"])
        return out, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _pool(mem: dict, data: StreamData, cfg: DERConfig, lo: int, hi: int) -> np.ndarray:
    if cfg.method == "joint":
        return splits.indices_in_range(data.y_train, 0, hi)
    new_idx = splits.indices_in_range(data.y_train, lo, hi)
    if cfg.method == "der":
        return np.concatenate([new_idx, memory.memory_indices(mem)]).astype(np.int32)
    return new_idx


def _train_epochs(state, fns, tx, dev: DeviceData, pool, key, rng, cfg, t, epochs, progress):
    """Runs the step's epochs (scanned or one dispatch per batch); returns state, metrics."""
    step_fn, epoch_fn = fns
    opt_state = train.replicate(tx.init(model.trainable(state)), dev.mesh)
    state = train.replicate(state, dev.mesh, copy=True)  # the train functions may donate it
    s_max = cfg.s_max if state.mask_e is not None else None
    history = []
    bar = tqdm(total=epochs, desc=f"step {t}", leave=False, disable=not progress)
    for e in range(epochs):
        batches = [
            pool[b] for b in train.epoch_batches(rng, len(pool), cfg.batch_size, dev.mesh.size)
        ]
        args = (state, opt_state, dev.x, dev.y, batches, jax.random.fold_in(key, e), dev.mesh)
        if epoch_fn is not None:
            state, opt_state, m = train.run_epoch_scanned(epoch_fn, *args, s_max=s_max)
        else:
            state, opt_state, m = train.run_epoch(step_fn, *args, s_max=s_max)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{100 * m['acc']:.1f}")
        _log.info(
            "step %d epoch %d/%d: loss %.4f acc %.2f", t, e + 1, epochs, m["loss"], 100 * m["acc"]
        )
        history.append({k: float(v) for k, v in m.items()})
    bar.close()
    return state, history


def _param_counts(state: model.DERState, image_shape: tuple[int, int, int]) -> dict:
    """Parameter counts, and with masks the pruning figures of the step's backbone.

    Keys: ``all``, ``trainable``, ``backbones`` (per backbone, pruned where pruned),
    ``backbones_total`` and ``macs`` (MACs per image of all backbones, pruned), plus with
    masks ``all_unpruned``, ``backbone_params_before``/``backbone_params_after`` (the
    step's backbone before and after materialisation), ``kept_channels`` (15 inner
    widths after), ``full_channels`` (before), ``macs_unpruned`` and ``flops`` (2 MACs).
    """
    h, _, c = image_shape
    counts = model.param_counts(state)
    frozen = pruned_backbone(state)
    widths = [tuple(w) for w in state.old_inner_widths] + [None]
    if frozen is not None:
        pruned_bb = sum(x.size for x in jax.tree.leaves(frozen[0]["params"]))
        counts["all_unpruned"] = counts["all"]
        counts["backbone_params_before"] = counts["backbones"][-1]
        counts["backbone_params_after"] = int(pruned_bb)
        counts["all"] = counts["all"] - counts["backbones"][-1] + pruned_bb
        counts["backbones"][-1] = int(pruned_bb)
        counts["pruned_inner_widths"] = list(frozen[1])
        counts["kept_channels"] = list(frozen[1])
        counts["full_channels"] = list(resnet.full_inner_widths(state.base_width))
        counts["macs_unpruned"] = sum(
            pruning.backbone_macs(state.base_width, w, in_channels=c, image_size=h)
            for w in widths[:-1] + [None]
        )
        widths[-1] = tuple(frozen[1])
    counts["backbones_total"] = int(sum(counts["backbones"]))
    counts["macs"] = sum(
        pruning.backbone_macs(state.base_width, w, in_channels=c, image_size=h) for w in widths
    )
    counts["flops"] = 2 * counts["macs"]
    return counts


def learn_step(
    state: model.DERState | None,
    mem: dict,
    data: StreamData,
    cfg: DERConfig,
    key: jax.Array,
    *,
    step: int | None = None,
    device_data: DeviceData | None = None,
    optimizer: Optimizer | None = None,
    progress: bool = False,
) -> tuple[model.DERState, dict, dict]:
    """Runs incremental step t of the DER protocol (see the module docstring).

    Args:
      state: the state after step t-1 (None before step 0).
      mem: exemplar memory after step t-1, class -> training indices (``{}`` at first).
      data: the stream (:func:`make_stream` / :class:`StreamData`).
      cfg: the run's settings.
      key: PRNG key of this step (:func:`step_key` in :func:`run_protocol`).
      step: t; checked against the state when given (derived from it otherwise).
      device_data: the training set already on a mesh (:func:`place_train_data`); placed
        here (all local devices) when None.
      optimizer: replaces the config's SGD schedule: an optax transformation over
        ``model.trainable(state)``, or a factory ``steps_per_epoch -> transformation``.
      progress: show tqdm bars.

    Returns:
      ``(state, memory, report)``; the JSON-friendly report holds ``step``, ``num_seen``,
      ``top1``, ``top5``, ``grouped``, ``task_acc`` (row t of the accuracy matrix),
      ``pycil_grouped`` (PyCIL's grouped accuracy, quirks included), with DER's memory
      ``nme_top1``, ``nme_top5``, ``nme_task_acc``, ``nme_pycil_grouped`` (nearest mean of
      exemplars, PyCIL's definition),
      ``params``, ``weight_align_gamma`` (None unless aligned), ``pool_size``,
      ``steps_per_epoch``, ``epochs`` (mean metrics per epoch) and ``seconds``.
    """
    t0 = time.time()
    t = _check_inputs(state, data, cfg, step)
    dev = place_train_data(data) if device_data is None else device_data
    if cfg.batch_size % dev.mesh.size:
        raise ValueError(f"batch_size {cfg.batch_size} not divisible by {dev.mesh.size} devices")
    k_init, k_train, k_ft = jax.random.split(key, 3)
    rng = np.random.default_rng([cfg.seed, t])
    state = _start_step(state, k_init, data, cfg, t)
    if state.mask_e is not None and cfg.mask_init != 1.0:
        state = state.replace(mask_e=model.init_mask_embeddings(cfg.base_width, cfg.mask_init))
    lo, hi = (0 if t == 0 else data.bounds[t - 1]), data.bounds[t]
    pool = _pool(mem, data, cfg, lo, hi)
    sched = step_schedule(cfg, t)
    # Drawing one epoch's batches to count them advances ``rng``, as the original loop did.
    steps_per_epoch = len(train.epoch_batches(rng, len(pool), cfg.batch_size, dev.mesh.size))
    if optimizer is None:
        tx = train.make_optimizer(
            lr=sched["lr"],
            milestones=sched["milestones"],
            steps_per_epoch=steps_per_epoch,
            weight_decay=sched["weight_decay"],
            decay_mask=train.decay_mask_for(model.trainable(state)),
        )
        if state.mask_e is not None and cfg.mask_grad_scale != 1.0:
            tx = optax.chain(_scale_mask_grads(cfg.mask_grad_scale), tx)
    elif isinstance(optimizer, optax.GradientTransformation):
        tx = optimizer
    else:
        tx = optimizer(steps_per_epoch)
    fn_kw = dict(
        aux_weight=sched["aux_weight"],
        mean=data.mean,
        std=data.std,
        prune_lambda=cfg.prune_lambda,
        aug=data.augment_options,
        compute_dtype=COMPUTE_DTYPES[cfg.compute_dtype],
        old_backbones=cfg.old_backbones,
    )
    loop = cfg.epoch_loop if cfg.epoch_loop != "auto" else resolve_epoch_loop()
    fns = (
        None if loop == "scan" else train.make_train_step(tx, **fn_kw),
        train.make_train_epoch(tx, **fn_kw) if loop == "scan" else None,
    )
    history = []
    if sched["epochs"] > 0:
        state, history = _train_epochs(
            state, fns, tx, dev, pool, k_train, rng, cfg, t, sched["epochs"], progress
        )
    gamma = None
    if cfg.method == "der" and t > 0:
        if cfg.bias_correction == "weight_align":
            state, gamma = bias_correction.weight_align(state)
        elif cfg.bias_correction == "balanced_ft":
            state = bias_correction.balanced_finetune(
                state,
                k_ft,
                dev.x,
                dev.y,
                pool,
                mean=data.mean,
                std=data.std,
                rng=rng,
                epochs=cfg.ft_epochs,
                temperature=cfg.ft_temperature,
                batch_size=cfg.batch_size,
                aug=data.augment_options,
            )
    predict = _predict(tuple(data.mean), tuple(data.std), cfg.old_backbones)
    if cfg.method == "der":
        quota = memory.per_class_quota(cfg.memory, hi, cfg.memory_per_class)
        groups = {c: splits.indices_in_range(data.y_train, c, c + 1) for c in range(lo, hi)}
        feats = lambda idx: features.extract(predict, state, dev.x, idx)[1]
        mem = memory.update_memory(mem, groups, feats, quota)
    means = None
    if cfg.method == "der" and mem:
        idx = memory.memory_indices(mem)
        # The memory's features with the final model (PyCIL: after the exemplar update).
        mem_feats = features.extract(predict, state, dev.x, idx)[1]
        means = evaluate.class_means(mem_feats, data.y_train[idx], hi)
    ev = _evaluate(predict, state, data, dev, cfg, hi, t, means)
    report = dict(
        step=t,
        num_seen=hi,
        **ev,
        params=_param_counts(state, data.image_shape),
        weight_align_gamma=gamma,
        pool_size=int(len(pool)),
        steps_per_epoch=steps_per_epoch,
        epochs=history,
        seconds=time.time() - t0,
    )
    _log.info(
        "step %d: %d classes, top1 %.2f top5 %.2f old %.2f new %.2f params %d (%.0f s)",
        t,
        hi,
        ev["top1"],
        ev["top5"],
        ev["grouped"].get("old", float("nan")),
        ev["grouped"]["new"],
        report["params"]["all"],
        report["seconds"],
    )
    return state, mem, report


def _evaluate(
    predict, state, data: StreamData, dev: DeviceData, cfg: DERConfig, hi: int, t: int, means=None
) -> dict:
    """top1/top5/grouped/task_acc (and NME with ``means``) on the seen classes' test images."""
    sel = splits.indices_in_range(data.y_test, 0, hi)
    y = data.y_test[sel]
    if dev.x_test is not None:
        logits, feats = features.extract(predict, state, dev.x_test, sel)
    else:
        logits, feats = evaluate.predict_all(predict, state, data.x_test[sel])
    ev = evaluate.outputs_metrics(logits, feats, y, state.num_old, data.bounds[: t + 1], means)
    if cfg.num_classes < 50:  # small streams: one group per step instead of per 10 classes
        pred = np.argmax(logits, 1)
        ev["grouped"] = evaluate.grouped_accuracy(pred, y, state.num_old, group=cfg.increment)
    return ev
