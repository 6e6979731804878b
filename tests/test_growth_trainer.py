"""The growth trainer: growth mid-training, NaN handling, checkpoint resume, continual data."""

import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import den_jax as dj
from den_jax import growth as g
from den_jax import losses


def blobs(n=96, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 4.0
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def linear(n=96, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x @ rng.normal(size=(d,)) + 0.5).astype(np.float32)


def every_epoch(actions):
    return g.FunctionStrategy(
        should_grow_fn=lambda m, s, e: (e in (0, 1), "scripted"),
        growth_action_fn=lambda m, s: actions(m),
    )


GROW = every_epoch(
    lambda m: [g.GrowthAction("width", 0, 2), g.GrowthAction("depth", 2)][
        : 1 + (len(m["widths"]) == 2)
    ]
)


ONCE = g.FunctionStrategy(
    should_grow_fn=lambda m, s, e: (s["growths"] == 0, "first epoch"),
    growth_action_fn=lambda m, s: g.GrowthAction("width", 0, 3),
)


class TrainerTest(parameterized.TestCase):
    def test_classification_grows_and_keeps_training(self):
        x, y = blobs()
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
        s0 = g.init_state(cfg, jax.random.PRNGKey(1), 6, 3, (4, 4))
        before = g.evaluate(s0, cfg, x, y)
        s = g.train(s0, cfg, x, y, 4, strategy=GROW, enable_growth=True)
        # Epoch 0: +2 units in layer 0 and a new top layer; epoch 1: +2 units in layer 0.
        self.assertEqual(s.net.widths, (8, 4, 4))
        self.assertEqual(
            [(e.epoch, e.kind, e.layer, e.units) for e in s.history.events],
            [(0, "width", 0, 2), (0, "depth", 2, 4), (1, "width", 0, 2)],
        )
        ev = s.history.events[0]
        self.assertEqual(ev.params_after - ev.params_before, 2 * 6 + 2 + 2 * 4)
        self.assertEqual(s.step, 4 * (96 // 16))
        self.assertEqual(int(s.opt_state[0].count), s.step)  # Adam kept counting
        chex.assert_trees_all_equal_shapes(s.opt_state, g.make_optimizer(cfg).init(s.net.params))
        after = g.evaluate(s, cfg, x, y)
        self.assertLess(after["loss"], before["loss"])
        self.assertGreater(after["accuracy"], 0.8)
        self.assertEqual(g.predict(s, cfg, x).shape, (96,))

    def test_growth_does_not_change_outputs_at_the_moment_of_growth(self):
        x, y = blobs()
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
        s = g.train(g.init_state(cfg, jax.random.PRNGKey(1), 6, 3, (4, 4)), cfg, x, y, 1)
        grown = g.train(s, cfg, x, y, 0)  # no epochs: unchanged
        self.assertIs(grown.net, s.net)
        net2, _ = g.apply_actions(
            s.net,
            jax.random.PRNGKey(0),
            [g.GrowthAction("width", 1, 4), g.GrowthAction("depth", 1)],
        )
        chex.assert_trees_all_close(
            dj.apply(net2, x, "main"), dj.apply(s.net, x, "main"), atol=1e-5
        )

    @parameterized.parameters("adam", "sgd", "rmsprop", "optax")
    def test_regression_optimizers_and_custom_loss(self, name):
        x, y = linear()
        opt = optax.adam(1e-2) if name == "optax" else name
        huber = lambda out, t: optax.huber_loss(out, t).mean()  # noqa: E731
        cfg = g.TrainerConfig(
            problem="regression",
            optimizer=opt,
            learning_rate=1e-2,
            batch_size=32,
            loss_fn=huber if name == "sgd" else None,
        )
        s0 = g.init_state(cfg, jax.random.PRNGKey(0), 4, 1, (4,))
        s = g.train(s0, cfg, x, y, 8)
        m0, m = g.evaluate(s0, cfg, x, y), g.evaluate(s, cfg, x, y)
        self.assertLess(m["mse"], m0["mse"])
        self.assertEqual(set(m), {"loss", "mse", "mae", "r2"})
        self.assertEqual(g.predict(s, cfg, x).shape, (96, 1))

    def test_dropout_trains(self):
        x, y = blobs()
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16, dropout=0.3)
        s = g.train(g.init_state(cfg, jax.random.PRNGKey(1), 6, 3, (8,)), cfg, x, y, 5)
        self.assertGreater(g.evaluate(s, cfg, x, y)["accuracy"], 0.7)

    def test_nan_loss_stops_with_last_good_state(self):
        x, y = linear()
        cfg = g.TrainerConfig(problem="regression", batch_size=32)
        s = g.train(g.init_state(cfg, jax.random.PRNGKey(0), 4, 1, (4,)), cfg, x, y, 2)
        bad = g.TrainerConfig(
            problem="regression",
            batch_size=32,
            nan_policy="stop",
            loss_fn=lambda out, t: jnp.mean(jnp.log(out - 1e6)),
        )
        out = g.train(s, bad, x, y, 3)
        self.assertIn("non-finite training loss", out.history.stopped)
        self.assertEqual(out.epoch, 2)
        chex.assert_trees_all_equal(out.net.params, s.net.params)
        with self.assertRaisesRegex(
            FloatingPointError, r"task 'main', phase training, epoch 2 \(steps 7..9\)"
        ):
            g.train(
                s,
                g.TrainerConfig(problem="regression", batch_size=32, loss_fn=bad.loss_fn),
                x,
                y,
                1,
            )

    def test_checkpoint_resume_continues_the_same_run(self):
        x, y = blobs()
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
        strategy = g.LossPlateau(patience=1, cooldown=0, min_delta=10.0, max_units_per_growth=2)
        s0 = g.init_state(cfg, jax.random.PRNGKey(1), 6, 3, (4, 4))
        straight = g.train(s0, cfg, x, y, 4, strategy=strategy, enable_growth=True)
        d = tempfile.mkdtemp()
        half = g.train(
            s0,
            cfg,
            x,
            y,
            2,
            strategy=strategy,
            enable_growth=True,
            checkpoint_dir=d,
            checkpoint_every=2,
        )
        restored = g.restore_checkpoint(d, cfg)
        self.assertEqual(restored.history, half.history)
        self.assertEqual(restored.strategy_state, half.strategy_state)
        self.assertEqual(type(restored.opt_state[0]).__name__, "ScaleByAdamState")
        resumed = g.train(restored, cfg, x, y, 2, strategy=strategy, enable_growth=True)
        self.assertEqual(resumed.net.widths, straight.net.widths)
        self.assertEqual(resumed.history.events, straight.history.events)
        self.assertEqual(len(resumed.history.epochs), 4)
        chex.assert_trees_all_close(resumed.net.params, straight.net.params, atol=1e-5)
        for a, b in zip(resumed.history.epochs, straight.history.epochs):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        with self.assertRaisesRegex(ValueError, "learning_rate"):
            g.restore_checkpoint(d, g.TrainerConfig(learning_rate=0.5, batch_size=16))

    def test_continual_learning_same_head_and_new_task(self):
        x, y = blobs(seed=0)
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
        s = g.train(g.init_state(cfg, jax.random.PRNGKey(1), 6, 3, (4,)), cfg, x, y, 3)
        x2, y2 = blobs(seed=1)
        s2 = g.continual_learning(s, cfg, x2, y2, 2)
        self.assertEqual(s2.task, "main")
        self.assertEqual(s2.epoch, 5)
        x3, y3 = blobs(seed=2, classes=5)
        with self.assertRaisesRegex(ValueError, r"label \d at index \d+ is outside \[0, 3\)"):
            g.continual_learning(s2, cfg, x3, y3, 1)
        old_logits = dj.apply(s2.net, x, "main")
        s3 = g.continual_learning(
            s2, cfg, x3, y3, 2, new_task="five", strategy=ONCE, enable_growth=True
        )
        self.assertEqual(s3.task, "five")
        self.assertEqual(s3.net.task("five").output_dim, 5)
        # The old head is frozen; old task sees none of the units grown for the new task.
        head3, head2 = s3.net.params["output_heads"]["main"], s2.net.params["output_heads"]["main"]
        np.testing.assert_array_equal(head3["w"][:4], head2["w"])
        np.testing.assert_array_equal(head3["w"][4:], 0.0)  # rows of the new units
        np.testing.assert_array_equal(head3["b"], head2["b"])
        self.assertEqual(dj.task_widths(s3.net, "main")[0], 4)
        self.assertEqual(s3.net.widths[0], 7)
        self.assertEqual(s3.net.meta.layers[0].stamps, (0,) * 4 + (1,) * 3)
        self.assertEqual(g.evaluate(s3, cfg, x, y, task="main").keys(), {"loss", "accuracy"})
        self.assertEqual(old_logits.shape, (96, 3))

    def test_bad_input(self):
        x, y = blobs()
        cfg = g.TrainerConfig()
        s = g.init_state(cfg, jax.random.PRNGKey(0), 6, 3, (4,))
        with self.assertRaisesRegex(ValueError, r"shape \[N, 6\]"):
            g.train(s, cfg, x[:, :5], y, 1)
        with self.assertRaisesRegex(ValueError, "non-finite value nan at row 0, column 0"):
            g.train(s, cfg, np.full_like(x, np.nan), y, 1)
        with self.assertRaisesRegex(ValueError, "epochs"):
            g.train(s, cfg, x, y, -1)
        with self.assertRaisesRegex(ValueError, "optimizer"):
            g.TrainerConfig(optimizer="adagrad-ish")
        with self.assertRaisesRegex(ValueError, "dropout"):
            g.TrainerConfig(dropout=1.0)
        with self.assertRaisesRegex(ValueError, "strategy"):
            g.train(s, cfg, x, y, 1, strategy=object(), enable_growth=True)

    def test_bad_data_refused_where_it_enters_naming_split_and_index(self):
        x, y = blobs()
        xr, yr = linear()
        cfg = g.TrainerConfig(batch_size=16)
        reg = g.TrainerConfig(problem="regression", batch_size=32)
        s = g.init_state(cfg, jax.random.PRNGKey(0), 6, 3, (4,))
        sr = g.init_state(reg, jax.random.PRNGKey(0), 4, 1, (4,))

        def with_(a, index, value):
            a = a.copy() if not isinstance(value, float) or a.dtype.kind == "f" else a.astype(float)
            a[index] = value
            return a

        cases = [
            (lambda: g.train(s, cfg, with_(x, (7, 2), np.nan), y, 1),
             r"training data of task 'main': x.*non-finite value nan at row 7, column 2"),
            (lambda: g.train(s, cfg, with_(x, (3, 0), np.inf), y, 1),
             r"training data.*non-finite value inf at row 3, column 0"),
            (lambda: g.train(s, cfg, x, with_(y, 11, 99), 1),
             r"training data of task 'main': y.*label 99 at index 11 is outside \[0, 3\)"),
            (lambda: g.train(s, cfg, x, with_(y, 5, -1), 1), r"label -1 at index 5"),
            (lambda: g.train(s, cfg, x, y.astype(np.float32), 1), "integer dtype, got float32"),
            (lambda: g.train(s, cfg, x, y, 1, validation=(x, with_(y, 4, 3))),
             r"validation data of task 'main': y.*label 3 at index 4"),
            (lambda: g.evaluate(s, cfg, with_(x, (1, 1), np.nan), y),
             r"evaluation data of task 'main': x.*row 1, column 1"),
            (lambda: g.train(sr, reg, xr, with_(yr, 9, np.nan), 1),
             r"training data of task 'main': y.*non-finite value nan at row 9, column 0"),
            (lambda: g.continual_learning(s, cfg, x, with_(y, 0, 99), 1, new_task="t2"),
             r"new data of task 't2': y: class\(es\) 3, 4, 5, 6, 7, \.\.\. never occur.*99"),
            (lambda: g.continual_learning(s, cfg, x, with_(y, 2, -1), 1, new_task="t2"),
             r"new data of task 't2': y: label -1 at index 2"),
        ]  # fmt: skip
        for i, (call, pattern) in enumerate(cases):
            with self.subTest(i=i), self.assertRaisesRegex(ValueError, pattern):
                call()
        self.assertEqual(s.epoch, 0)

    def test_non_finite_validation_loss_stops_naming_phase(self):
        x, y = linear()
        cfg = g.TrainerConfig(problem="regression", batch_size=32)
        s = g.init_state(cfg, jax.random.PRNGKey(0), 4, 1, (4,))
        huge = np.full_like(x, 3e38)  # finite inputs whose outputs overflow to inf
        with self.assertRaisesRegex(
            FloatingPointError, r"validation loss.*task 'main', phase validation, after epoch 0"
        ):
            g.train(s, cfg, x, y, 2, validation=(huge, y))
        stop = g.TrainerConfig(problem="regression", batch_size=32, nan_policy="stop")
        out = g.train(s, stop, x, y, 2, validation=(huge, y))
        self.assertEqual(out.epoch, 0)
        self.assertIn("phase validation", out.history.stopped)


class TrapsTest(parameterized.TestCase):
    def test_regression_loss_shapes_are_checked_before_training(self):
        x, y = linear()
        for bad, pattern in [
            # dj.losses.huber refuses [B] against [B, 1] (it would broadcast to [B, B]).
            (lambda out, t: losses.huber(out[:, 0], t), r"outputs \(32, 1\) and targets"),
            # A loss that forgets the mean returns [B, 1]: not a scalar.
            (lambda out, t: (out - t) ** 2, r"must return a scalar.*returned shape \(32, 1\)"),
        ]:
            cfg = g.TrainerConfig(problem="regression", batch_size=32, loss_fn=bad)
            s = g.init_state(cfg, jax.random.PRNGKey(0), 4, 1, (4,))
            with self.assertRaisesRegex(ValueError, pattern):
                g.train(s, cfg, x, y, 1)
        cfg = g.TrainerConfig(problem="regression", batch_size=32, loss_fn=losses.huber)
        s = g.train(g.init_state(cfg, jax.random.PRNGKey(0), 4, 1, (4,)), cfg, x, y, 1)
        self.assertEqual(s.epoch, 1)

    def test_typed_keys_train_and_checkpoint(self):
        x, y = blobs()
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
        typed = g.init_state(cfg, jax.random.key(1), 6, 3, (4, 4))
        raw = g.init_state(cfg, jax.random.PRNGKey(1), 6, 3, (4, 4))
        a = g.train(typed, cfg, x, y, 2, strategy=ONCE, enable_growth=True)
        b = g.train(raw, cfg, x, y, 2, strategy=ONCE, enable_growth=True)
        chex.assert_trees_all_equal(a.net.params, b.net.params)
        for state in (a, b):
            d = tempfile.mkdtemp()
            g.save_checkpoint(d, state, cfg)
            back = g.restore_checkpoint(d, cfg)
            self.assertEqual(back.key.dtype, state.key.dtype)
            np.testing.assert_array_equal(
                jax.random.key_data(back.key), jax.random.key_data(state.key)
            )
            c = g.continual_learning(back, cfg, x, y, 1)
            self.assertEqual(c.epoch, 3)

    def test_summary_reports_a_growth_after_the_last_epoch(self):
        x, y = blobs()
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
        last = g.FunctionStrategy(
            should_grow_fn=lambda m, s, e: (e == 1, "last epoch"),
            growth_action_fn=lambda m, s: g.GrowthAction("width", 0, 3),
        )
        s = g.train(
            g.init_state(cfg, jax.random.PRNGKey(0), 6, 3, (4, 4)), cfg, x, y, 2,
            strategy=last, enable_growth=True,
        )  # fmt: skip
        self.assertEqual(s.net.widths, (7, 4))
        self.assertEqual(s.history.epochs[-1]["widths"], [4, 4])  # logged before the growth
        text = g.growth_summary(s.history)
        self.assertIn("architecture: [4, 4] -> [7, 4]", text)
        self.assertIn(f"-> {dj.count_params(s.net)}", text)

    def test_iterable_data_and_exports(self):
        x, y = blobs()
        cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
        s0 = g.init_state(cfg, jax.random.PRNGKey(0), 6, 3, (4,))
        batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
        a = g.train(s0, cfg, iter(batches), None, 2, validation=iter(batches))
        b = g.train(s0, cfg, x, y, 2, validation=(x, y))
        chex.assert_trees_all_equal(a.net.params, b.net.params)
        self.assertEqual(g.evaluate(a, cfg, batches), g.evaluate(b, cfg, x, y))
        for name in (
            "plot_history", "plot_architecture", "plot_layer_importance", "unit_importance",
            "layer_importance",
        ):  # fmt: skip
            self.assertIn(name, g.__all__)
            self.assertTrue(callable(getattr(g, name)))


if __name__ == "__main__":
    absltest.main()
