"""Continual-learning baselines on the same expandable network as DEN.

STL (separate networks), fine-tuning, L2 transfer and EWC; see
:mod:`den_jax.baselines.learners`.
"""

from den_jax.baselines.common import BaselineConfig, shared_params
from den_jax.baselines.learners import (
    BASELINES,
    Method,
    diagonal_fisher,
    ewc_learn_task,
    ewc_state_abstract,
    finetune_learn_task,
    l2_learn_task,
    stl_learn_task,
)

__all__ = [
    "BASELINES",
    "BaselineConfig",
    "Method",
    "diagonal_fisher",
    "ewc_learn_task",
    "ewc_state_abstract",
    "finetune_learn_task",
    "l2_learn_task",
    "shared_params",
    "stl_learn_task",
]
