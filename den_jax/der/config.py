"""DER protocol settings: a validated, frozen :class:`DERConfig` and the PyCIL presets.

:data:`PRESETS` holds PyCIL's DER schedule (``models/der.py``: SGD lr 0.1, first step 200
epochs with milestones 60/120/170 and wd 5e-4, later steps 170 epochs with milestones
80/120/150 and wd 2e-4, batch 128, 2000 exemplars, weight alignment, class order seed 1993)
for the CIFAR-100 splits, plus a tiny synthetic ``smoke`` run. :func:`build_config` applies
command-line style overrides to a preset; :func:`check_resume_config` refuses to resume a
run with settings that compute something else.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from den_jax import checkpoint as ckpt

__all__ = [
    "BIAS_CORRECTIONS",
    "COMPUTE_DTYPES",
    "DERConfig",
    "EPOCH_LOOPS",
    "LEGACY_DEFAULTS",
    "METHODS",
    "NOTEBOOK_ORDER_SEED",
    "PRESETS",
    "RESUME_MAY_DIFFER",
    "build_config",
    "check_resume_config",
    "resolve_epoch_loop",
    "step_schedule",
]

METHODS = ("der", "finetune", "joint")
BIAS_CORRECTIONS = ("weight_align", "balanced_ft", "none")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EPOCH_LOOPS = ("auto", "scan", "step")
OLD_BACKBONES = ("loop", "vmap")
# May differ when resuming: the scanned epoch and the step loop compute the same model
# (up to float reduction order).
RESUME_MAY_DIFFER = ("epoch_loop", "old_backbones")
# Values of keys added after a checkpoint was written (older configs lack them).
LEGACY_DEFAULTS = {
    "compute_dtype": "float32",
    "epoch_loop": "step",
    "old_backbones": "loop",
    "mask_grad_scale": 1.0,
    "mask_init": 1.0,
    "val_per_class": None,
}
# order_seed value meaning "np.random.seed([1993])" (the list seed of the notebook).
NOTEBOOK_ORDER_SEED = -1993
# Classes of the datasets :func:`den_jax.data.images.load_data` reads.
_DATASET_CLASSES = {"cifar100": 100, "fashion_mnist": 10, "mnist": 10}


@dataclasses.dataclass(frozen=True)
class DERConfig:
    """Every setting of a DER class-incremental run (defaults: PyCIL's B0-10 on CIFAR-100).

    Attributes:
      dataset: name of the data (recorded; ``load_data`` reads cifar100, fashion_mnist,
        mnist, synthetic).
      num_classes: classes over the whole stream.
      base_width: ResNet-32 first-stage channels (16).
      first_epochs, first_lr, first_milestones, first_wd: schedule of step 0 (epochs, lr,
        epochs at which the lr is multiplied by 0.1, coupled L2 weight decay).
      later_epochs, later_lr, later_milestones, later_wd: the same for steps >= 1.
      batch_size: images per optimizer step (divisible by the device count).
      memory: exemplars in total (fixed-total mode).
      memory_per_class: exemplars per class (fixed-per-class mode), or None.
      bias_correction: ``"weight_align"``, ``"balanced_ft"`` or ``"none"`` (steps >= 1).
      aux_weight: lambda_a of the auxiliary loss (0 at step 0 whatever this says).
      order_seed: class-order seed (PyCIL 1993); -1 keeps the natural order;
        :data:`NOTEBOOK_ORDER_SEED` (-1993) means ``np.random.seed([1993])`` (list seed).
      seed: training seed (PRNG keys ``fold_in(key(seed), t)``, numpy ``[seed, t]``).
      prune: channel-mask pruning (paper section 3.3).
      prune_lambda: lambda_s of the sparsity loss. 0.05 was chosen on a validation split of
        class-incremental Fashion-MNIST from 0.5, 0.1, 0.05, 0.03, 0.02, 0.005 (0.5 cut the
        first backbone to 12% of its weights at chance accuracy; docs/der.md "Pruning").
      s_max: largest pruning temperature.
      mask_grad_scale: factor on the (compensated) embedding gradients before the
        optimizer, i.e. the embeddings' learning-rate multiplier. HAT's code uses s_max
        (:mod:`den_jax.der.pruning`); the paper's form is 1.
      mask_init: initial value of every mask embedding e (sigma(s e) ~ 1 for e > 0).
      val_per_class: hold out this many training images per class as a validation set
        and evaluate on it instead of the test split (for tuning); None: test split.
      method: ``"der"``, ``"finetune"`` (one backbone, new data) or ``"joint"`` (one
        backbone, all data seen so far).
      train_per_class, test_per_class: subsample each class to this many images (None: all).
      ft_epochs, ft_temperature: balanced fine-tuning epochs and logit temperature.
      compute_dtype: ``"float32"`` or ``"bfloat16"`` backbone compute while training.
      epoch_loop: ``"scan"``, ``"step"`` or ``"auto"`` (:func:`resolve_epoch_loop`).
      old_backbones: ``"loop"`` (one apply per frozen backbone; fastest on XLA:CPU) or
        ``"vmap"`` (equal-width backbones stacked under ``jax.vmap``); same model.
      init_classes: classes of step 0.
      increment: classes of every later step (the last one takes the remainder).
      preset: name of the preset this config came from (recorded only).
    """

    dataset: str = "cifar100"
    num_classes: int = 100
    base_width: int = 16
    first_epochs: int = 200
    first_lr: float = 0.1
    first_milestones: tuple[int, ...] = (60, 120, 170)
    first_wd: float = 5e-4
    later_epochs: int = 170
    later_lr: float = 0.1
    later_milestones: tuple[int, ...] = (80, 120, 150)
    later_wd: float = 2e-4
    batch_size: int = 128
    memory: int = 2000
    memory_per_class: int | None = None
    bias_correction: str = "weight_align"
    aux_weight: float = 1.0
    order_seed: int = 1993
    seed: int = 1993
    prune: bool = False
    prune_lambda: float = 0.05
    s_max: float = 400.0
    mask_grad_scale: float = 400.0
    mask_init: float = 1.0
    val_per_class: int | None = None
    method: str = "der"
    train_per_class: int | None = None
    test_per_class: int | None = None
    ft_epochs: int = 30
    ft_temperature: float = 5.0
    compute_dtype: str = "float32"
    epoch_loop: str = "auto"
    old_backbones: str = "loop"
    init_classes: int = 10
    increment: int = 10
    preset: str | None = None

    def __post_init__(self):
        for name in ("first_milestones", "later_milestones"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"DERConfig.{name} must be a list of epochs, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name, minimum in (
            ("num_classes", 1),
            ("base_width", 1),
            ("first_epochs", 0),
            ("later_epochs", 0),
            ("batch_size", 1),
            ("memory", 0),
            ("ft_epochs", 0),
            ("init_classes", 1),
            ("increment", 1),
            ("seed", 0),
        ):
            _check_int(name, getattr(self, name), minimum)
        if self.order_seed != NOTEBOOK_ORDER_SEED:
            _check_int("order_seed", self.order_seed, -1)
        for name in ("memory_per_class", "train_per_class", "test_per_class", "val_per_class"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name in ("first_milestones", "later_milestones"):
            for m in getattr(self, name):
                _check_int(name, m, 0)
        for name in ("first_lr", "later_lr", "s_max", "ft_temperature", "mask_grad_scale"):
            _check_float(name, getattr(self, name), positive=True)
        for name in ("first_wd", "later_wd", "aux_weight", "prune_lambda"):
            _check_float(name, getattr(self, name), positive=False)
        for name, allowed in (
            ("method", METHODS),
            ("bias_correction", BIAS_CORRECTIONS),
            ("compute_dtype", tuple(COMPUTE_DTYPES)),
            ("epoch_loop", EPOCH_LOOPS),
            ("old_backbones", OLD_BACKBONES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"DERConfig.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        for name in ("prune",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DERConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.mask_init, (int, float)) or isinstance(self.mask_init, bool):
            raise ValueError(f"DERConfig.mask_init must be a number, got {self.mask_init!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"DERConfig.dataset must be a non-empty string, got {self.dataset!r}")
        if self.init_classes > self.num_classes:
            raise ValueError(
                f"DERConfig.init_classes={self.init_classes} exceeds num_classes={self.num_classes}"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DERConfig:
        """Builds a config from a dict (e.g. ``results.json["config"]``); missing keys default.

        Raises:
          ValueError: naming unknown keys, or a field with a bad value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown DERConfig fields {unknown}; expected some of {sorted(names)}"
            )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (milestones as lists), in field order."""
        out = dataclasses.asdict(self)
        for name in ("first_milestones", "later_milestones"):
            out[name] = list(out[name])
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string (``from_mapping(json.loads(s))`` inverts it)."""
        return json.dumps(self.to_dict())

    def replace(self, **changes: Any) -> DERConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DERConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value != value or (value <= 0 if positive else value < 0):
        expected = "> 0" if positive else ">= 0"
        raise ValueError(f"DERConfig.{name} must be a number {expected}, got {value!r}")


