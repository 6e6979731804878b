"""den_jax: functional JAX networks that grow while they learn a stream of tasks."""

from den_jax.align import align_tree, grow_opt_state
from den_jax.capacity import (
    capacity_report,
    count_active_units,
    count_params,
    count_stored_params,
    index_map,
    unit_table,
)
from den_jax.masks import mask_updates, task_mask, trainable_mask
from den_jax.network import (
    ACTIVATIONS,
    ExpandableNet,
    LayerUnits,
    NetMeta,
    TaskSpec,
    add_task,
    apply,
    hidden_features,
    init_network,
    task_params,
    task_widths,
)
from den_jax.surgery import add_units, add_units_all, duplicate_units, remove_units

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "ExpandableNet",
    "LayerUnits",
    "NetMeta",
    "TaskSpec",
    "add_task",
    "add_units",
    "add_units_all",
    "align_tree",
    "apply",
    "capacity_report",
    "count_active_units",
    "count_params",
    "count_stored_params",
    "duplicate_units",
    "grow_opt_state",
    "hidden_features",
    "index_map",
    "init_network",
    "mask_updates",
    "remove_units",
    "task_mask",
    "task_params",
    "task_widths",
    "trainable_mask",
    "unit_table",
]
