"""A small object around the functional trainer, for scripts and notebooks.

:class:`GrowthTrainer` holds a :class:`~den_jax.growth.trainer.TrainerConfig`, a strategy
and the current :class:`~den_jax.growth.trainer.TrainState`; every method calls the
matching pure function and stores the new state. Use the functions directly inside
larger pure code.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from den_jax.growth import checkpointing, trainer
from den_jax.growth.history import History, growth_summary
from den_jax.growth.protocol import GrowthStrategy

__all__ = [
    "GrowthTrainer",
]


class GrowthTrainer:
    """Stateful convenience wrapper: ``train``, ``evaluate``, ``predict``, ``save``...

    Example::

        t = GrowthTrainer(TrainerConfig(problem="classification"), input_dim=64,
                          output_dim=10, hidden_widths=(8, 8), strategy=LossPlateau())
        t.train(x, y, epochs=50, enable_growth=True, validation=(x_val, y_val))
        t.evaluate(x_test, y_test); text = t.summary()
    """

    def __init__(
        self,
        config: trainer.TrainerConfig,
        *,
        input_dim: int,
        output_dim: int,
        hidden_widths=(8, 8),
        activation: str = "relu",
        strategy: GrowthStrategy | None = None,
        seed: int = 0,
    ):
        self.config = config
        self.strategy = strategy
        self.state = trainer.init_state(
            config,
            jax.random.PRNGKey(seed),
            input_dim,
            output_dim,
            hidden_widths,
            activation=activation,
        )

    @property
    def history(self) -> History:
        return self.state.history

    @property
    def widths(self) -> tuple[int, ...]:
        return self.state.net.widths

    def train(self, x, y, epochs: int, *, enable_growth: bool = False, **kwargs) -> History:
        kwargs.setdefault("strategy", self.strategy)
        self.state = trainer.train(
            self.state, self.config, x, y, epochs, enable_growth=enable_growth, **kwargs
        )
        return self.state.history

    def continual_learning(self, new_x, new_y, epochs: int, **kwargs) -> History:
        kwargs.setdefault("strategy", self.strategy)
        kwargs.setdefault("enable_growth", True)
        self.state = trainer.continual_learning(
            self.state, self.config, new_x, new_y, epochs, **kwargs
        )
        return self.state.history

    def evaluate(self, x, y, task: str | None = None) -> dict[str, float]:
        return trainer.evaluate(self.state, self.config, x, y, task)

    def predict(self, x, task: str | None = None) -> np.ndarray:
        return trainer.predict(self.state, self.config, x, task)

    def save(self, directory: str) -> int:
        return checkpointing.save_checkpoint(directory, self.state, self.config)

    def restore(self, directory: str, step: int | None = None) -> Any:
        self.state = checkpointing.restore_checkpoint(directory, self.config, step)
        return self.state

    def summary(self) -> str:
        return growth_summary(self.state.history)
