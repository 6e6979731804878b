"""History JSON, summary text, plots and unit importance; the examples' quick modes."""

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import den_jax as dj
from den_jax import growth as g
from den_jax.growth import importance


def grown_run():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    cfg = g.TrainerConfig(learning_rate=1e-2, batch_size=16)
    strategy = g.FunctionStrategy(
        should_grow_fn=lambda m, s, e: (e == 1, "scripted"),
        growth_action_fn=lambda m, s: [g.GrowthAction("width", 0, 2), g.GrowthAction("depth", 1)],
    )
    s = g.init_state(cfg, jax.random.PRNGKey(1), 5, 2, (4,))
    s = g.train(s, cfg, x, y, 3, strategy=strategy, enable_growth=True, validation=(x, y))
    return s, cfg, x, y


class ReportingTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.state, cls.cfg, cls.x, cls.y = grown_run()

    def test_history_json_round_trip_and_summary(self):
        h = self.state.history
        again = g.History.from_json(json.loads(json.dumps(h.to_json())))
        self.assertEqual(again, h)
        text = g.growth_summary(h)
        self.assertIn("architecture: [4] -> [6, 6]", text)
        self.assertIn("+2 units in layer 0", text)
        self.assertIn("new layer at position 1 (6 units)", text)
        self.assertEqual(h.metric("val_accuracy"), [e["val_accuracy"] for e in h.epochs])
        with self.assertRaisesRegex(ValueError, "not a growth history"):
            g.History.from_json({"epochs": []})

    def test_plots_write_pngs(self):
        d = tempfile.mkdtemp()
        h = self.state.history
        paths = [
            g.plot_history(h, os.path.join(d, "h.png")),
            g.plot_architecture(h, os.path.join(d, "a.png")),
            g.plot_layer_importance(
                importance.unit_importance(self.state.net, "main"), os.path.join(d, "i.png")
            ),
        ]
        for p in paths:
            with open(p, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        with self.assertRaisesRegex(ValueError, "no epochs"):
            g.plot_history(g.History(), os.path.join(d, "x.png"))

    def test_weight_importance(self):
        net = dj.init_network(jax.random.PRNGKey(0), [3, 2], shared_input_dim=4)
        net = dj.add_task(net, jax.random.PRNGKey(1), "t", input_dim=4, output_dim=2)
        net = dj.add_units(net, jax.random.PRNGKey(2), 0, 2)  # zero outgoing weights
        scores = importance.unit_importance(net, "t")
        self.assertEqual([s.shape for s in scores], [(5,), (2,)])
        np.testing.assert_array_equal(scores[0][3:], 0.0)
        p = net.params
        expected = np.linalg.norm(p["input_heads"]["shared"]["w"][:, 0]) * np.linalg.norm(
            p["hidden"][1]["w"][0]
        )
        np.testing.assert_allclose(scores[0][0], expected, rtol=1e-6)
        summary = importance.layer_importance(scores)
        self.assertAlmostEqual(summary[0]["dead_fraction"], 0.4)

    def test_gradient_importance_shapes_and_errors(self):
        net, x, y = self.state.net, jnp.asarray(self.x), jnp.asarray(self.y)
        loss = lambda out, t: optax.softmax_cross_entropy_with_integer_labels(out, t).mean()  # noqa: E731
        scores = importance.unit_importance(net, "main", method="gradient", x=x, y=y, loss_fn=loss)
        self.assertEqual([s.shape for s in scores], [(6,), (6,)])
        self.assertTrue(all(np.all(s >= 0) for s in scores))
        with self.assertRaisesRegex(ValueError, "needs x, y and loss_fn"):
            importance.unit_importance(net, "main", method="gradient")
        with self.assertRaisesRegex(ValueError, "method"):
            importance.unit_importance(net, "main", method="magic")


class GrowthTrainerObjectTest(parameterized.TestCase):
    def test_wrapper_round_trip(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(48, 3)).astype(np.float32)
        y = x.sum(1)
        t = g.GrowthTrainer(
            g.TrainerConfig(problem="regression", learning_rate=1e-2, batch_size=16),
            input_dim=3,
            output_dim=1,
            hidden_widths=(4,),
            seed=1,
            strategy=g.LossPlateau(patience=1, cooldown=0, min_delta=10.0),
        )
        t.train(x, y, 3, enable_growth=True)
        self.assertGreater(t.widths[0], 4)
        d = tempfile.mkdtemp()
        t.save(d)
        params = t.state.net.params
        t.train(x, y, 1)
        t.restore(d)
        self.assertEqual(t.state.epoch, 3)
        np.testing.assert_array_equal(
            t.state.net.params["hidden"][0]["b"], params["hidden"][0]["b"]
        )
        self.assertEqual(t.predict(x).shape, (48, 1))
        self.assertIn("growth events", t.summary())
        self.assertIn("mse", t.evaluate(x, y))


class ExamplesQuickTest(parameterized.TestCase):
    def test_digits_quick(self):
        from experiments import growth_digits

        d = tempfile.mkdtemp()
        report = growth_digits.main(["--quick", "--out", d])
        run = report["runs"][0]
        self.assertGreater(run["growth_events"], 0)
        self.assertEqual(run["grown"]["steps"], run["fixed_final_size"]["steps"])
        self.assertTrue(os.path.exists(os.path.join(d, "growth_digits_history.png")))

    def test_diabetes_quick(self):
        from experiments import growth_diabetes

        report = growth_diabetes.main(["--quick", "--out", tempfile.mkdtemp()])
        self.assertGreater(report["growth_events"], 0)
        self.assertTrue(np.isfinite(report["test"]["mse"]))

    def test_continual_quick(self):
        from experiments import growth_continual

        report = growth_continual.main(["--quick"])
        self.assertEqual(len(report["stages"]), 3)
        self.assertIn("parity_test", report["stages"][-1])


if __name__ == "__main__":
    absltest.main()
