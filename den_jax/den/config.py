"""DEN hyper-parameters: a validated, frozen dataclass loadable from YAML or JSON.

Only entry points and :func:`den_jax.den.learner.learn_task` read a :class:`DENConfig`;
the phase functions take explicit arguments. Every field is checked by
:func:`validate_config`; a bad value raises ``ValueError`` naming the field, the value and
the allowed range, and :func:`config_from_dict` rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DENConfig",
    "EXPANSION_LOSS_ON",
    "SELECTIVE_RETRAINING",
    "LOSSES",
    "OPT_STATE_POLICIES",
    "PROX_SCALES",
    "SPLIT_RETRAIN",
    "SPLIT_WHEN",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "validate_config",
]

LOSSES = ("softmax_ce", "sigmoid_ce")
PROX_SCALES = ("lr", "none", "adam")
SPLIT_WHEN = ("always", "after_expansion", "never")
SPLIT_RETRAIN = ("all", "new")
OPT_STATE_POLICIES = ("reset", "grow")
EXPANSION_LOSS_ON = ("valid", "train")
SELECTIVE_RETRAINING = ("masked", "compact")


@dataclasses.dataclass(frozen=True)
class DENConfig:
    """Hyper-parameters of DEN (Yoon et al., ICLR 2018); sources in docs/den_algorithm.md.

    Attributes:
      l1_lambda: mu of Eq. 2-5; the L1 prox threshold per step is ``lr * l1_lambda``
        (``prox_scale="lr"``) or ``l1_lambda`` (``"none"``, the official code's 1e-5).
      group_lambda: gamma of Eq. 5; group-lasso prox threshold per step, scaled like L1.
      l2_lambda: weight of ``sum 0.5 * ||v||^2`` over all weights (official 1e-4).
      drift_lambda: lambda of Eq. 6, weight of ``||W - W^{t-1}||^2`` (a plain sum of
        squares) over weights older tasks use (selective retraining and split). The official
        code adds ``0.5 * tf.nn.l2_loss(W - W^{t-1})`` = ``0.25 * sum (W - W^{t-1})^2``, so its
        strength is ``drift_lambda = 0.25`` here; the default 0.5 is twice that.
      expansion_threshold: tau; expand when the loss after selective retraining exceeds it.
      drift_threshold: sigma; split units whose drift ``rho_i`` exceeds it.
      new_nodes_k: k, units added per hidden layer at an expansion: one integer >= 1 for
        every layer (the paper), or a list with one integer >= 0 per hidden layer, at least
        one of them >= 1 (checked against the network's depth when a task is learned).
      max_splits_per_layer: cap on duplicated units per layer and task (most drifted first).
      steps_task1: optimizer steps of task-1 training (Eq. 2).
      steps_head: steps of sparse output-head training before the search (Eq. 3).
      head_l1_lambda: mu of that head training (Eq. 3) when it differs from ``l1_lambda``
        (``None``: ``l1_lambda``). The breadth-first search keeps every top-layer unit with a
        non-zero weight into the task's head, so a sparser head selects fewer units.
      steps_selective: steps of selective retraining of the subnetwork (Eq. 4).
      steps_expand: steps of expansion training (Eq. 5).
      steps_split_pretrain: steps of the first Eq. 6 pass before the drift is measured
        (0: measure the drift on the weights after selective retraining, which were trained
        with the same drift penalty; the official code does the same).
      steps_split: steps of retraining after duplication (second Eq. 6 pass).
      batch_size: examples per step.
      learning_rate: initial learning rate.
      lr_decay_rate: staircase decay factor (official 0.95).
      lr_decay_steps: steps between decays (official: one epoch, 55000 / 256 = 215).
      seed: seed entry points use to derive PRNG keys.
      loss: ``"softmax_ce"`` (default) or ``"sigmoid_ce"`` (official code, one-hot).
      prox_scale: ``"lr"`` scales prox thresholds by the current lr; ``"none"`` does not;
        ``"adam"`` applies the L1 prox inside Adam's update with the per-coordinate threshold
        ``lr * l1_lambda / (sqrt(v_hat) + eps)`` (:func:`den_jax.den.proximal.adam_l1_prox`;
        Adam only, so no ``optimizer=`` override), and the group prox with ``lr * gamma``.
      split_when: ``"always"`` (paper, every task t >= 2), ``"after_expansion"`` (official
        code) or ``"never"`` (ablation).
      split_retrain: parameters trained after duplication: ``"all"`` (every weight the task
        uses, with the drift penalty; paper) or ``"new"`` (only weights no older task uses).
      opt_state_policy: ``"reset"`` (fresh optimizer state each phase, official code) or
        ``"grow"`` (keep Adam moments; pad them across growth by unit id).
      expansion_loss_on: ``"valid"`` (whole validation set when given) or ``"train"``.
      eval_batch_size: batch size of whole-dataset loss evaluation.
      selective_retraining: ``"masked"`` (every unit in the forward pass, updates masked
        after the optimizer) or ``"compact"`` (the selected units gathered into a smaller
        network, trained and scattered back, as the official code builds a compact network;
        :class:`den_jax.den.compact.Subnetwork`). Both train the same function (unselected
        units have no non-zero path to the task's outputs); compact steps are cheaper.
        ``"compact"`` needs ``opt_state_policy="reset"``.
    """

    l1_lambda: float = 0.01
    group_lambda: float = 1.0
    l2_lambda: float = 1e-4
    drift_lambda: float = 0.5
    expansion_threshold: float = 0.02
    drift_threshold: float = 0.05
    new_nodes_k: int | tuple[int, ...] = 10
    max_splits_per_layer: int = 10
    steps_task1: int = 4300
    steps_head: int = 430
    steps_selective: int = 4300
    steps_expand: int = 4300
    steps_split_pretrain: int = 0
    steps_split: int = 4300
    batch_size: int = 256
    learning_rate: float = 1e-3
    lr_decay_rate: float = 0.95
    lr_decay_steps: int = 215
    seed: int = 0
    loss: str = "softmax_ce"
    prox_scale: str = "lr"
    split_when: str = "always"
    split_retrain: str = "all"
    opt_state_policy: str = "reset"
    expansion_loss_on: str = "valid"
    eval_batch_size: int = 1024
    head_l1_lambda: float | None = None
    selective_retraining: str = "masked"

    def __post_init__(self):
        if isinstance(self.new_nodes_k, list):
            object.__setattr__(self, "new_nodes_k", tuple(self.new_nodes_k))
        validate_config(self)


_FLOAT_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    # name: (low, high, low inclusive, high inclusive)
    "l1_lambda": (0.0, math.inf, True, False),
    "group_lambda": (0.0, math.inf, True, False),
    "l2_lambda": (0.0, math.inf, True, False),
    "drift_lambda": (0.0, math.inf, True, False),
    "expansion_threshold": (0.0, math.inf, True, False),
    "drift_threshold": (0.0, math.inf, True, False),
    "learning_rate": (0.0, math.inf, False, False),
    "lr_decay_rate": (0.0, 1.0, False, True),
}
_INT_MINIMA: dict[str, int] = {
    "max_splits_per_layer": 0,
    "steps_task1": 1,
    "steps_head": 1,
    "steps_selective": 1,
    "steps_expand": 1,
    "steps_split_pretrain": 0,
    "steps_split": 1,
    "batch_size": 1,
    "lr_decay_steps": 1,
    "seed": 0,
    "eval_batch_size": 1,
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "loss": LOSSES,
    "prox_scale": PROX_SCALES,
    "split_when": SPLIT_WHEN,
    "split_retrain": SPLIT_RETRAIN,
    "opt_state_policy": OPT_STATE_POLICIES,
    "expansion_loss_on": EXPANSION_LOSS_ON,
    "selective_retraining": SELECTIVE_RETRAINING,
}


def _range_text(low, high, low_inc, high_inc) -> str:
    left = "[" if low_inc else "("
    right = "]" if high_inc else ")"
    return f"{left}{low}, {high}{right}"


def _in_range(value, low, high, low_inc, high_inc) -> bool | None:
    """None if ``value`` is not a number (bools are not), else whether it is finite and in range."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        return None
    v = float(value)
    return (
        math.isfinite(v)
        and (v >= low if low_inc else v > low)
        and (v <= high if high_inc else v < high)
    )


def validate_config(cfg: DENConfig) -> DENConfig:
    """Checks every field of ``cfg``; raises ``ValueError`` naming field, value and range."""
    for name, (low, high, low_inc, high_inc) in _FLOAT_RANGES.items():
        value = getattr(cfg, name)
        in_range = _in_range(value, low, high, low_inc, high_inc)
        if in_range is None:
            raise ValueError(f"DENConfig.{name} must be a number, got {value!r}")
        if not in_range:
            raise ValueError(
                f"DENConfig.{name}={value!r} is out of range; allowed: "
                f"{_range_text(low, high, low_inc, high_inc)}"
            )
    for name, minimum in _INT_MINIMA.items():
        value = getattr(cfg, name)
        if not _is_int(value):
            raise ValueError(f"DENConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if value < minimum:
            raise ValueError(
                f"DENConfig.{name}={value!r} is out of range; allowed: integers >= {minimum}"
            )
    _check_new_nodes_k(cfg.new_nodes_k)
    head = cfg.head_l1_lambda
    if head is not None and not _in_range(head, 0.0, math.inf, True, False):
        raise ValueError(
            f"DENConfig.head_l1_lambda={head!r} is out of range; allowed: null (l1_lambda) "
            "or a number in [0.0, inf)"
        )
    for name, choices in _CHOICES.items():
        value = getattr(cfg, name)
        if value not in choices:
            raise ValueError(f"DENConfig.{name}={value!r} is not allowed; choose one of {choices}")
    if cfg.selective_retraining == "compact" and cfg.opt_state_policy != "reset":
        raise ValueError(
            'DENConfig.selective_retraining="compact" needs opt_state_policy="reset" (a carried '
            f"optimizer state has the full network's shapes), got {cfg.opt_state_policy!r}"
        )
    return cfg


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_new_nodes_k(value) -> None:
    if _is_int(value):
        if value < 1:
            raise ValueError(
                f"DENConfig.new_nodes_k={value!r} is out of range; allowed: integers >= 1, "
                "or a list of integers >= 0 (one per hidden layer, at least one >= 1)"
            )
        return
    ok = (
        isinstance(value, tuple)
        and len(value) > 0
        and all(_is_int(v) and v >= 0 for v in value)
        and any(v >= 1 for v in value)
    )
    if not ok:
        raise ValueError(
            f"DENConfig.new_nodes_k must be an integer >= 1 or a list of integers >= 0 (one "
            f"per hidden layer, at least one >= 1), got "
            f"{list(value) if isinstance(value, tuple) else value!r}"
        )


def config_from_dict(data: Mapping[str, Any]) -> DENConfig:
    """Builds a :class:`DENConfig` from a mapping; unknown keys raise ``ValueError``.

    Missing keys take their defaults. Integers are accepted for float fields.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a DEN config must be a mapping of field names, got {type(data)}")
    known = {f.name for f in dataclasses.fields(DENConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown DENConfig key(s) {unknown}; known keys: {sorted(known)}")
    return DENConfig(**dict(data))


def config_to_dict(cfg: DENConfig) -> dict[str, Any]:
    """The config as a plain JSON-serialisable dict (inverse of :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def load_config(path: str | os.PathLike) -> DENConfig:
    """Loads a :class:`DENConfig` from a ``.yaml``/``.yml`` or ``.json`` file.

    The file holds a mapping of fields; a top-level ``den:`` key holding that mapping is
    also accepted (so one experiment file can carry other sections).
    """
    path = os.fspath(path)
    if not path.endswith((".yaml", ".yml", ".json")):
        raise ValueError(f"config file {path!r} must end in .yaml, .yml or .json")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if data is None:
        data = {}
    if isinstance(data, Mapping) and set(data) == {"den"}:
        data = data["den"]
    return config_from_dict(data)
