"""Strategies fire exactly when their rules say, on scripted loss and gradient sequences."""

import json

import hypothesis.strategies as st
from absl.testing import absltest, parameterized
from hypothesis import given, settings

from den_jax.growth import (
    Adaptive,
    FunctionStrategy,
    GradientMagnitude,
    GrowthAction,
    LossPlateau,
    decide,
)


def run(strategy, losses=None, grads=None, widths=(8, 8)):
    """Feeds a scripted sequence; returns the epochs at which growth fired and the actions."""
    n = len(losses if losses is not None else grads)
    state, fired, actions = strategy.init_state(), [], []
    widths = list(widths)
    for epoch in range(n):
        metrics = {
            "loss": 1.0 if losses is None else losses[epoch],
            "grad_norm": 1.0 if grads is None else grads[epoch],
            "layer_grad_norms": [0.1, 0.3][: len(widths)],
            "widths": list(widths),
        }
        state, d = decide(strategy, metrics, state, epoch)
        json.dumps(state)  # strategy state must be JSON (it goes into checkpoints)
        if d.grow:
            fired.append(epoch)
            actions.append(d.actions)
            for a in d.actions:
                if a.kind == "width":
                    widths[a.layer] += a.units
                else:
                    widths.insert(a.layer, widths[a.layer - 1])
    return fired, actions, widths


def reference_plateau(losses, patience, cooldown, min_delta):
    """Direct transcription of the documented LossPlateau rule."""
    best, wait, cool, fired = None, 0, 0, []
    for epoch, loss in enumerate(losses):
        cooling = cool > 0
        if cooling:
            cool -= 1
            wait = 0
        if best is None or loss < best - min_delta:
            best, wait = loss, 0
        elif not cooling:
            wait += 1
        if wait >= patience:
            fired.append(epoch)
            wait, cool = 0, cooldown
    return fired


class LossPlateauTest(parameterized.TestCase):
    def test_scripted_sequence(self):
        # Improves for 3 epochs, then flat: wait = 1, 2 at epochs 3, 4 -> fires at epoch 4.
        # Cooldown 2 covers epochs 5, 6 (no counting); wait = 1, 2 at epochs 7, 8 -> fires at 8.
        losses = [1.0, 0.8, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.5]
        fired, actions, widths = run(LossPlateau(patience=2, cooldown=2, min_delta=0.01), losses)
        self.assertEqual(fired, [4, 8])
        self.assertEqual(actions[0], (GrowthAction("width", 0, 4), GrowthAction("width", 1, 4)))
        self.assertEqual(widths, [18, 18])

    def test_min_delta(self):
        # Measured from the best value (1.0), no decrease reaches min_delta=0.01.
        losses = [1.0, 0.996, 0.992, 0.9915]
        fired, _, _ = run(LossPlateau(patience=3, cooldown=0, min_delta=0.01), losses)
        self.assertEqual(fired, [3])
        fired, _, _ = run(LossPlateau(patience=3, cooldown=0, min_delta=0.001), losses)
        self.assertEqual(fired, [])

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
        st.integers(1, 4),
        st.integers(0, 3),
        st.sampled_from([0.0, 0.01, 0.1]),
    )
    def test_matches_reference_rule(self, losses, patience, cooldown, min_delta):
        strategy = LossPlateau(patience=patience, cooldown=cooldown, min_delta=min_delta)
        fired, _, _ = run(strategy, losses)
        self.assertEqual(fired, reference_plateau(losses, patience, cooldown, min_delta))

    def test_units_ratio_and_cap(self):
        s = LossPlateau(
            patience=1,
            cooldown=0,
            growth_ratio=0.5,
            max_units_per_growth=3,
            max_network_size=21,
            layers=(1,),
        )
        fired, actions, widths = run(s, [1.0, 1.0, 1.0, 1.0, 1.0])
        # 8+8=16 hidden units, cap 21: +3 (max per growth), +2 (cap), then no room.
        self.assertEqual(fired, [1, 2])
        self.assertEqual([a[0].units for a in actions], [3, 2])
        self.assertEqual(widths, [8, 13])

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, "patience"):
            LossPlateau(patience=0)
        with self.assertRaisesRegex(ValueError, "min_delta"):
            LossPlateau(min_delta=-1.0)
        with self.assertRaisesRegex(ValueError, "non-finite"):
            run(LossPlateau(), [1.0, float("nan")])
        with self.assertRaisesRegex(ValueError, "already has 16 hidden units"):
            run(LossPlateau(max_network_size=10), [1.0])
        with self.assertRaisesRegex(ValueError, "layer 5"):
            run(LossPlateau(patience=1, layers=(5,)), [1.0, 1.0])


