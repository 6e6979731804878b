"""DEN: Dynamically Expandable Networks (Yoon, Yang, Lee, Hwang; ICLR 2018) in JAX.

Public entry: :func:`learn_task`. See ``docs/den_algorithm.md``.
"""

from den_jax.den.config import (
    DENConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    validate_config,
)
from den_jax.den.learner import learn_task, learn_task_with_state, lr_schedule, make_settings
from den_jax.den.phases import PhaseSettings, PhaseState
from den_jax.den.proximal import prox_group_lasso_columns, prox_l1, soft_threshold
from den_jax.den.selection import Selection, bfs_units, select_subnetwork, subnetwork_masks
from den_jax.den.split import choose_split_units, split_units, unit_drift

__all__ = [
    "DENConfig",
    "PhaseSettings",
    "PhaseState",
    "Selection",
    "bfs_units",
    "choose_split_units",
    "config_from_dict",
    "config_to_dict",
    "learn_task",
    "learn_task_with_state",
    "load_config",
    "lr_schedule",
    "make_settings",
    "prox_group_lasso_columns",
    "prox_l1",
    "select_subnetwork",
    "soft_threshold",
    "split_units",
    "subnetwork_masks",
    "unit_drift",
    "validate_config",
]