_SMOKE = dict(
    dataset="synthetic",
    num_classes=6,
    init_classes=2,
    increment=2,
    base_width=4,
    first_epochs=2,
    first_milestones=(1,),
    later_epochs=2,
    later_milestones=(1,),
    batch_size=16,
    memory=24,
    train_per_class=24,
    ft_epochs=2,
)
PRESETS: dict[str, DERConfig] = {
    "seed": DERConfig(init_classes=25, increment=25, preset="seed"),
    "b0_10": DERConfig(init_classes=10, increment=10, preset="b0_10"),
    "b0_5": DERConfig(init_classes=20, increment=20, preset="b0_5"),
    "b50_10": DERConfig(init_classes=50, increment=10, preset="b50_10"),
    "smoke": DERConfig(**_SMOKE, preset="smoke"),
    # The user's notebook: ``np.random.seed([1993])`` (a list seed: order 43, 92, 14, 57, 89,
    # ... ; see ``den_jax.data.splits``), 4 steps of 25 classes, the same optimizer settings
    # at every step (SGD lr 0.1, x0.1 at epochs 60/120/170, wd 5e-4), 201 epochs at step 0
    # and 171 later, 2000 exemplars.
    "notebook": DERConfig(
        init_classes=25,
        increment=25,
        first_epochs=201,
        later_epochs=171,
        later_milestones=(60, 120, 170),
        later_wd=5e-4,
        order_seed=NOTEBOOK_ORDER_SEED,
        preset="notebook",
    ),
}


