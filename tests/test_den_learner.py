"""End-to-end DEN learner on tiny synthetic tasks."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import den_jax as dj
from den_jax import den, losses

TINY = dict(
    steps_task1=60,
    steps_head=10,
    steps_selective=20,
    steps_expand=20,
    steps_split=20,
    batch_size=16,
    new_nodes_k=3,
    eval_batch_size=32,
    lr_decay_steps=10,
    learning_rate=1e-2,
)


def _task(seed, n=64, d=6, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, classes))
    return x, (x @ w).argmax(-1).astype(np.int32)


def _net_with(names, d=6, classes=3, widths=(8, 6)):
    net = dj.init_network(jax.random.key(0), list(widths), shared_input_dim=d)
    for i, name in enumerate(names):
        net = dj.add_task(net, jax.random.key(10 + i), name, input_dim=d, output_dim=classes)
    return net


class LearnerTest(chex.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Task a (task-1 phase) is learned once and shared by the tests of task b.
        cfg = den.config_from_dict(TINY)
        cls.net_a, cls.report_a = den.learn_task(
            _net_with(["a"]), jax.random.key(1), "a", _task(0), None, cfg
        )

    def test_two_tasks_report_and_growth(self):
        cfg = den.config_from_dict({**TINY, "expansion_threshold": 0.0, "drift_threshold": 0.0})
        net = self.net_a
        self.assertIn("task1", self.report_a["phases"])
        self.assertEqual(self.report_a["phases"]["task1"]["steps"], 60)
        net = dj.add_task(net, jax.random.key(2), "b", input_dim=6, output_dim=3)
        net, rep = den.learn_task(net, jax.random.key(3), "b", _task(1), _task(2, n=20), cfg)
        json.dumps(rep)  # JSON-serialisable
        ph = rep["phases"]
        self.assertEqual(ph["head"]["steps"], 10)
        self.assertEqual(len(ph["selective"]["selected_units"]), 2)
        exp = ph["expansion"]
        self.assertTrue(exp["expanded"])  # tau = 0 always expands
        self.assertEqual(exp["added"], [3, 3])
        self.assertEqual([a - p for a, p in zip(exp["added"], exp["pruned"])], exp["kept"])
        self.assertEqual(exp["measured_on"], "valid")
        self.assertTrue(ph["split"]["ran"])
        expected_widths = [w + k + s for w, k, s in zip((8, 6), exp["kept"], ph["split"]["split"])]
        self.assertEqual(rep["widths"], expected_widths)
        self.assertEqual(list(net.widths), expected_widths)
        # New and duplicated units are stamped with task b: task a still sees 8 and 6 units.
        self.assertEqual(dj.task_widths(net, "a"), (8, 6))
        self.assertTrue(np.isfinite(rep["final_task_loss"]))

    @parameterized.named_parameters(("first_layer_only", [4, 0]), ("second_only", [0, 2]))
    def test_per_layer_k_adds_only_where_asked(self, k):
        cfg = den.config_from_dict(
            {**TINY, "new_nodes_k": k, "expansion_threshold": 0.0, "split_when": "never"}
        )
        net = dj.add_task(self.net_a, jax.random.key(2), "b", input_dim=6, output_dim=3)
        net, rep = den.learn_task(net, jax.random.key(3), "b", _task(1), None, cfg)
        exp = rep["phases"]["expansion"]
        self.assertEqual(exp["added"], k)
        self.assertEqual([a - p for a, p in zip(exp["added"], exp["pruned"])], exp["kept"])
        self.assertEqual(list(net.widths), [w + kept for w, kept in zip((8, 6), exp["kept"])])
        self.assertEqual(dj.task_widths(net, "a"), (8, 6))  # new units are stamped with b

    def test_per_layer_k_must_match_depth(self):
        cfg = den.config_from_dict({**TINY, "new_nodes_k": [3, 3, 3]})
        net = dj.add_task(self.net_a, jax.random.key(2), "b", input_dim=6, output_dim=3)
        with self.assertRaisesRegex(ValueError, r"new_nodes_k=\[3, 3, 3\] has 3 entries.*\(2\)"):
            den.learn_task(net, jax.random.key(3), "b", _task(1), None, cfg)

    def test_no_expansion_above_loss_and_split_only_after_expansion(self):
        cfg = den.config_from_dict(
            {**TINY, "expansion_threshold": 1e9, "split_when": "after_expansion"}
        )
        net = self.net_a
        net = dj.add_task(net, jax.random.key(2), "b", input_dim=6, output_dim=3)
        net, rep = den.learn_task(net, jax.random.key(3), "b", _task(1), None, cfg)
        self.assertFalse(rep["phases"]["expansion"]["expanded"])
        self.assertEqual(rep["phases"]["expansion"]["measured_on"], "train")
        self.assertFalse(rep["phases"]["split"]["ran"])
        self.assertEqual(net.widths, (8, 6))

    def test_full_restore_mode_keeps_old_task_bit_identical(self):
        # sigma = 0, no cap and retraining only of new weights: every drifted old unit is
        # split and restored, so task a's outputs are unchanged bit for bit.
        cfg = den.config_from_dict(
            {
                **TINY,
                "drift_lambda": 0.0,
                "drift_threshold": 0.0,
                "max_splits_per_layer": 1000,
                "split_retrain": "new",
                "expansion_threshold": 0.0,
            }
        )
        net = self.net_a
        x_a = jnp.asarray(_task(5)[0])
        before = np.asarray(dj.apply(net, x_a, "a"))
        net = dj.add_task(net, jax.random.key(2), "b", input_dim=6, output_dim=3)
        net, rep = den.learn_task(net, jax.random.key(3), "b", _task(1), None, cfg)
        self.assertGreater(sum(rep["phases"]["split"]["split"]), 0)
        np.testing.assert_array_equal(np.asarray(dj.apply(net, x_a, "a")), before)

    @parameterized.named_parameters(("reset", "reset"), ("grow", "grow"))
    def test_opt_state_policies_across_tasks(self, policy):
        cfg = den.config_from_dict({**TINY, "opt_state_policy": policy, "expansion_threshold": 0.0})
        net = _net_with(["a"])
        net, carried, _ = den.learn_task_with_state(
            net, jax.random.key(1), "a", _task(0), None, cfg
        )
        state, owner = carried
        net = dj.add_task(net, jax.random.key(2), "b", input_dim=6, output_dim=3)
        net, (state_b, owner_b), _ = den.learn_task_with_state(
            net, jax.random.key(3), "b", _task(1), None, cfg, opt_state=carried
        )
        chex.assert_trees_all_equal_shapes(state_b[0].mu, net.params)
        count = int(state_b[0].count)
        if policy == "grow":
            # Task a's 60 steps + head 10 + selective 20 + expansion 20 + split 20.
            self.assertEqual(count, 60 + 10 + 20 + 20 + 20)
        else:
            self.assertEqual(count, 20)  # only the last phase (split retraining)

    def test_sigmoid_loss_and_custom_optimizer(self):
        cfg = den.config_from_dict({**TINY, "loss": "sigmoid_ce"})
        net = _net_with(["a"])
        net, rep = den.learn_task(
            net,
            jax.random.key(1),
            "a",
            _task(0),
            None,
            cfg,
            optimizer=optax.sgd(0.1),
        )
        self.assertLess(rep["final_task_loss"], np.log(2.0))

    def test_non_finite_loss_names_task_and_phase(self):
        cfg = den.config_from_dict(TINY)
        bad = lambda logits, y: jnp.mean(jnp.log(logits - 1e6))  # noqa: E731
        with pytest.raises(FloatingPointError, match=r"DEN task 'a', phase 'task1': non-finite"):
            den.learn_task(_net_with(["a"]), jax.random.key(0), "a", _task(0), None, cfg, loss=bad)
        net = self.net_a
        net = dj.add_task(net, jax.random.key(11), "b", input_dim=6, output_dim=3)
        with pytest.raises(FloatingPointError, match=r"DEN task 'b', phase 'head': non-finite"):
            den.learn_task(net, jax.random.key(0), "b", _task(1), None, cfg, loss=bad)

    def test_iterables_loss_and_optimizer_keywords(self):
        cfg = den.config_from_dict(TINY)
        x, y = _task(0)
        batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
        net = _net_with(["a"])
        net_it, rep_it = den.learn_task(
            net, jax.random.key(1), "a", iter(batches), (b for b in batches), cfg, state="ignored"
        )
        net_ar, rep_ar = den.learn_task(net, jax.random.key(1), "a", (x, y), (x, y), cfg)
        chex.assert_trees_all_equal(net_it.params, net_ar.params)
        self.assertEqual(rep_it["final_task_loss"], rep_ar["final_task_loss"])
        schedules = []
        net_f, _ = den.learn_task(
            net, jax.random.key(1), "a", (x, y), None, cfg,
            optimizer=lambda s: schedules.append(s) or optax.sgd(0.0),
            loss=losses.sigmoid_ce,
        )  # fmt: skip
        self.assertEqual(len(schedules), 1)
        self.assertAlmostEqual(float(schedules[0](0)), cfg.learning_rate, places=6)
        # sgd(0.0): only the L1 prox moves weights; biases stay exactly as they were.
        chex.assert_trees_all_equal(net_f.params["hidden"][0]["b"], net.params["hidden"][0]["b"])
        with pytest.raises(ValueError, match="optimizer must be an optax.GradientTransformation"):
            den.learn_task(net, jax.random.key(1), "a", (x, y), None, cfg, optimizer="adam")
        with pytest.raises(ValueError, match="train_data of task 'a' must be a pair"):
            den.learn_task(net, jax.random.key(1), "a", x, None, cfg)

    def test_bad_arguments(self):
        cfg = den.config_from_dict(TINY)
        net = _net_with(["a", "b"])
        with pytest.raises(ValueError, match="not the newest task"):
            den.learn_task(net, jax.random.key(0), "a", _task(0), None, cfg)
        with pytest.raises(ValueError, match="unknown task"):
            den.learn_task(net, jax.random.key(0), "zz", _task(0), None, cfg)
        with pytest.raises(ValueError, match=r"expects x of shape \[N, 6\]"):
            den.learn_task(net, jax.random.key(0), "b", _task(0, d=5), None, cfg)
        with pytest.raises(ValueError, match="pair"):
            den.learn_task(net, jax.random.key(0), "b", _task(0)[0], None, cfg)
        with pytest.raises(ValueError, match="DENConfig"):
            den.learn_task(net, jax.random.key(0), "b", _task(0), None, {"l1_lambda": 0.1})
