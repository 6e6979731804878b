"""Continual-learning baselines on the same expandable network as DEN.

STL (separate networks), fine-tuning, L2 transfer and EWC (see
:mod:`den_jax.baselines.learners`); the architecture methods Progressive Networks
(:mod:`den_jax.baselines.pnn`) and PackNet (:mod:`den_jax.baselines.packnet`).
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
    normalise_fisher,
    stl_learn_task,
)
from den_jax.baselines.packnet import (
    packnet_count,
    packnet_learn_task,
    packnet_predict,
    packnet_task_network,
)
from den_jax.baselines.pnn import pnn_count, pnn_forward, pnn_learn_task, pnn_predict

__all__ = [
    "BASELINES",
    "BaselineConfig",
    "Method",
    "diagonal_fisher",
    "ewc_learn_task",
    "ewc_state_abstract",
    "finetune_learn_task",
    "l2_learn_task",
    "normalise_fisher",
    "packnet_count",
    "packnet_learn_task",
    "packnet_predict",
    "packnet_task_network",
    "pnn_count",
    "pnn_forward",
    "pnn_learn_task",
    "pnn_predict",
    "shared_params",
    "stl_learn_task",
]
