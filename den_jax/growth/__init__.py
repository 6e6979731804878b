"""Growth strategies: a single network that grows in width and depth while it trains.

Pure growth operations (:mod:`~den_jax.growth.ops`), strategies deciding when and how to
grow (:mod:`~den_jax.growth.strategies`), an epoch-based trainer
(:mod:`~den_jax.growth.trainer`), checkpoints (:mod:`~den_jax.growth.checkpointing`),
history, unit and layer importance; the plots (defined in :mod:`den_jax.plots`) are
re-exported here. See ``docs/growth.md``.
"""

from den_jax.growth.checkpointing import restore_checkpoint, save_checkpoint
from den_jax.growth.growth_trainer import GrowthTrainer
from den_jax.growth.history import GrowthEvent, History, growth_summary
from den_jax.growth.importance import layer_importance, unit_importance
from den_jax.growth.ops import (
    IDENTITY_SAFE_ACTIVATIONS,
    GrowthAction,
    apply_action,
    apply_actions,
    grow_width,
    insert_layer,
)
from den_jax.growth.strategies import (
    Adaptive,
    FunctionStrategy,
    GradientMagnitude,
    GrowthDecision,
    GrowthStrategy,
    LossPlateau,
    decide,
)
from den_jax.growth.trainer import (
    TrainerConfig,
    TrainState,
    continual_learning,
    evaluate,
    init_state,
    make_optimizer,
    outputs,
    predict,
    train,
)
from den_jax.plots import plot_architecture, plot_history, plot_layer_importance

__all__ = [
    "Adaptive",
    "FunctionStrategy",
    "GradientMagnitude",
    "GrowthAction",
    "GrowthDecision",
    "GrowthEvent",
    "GrowthStrategy",
    "GrowthTrainer",
    "History",
    "IDENTITY_SAFE_ACTIVATIONS",
    "LossPlateau",
    "TrainState",
    "TrainerConfig",
    "apply_action",
    "apply_actions",
    "continual_learning",
    "decide",
    "evaluate",
    "grow_width",
    "growth_summary",
    "init_state",
    "insert_layer",
    "layer_importance",
    "make_optimizer",
    "outputs",
    "plot_architecture",
    "plot_history",
    "plot_layer_importance",
    "predict",
    "restore_checkpoint",
    "save_checkpoint",
    "train",
    "unit_importance",
]