def resolve_epoch_loop(backend: str | None = None) -> str:
    """``epoch_loop="auto"``: ``"scan"`` on accelerators, ``"step"`` on the CPU.

    XLA:CPU runs convolution gradients inside ``lax.scan`` about 20x slower than as
    separate calls (docs/benchmarks.md), so the CPU keeps one dispatch per batch.

    Args:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; None = ``jax.default_backend()``.
    """
    return "step" if (backend or jax.default_backend()) == "cpu" else "scan"


def build_config(preset: str, overrides: Mapping[str, Any] | None = None) -> DERConfig:
    """A preset with overrides applied, as the command line does.

    ``None`` values are ignored. Besides the fields, three shortcuts set both steps (and win
    over the per-step fields): ``epochs`` (first/later_epochs), ``milestones`` and ``lr``.
    A known dataset fixes ``num_classes`` (cifar100: 100, mnist/fashion_mnist: 10);
    milestones at or after the step's last epoch are dropped; ``epoch_loop="auto"`` is
    resolved for this backend.

    Args:
      preset: a key of :data:`PRESETS`.
      overrides: field (or shortcut) -> value.

    Returns:
      The validated config.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    kw = PRESETS[preset].to_dict()
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    for short, fields in (
        ("epochs", ("first_epochs", "later_epochs")),
        ("milestones", ("first_milestones", "later_milestones")),
        ("lr", ("first_lr", "later_lr")),
    ):
        if short in over:
            value = over.pop(short)
            for f in fields:
                over[f] = value
    kw.update(over)
    if kw["dataset"] in _DATASET_CLASSES:
        kw["num_classes"] = _DATASET_CLASSES[kw["dataset"]]
    for part in ("first", "later"):
        kw[f"{part}_milestones"] = [m for m in kw[f"{part}_milestones"] if m < kw[f"{part}_epochs"]]
    if kw["epoch_loop"] == "auto":
        kw["epoch_loop"] = resolve_epoch_loop()
    return DERConfig.from_mapping(kw)


def step_schedule(cfg: DERConfig, step: int) -> dict[str, Any]:
    """The optimizer schedule of incremental step ``step``.

    Returns:
      ``{"epochs", "lr", "milestones", "weight_decay", "aux_weight"}``; ``aux_weight`` is 0
      at step 0 and for the single-backbone methods.
    """
    first = step == 0
    return {
        "epochs": cfg.first_epochs if first else cfg.later_epochs,
        "lr": cfg.first_lr if first else cfg.later_lr,
        "milestones": list(cfg.first_milestones if first else cfg.later_milestones),
        "weight_decay": cfg.first_wd if first else cfg.later_wd,
        "aux_weight": cfg.aux_weight if (not first and cfg.method == "der") else 0.0,
    }


def check_resume_config(saved: Mapping[str, Any], current: DERConfig | Mapping) -> None:
    """Refuses to resume with a config that computes something else.

    Keys added after a checkpoint was written take their old behaviour
    (:data:`LEGACY_DEFAULTS`); :data:`RESUME_MAY_DIFFER` keys may differ.

    Args:
      saved: config stored with the checkpoint.
      current: config of this run.

    Raises:
      ValueError: naming only the differing keys, with both values.
    """
    cur = current.to_dict() if isinstance(current, DERConfig) else dict(current)
    ckpt.check_config_compatible({**LEGACY_DEFAULTS, **saved}, cur, ignore=RESUME_MAY_DIFFER)