class GradientMagnitudeTest(parameterized.TestCase):
    def test_scripted_sequence(self):
        grads = [1.0, 0.05, 0.05, 0.5, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]
        # Below 0.1 at 1, 2, (reset at 3), 4, 5, 6 -> fires at 6 (patience 3). Cooldown 1
        # covers epoch 7; counting restarts at 8: 8, 9, 10 -> fires at 10.
        fired, actions, _ = run(
            GradientMagnitude(threshold=0.1, patience=3, cooldown=1), grads=grads
        )
        self.assertEqual(fired, [6, 10])
        # Largest layer gradient norm is layer 1.
        self.assertEqual(actions[0], (GrowthAction("width", 1, 4),))

    def test_min_loss(self):
        s = GradientMagnitude(threshold=0.1, patience=1, min_loss=2.0)
        fired, _, _ = run(s, grads=[0.01, 0.01])
        self.assertEqual(fired, [])


class AdaptiveTest(parameterized.TestCase):
    def test_either_rule_fires_and_depth_every(self):
        s = Adaptive(
            loss=LossPlateau(patience=2, cooldown=0, min_delta=0.0),
            gradient=GradientMagnitude(threshold=0.1, patience=2, cooldown=0, grow_all_layers=True),
            depth_every=2,
            max_network_size=100,
        )
        # Loss flat from epoch 0 -> wait 1, 2 at epochs 1, 2 -> fire at 2 (width).
        # Both rules reset; gradient small from epoch 3 -> fires at 4 (loss too); 2nd -> depth.
        losses = [1.0, 1.0, 1.0, 0.5, 0.4, 0.3]
        grads = [1.0, 1.0, 1.0, 0.01, 0.01, 1.0]
        state, fired, kinds, widths = s.init_state(), [], [], [8, 8]
        for epoch in range(6):
            m = {
                "loss": losses[epoch],
                "grad_norm": grads[epoch],
                "widths": widths,
                "layer_grad_norms": [0.0] * len(widths),
            }
            state, d = decide(s, m, state, epoch)
            if d.grow:
                fired.append(epoch)
                kinds.append(tuple(a.kind for a in d.actions))
                widths = [w for w in widths]
                for a in d.actions:
                    if a.kind == "width":
                        widths[a.layer] += a.units
                    else:
                        widths.insert(a.layer, widths[a.layer - 1])
        self.assertEqual(fired, [2, 4])
        self.assertEqual(kinds, [("width", "width"), ("depth",)])
        self.assertEqual(widths, [12, 12, 12])

    def test_cap(self):
        s = Adaptive(loss=LossPlateau(patience=1, cooldown=0), max_network_size=18)
        fired, actions, widths = run(s, [1.0] * 5)
        self.assertEqual(sum(widths), 18)
        self.assertEqual(fired, [1])


class CustomStrategyTest(parameterized.TestCase):
    def test_function_strategy(self):
        s = FunctionStrategy(
            should_grow_fn=lambda m, state, epoch: (epoch % 3 == 2, "every third epoch"),
            growth_action_fn=lambda m, state: GrowthAction("depth", len(m["widths"])),
        )
        fired, actions, widths = run(s, [1.0] * 6)
        self.assertEqual(fired, [2, 5])
        self.assertEqual(widths, [8, 8, 8, 8])

    def test_action_naming_missing_layer_is_refused(self):
        s = FunctionStrategy(
            should_grow_fn=lambda m, state, epoch: (True, "always"),
            growth_action_fn=lambda m, state: [GrowthAction("width", 7, 2)],
        )
        with self.assertRaisesRegex(ValueError, "layer 7, which does not exist"):
            run(s, [1.0])
        s = FunctionStrategy(
            should_grow_fn=lambda m, state, epoch: (True, "always"),
            growth_action_fn=lambda m, state: [GrowthAction("width", 0, -2)],
        )
        with self.assertRaisesRegex(ValueError, "expected > 0"):
            run(s, [1.0])


if __name__ == "__main__":
    absltest.main()
