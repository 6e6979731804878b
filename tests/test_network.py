"""Core network: forward pass, timestamped inference, task handling, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import den_jax as dj


def _two_task_net(key=0):
    k = jax.random.PRNGKey(key)
    net = dj.init_network(k, [6, 5], shared_input_dim=4, activation="tanh")
    net = dj.add_task(net, jax.random.fold_in(k, 1), "a", input_dim=4, output_dim=3)
    net = dj.add_task(net, jax.random.fold_in(k, 2), "b", input_dim=7, output_dim=2)
    return net


class ApplyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_manual_forward(self):
        net = _two_task_net()
        x = jax.random.normal(jax.random.PRNGKey(3), (5, 4))
        out = self.variant(dj.apply, static_argnums=2)(net, x, "a")
        p = net.params
        h = jnp.tanh(x @ p["input_heads"]["shared"]["w"] + p["hidden"][0]["b"])
        h = jnp.tanh(h @ p["hidden"][1]["w"] + p["hidden"][1]["b"])
        want = h @ p["output_heads"]["a"]["w"] + p["output_heads"]["a"]["b"]
        chex.assert_trees_all_close(out, want, rtol=1e-6)
        chex.assert_shape(out, (5, 3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_task_by_index_equals_task_by_name(self):
        net = _two_task_net()
        x = jnp.ones((2, 7))
        fn = self.variant(dj.apply, static_argnums=2)
        chex.assert_trees_all_equal(fn(net, x, 1), fn(net, x, "b"))

    def test_different_input_and_output_sizes(self):
        net = _two_task_net()
        self.assertEqual(net.task("a").input_key, "shared")
        self.assertEqual(net.task("b").input_key, "b")
        chex.assert_shape(dj.apply(net, jnp.ones((3, 7)), "b"), (3, 2))
        chex.assert_shape(net.params["input_heads"]["b"]["w"], (7, 6))

    def test_units_added_later_are_invisible_to_earlier_tasks(self):
        net = _two_task_net()
        grown = dj.add_units_all(net, jax.random.PRNGKey(9), 3, outgoing="init")
        self.assertEqual(dj.task_widths(grown, "a"), (6, 5))
        self.assertEqual(dj.task_widths(grown, "b"), (9, 8))
        x = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
        chex.assert_trees_all_equal(dj.apply(grown, x, "a"), dj.apply(net, x, "a"))
        xb = jnp.ones((4, 7))
        self.assertFalse(np.allclose(dj.apply(grown, xb, "b"), dj.apply(net, xb, "b")))

    @parameterized.parameters("relu", "tanh", "sigmoid", "gelu", "elu", "leaky_relu", "identity")
    def test_activations(self, name):
        net = dj.init_network(jax.random.PRNGKey(0), [3], shared_input_dim=2, activation=name)
        net = dj.add_task(net, jax.random.PRNGKey(1), "t", input_dim=2, output_dim=1)
        x = jnp.array([[0.5, -1.0]])
        h = dj.ACTIVATIONS[name](x @ net.params["input_heads"]["shared"]["w"])
        want = h @ net.params["output_heads"]["t"]["w"] + net.params["output_heads"]["t"]["b"]
        chex.assert_trees_all_close(dj.apply(net, x, "t"), want, rtol=1e-6)

    def test_no_shared_layer_means_every_task_has_an_input_head(self):
        net = dj.init_network(jax.random.PRNGKey(0), [4])
        net = dj.add_task(net, jax.random.PRNGKey(1), "x", input_dim=3, output_dim=2)
        self.assertEqual(set(net.params["input_heads"]), {"x"})
        net = dj.add_task(net, jax.random.PRNGKey(2), "y", input_dim=3, output_dim=2)
        self.assertEqual(set(net.params["input_heads"]), {"x", "y"})

    def test_own_input_head_can_be_forced_for_a_shared_size(self):
        net = dj.init_network(jax.random.PRNGKey(0), [4], shared_input_dim=3)
        net = dj.add_task(
            net, jax.random.PRNGKey(1), "x", input_dim=3, output_dim=2, own_input_head=True
        )
        self.assertEqual(net.task("x").input_key, "x")

    def test_metadata_is_kept_in_the_index_map(self):
        net = dj.init_network(jax.random.PRNGKey(0), [4], shared_input_dim=3)
        net = dj.add_task(
            net, jax.random.PRNGKey(1), "x", input_dim=3, output_dim=2, metadata={"classes": [3, 7]}
        )
        imap = dj.index_map(net, "x")
        self.assertEqual(imap["metadata"], {"classes": [3, 7]})
        self.assertEqual(imap["units"], [[0, 1, 2, 3]])
        self.assertEqual(imap["input_head"], "shared")


class DropoutAndStaticTaskTest(chex.TestCase):
    def test_dropout_is_an_option_of_the_forward_pass(self):
        net = _two_task_net()
        x = jax.random.normal(jax.random.PRNGKey(3), (64, 4))
        key = jax.random.key(5)
        chex.assert_trees_all_equal(
            dj.apply(net, x, "a", dropout=0.0, key=key), dj.apply(net, x, "a")
        )
        a = dj.apply(net, x, "a", dropout=0.5, key=key)
        chex.assert_trees_all_equal(
            a,
            jax.jit(dj.apply, static_argnums=2, static_argnames="dropout")(
                net, x, "a", dropout=0.5, key=key
            ),
        )
        self.assertFalse(np.allclose(a, dj.apply(net, x, "a")))
        self.assertFalse(np.allclose(a, dj.apply(net, x, "a", dropout=0.5, key=jax.random.key(6))))
        # Inverted dropout by hand on both hidden layers (keys split per layer).
        p, k0, k1 = net.params, *jax.random.split(key, 2)
        drop = lambda h, k: jnp.where(jax.random.bernoulli(k, 0.5, h.shape), h / 0.5, 0.0)  # noqa: E731
        h = drop(jnp.tanh(x @ p["input_heads"]["shared"]["w"] + p["hidden"][0]["b"]), k0)
        h = drop(jnp.tanh(h @ p["hidden"][1]["w"] + p["hidden"][1]["b"]), k1)
        want = h @ p["output_heads"]["a"]["w"] + p["output_heads"]["a"]["b"]
        chex.assert_trees_all_close(a, want, rtol=1e-6)

    def test_dropout_arguments(self):
        net = _two_task_net()
        with self.assertRaisesRegex(ValueError, "needs a PRNG key"):
            dj.apply(net, jnp.ones((2, 4)), "a", dropout=0.1)
        with self.assertRaisesRegex(ValueError, r"dropout must be a static float in \[0, 1\)"):
            dj.apply(net, jnp.ones((2, 4)), "a", dropout=1.0, key=jax.random.key(0))

    def test_traced_task_says_how_to_make_it_static(self):
        net = _two_task_net()
        msg = r"pass `task` as a static argument \(jax.jit\(apply, static_argnums=2\)\)"
        with self.assertRaisesRegex(ValueError, msg):
            jax.jit(dj.apply)(net, jnp.ones((2, 4)), 0)


class CountingTest(absltest.TestCase):
    def test_counts_per_task_and_total(self):
        net = _two_task_net()
        # shared in 4*6, own head b 7*6, hidden b0 6, w1 6*5 + 5, heads a 5*3+3, b 5*2+2
        self.assertEqual(dj.count_params(net), 24 + 42 + 6 + 35 + 18 + 12)
        self.assertEqual(dj.count_params(net, "a"), 24 + 6 + 35 + 18)
        grown = dj.add_units(net, jax.random.PRNGKey(0), 1, 2)
        # task a does not see the 2 new units of layer 1
        self.assertEqual(dj.count_params(grown, "a"), dj.count_params(net, "a"))
        self.assertEqual(dj.count_params(grown, "b"), 42 + 6 + 6 * 7 + 7 + 7 * 2 + 2)
        self.assertEqual(dj.count_active_units(grown), [6, 7])
        self.assertEqual(dj.count_active_units(grown, "a"), [6, 5])
        # layer 1 grew: head a's two new rows are never used by task a
        self.assertEqual(
            dj.count_stored_params(grown), dj.count_params(net) + 2 * 6 + 2 + 2 * 3 + 2 * 2
        )
        self.assertEqual(dj.count_params(grown), dj.count_stored_params(grown) - 2 * 3)
        grown0 = dj.add_units(net, jax.random.PRNGKey(0), 0, 1)
        # task b's own head gains a used column; the shared layer's new column counts too
        self.assertEqual(dj.count_params(grown0), dj.count_params(net) + 4 + 7 + 1 + 5)
        report = dj.capacity_report(grown)
        self.assertEqual(report["per_task"]["b"]["units"], [6, 7])


class BadInputTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.net = _two_task_net()
        self.key = jax.random.PRNGKey(0)

    def test_unknown_task_name(self):
        with self.assertRaisesRegex(ValueError, r"unknown task 'zzz'; known tasks: \['a', 'b'\]"):
            dj.apply(self.net, jnp.ones((1, 4)), "zzz")

    def test_unknown_task_index(self):
        with self.assertRaisesRegex(ValueError, r"unknown task index 5: the network has 2 task"):
            dj.apply(self.net, jnp.ones((1, 4)), 5)

    def test_input_width_mismatch(self):
        with self.assertRaisesRegex(
            ValueError, r"task 'b' expects inputs of width 7 .*got an array of shape \(2, 4\)"
        ):
            dj.apply(self.net, jnp.ones((2, 4)), "b")

    def test_layer_out_of_range(self):
        with self.assertRaisesRegex(
            ValueError, r"layer 2 is out of range: .* 2 hidden layer.*0\.\.1"
        ):
            dj.add_units(self.net, self.key, 2, 3)
        with self.assertRaisesRegex(ValueError, r"layer -1 is out of range"):
            dj.remove_units(self.net, -1, [0])
        with self.assertRaisesRegex(ValueError, r"layer 7 is out of range"):
            dj.duplicate_units(self.net, 7, [0])

    def test_non_positive_k(self):
        for k in (0, -2):
            with self.assertRaisesRegex(
                ValueError, rf"k \(number of units to add\) must be a positive integer, got {k}"
            ):
                dj.add_units(self.net, self.key, 0, k)
        with self.assertRaisesRegex(ValueError, r"must be a positive integer, got 0"):
            dj.add_units_all(self.net, self.key, 0)

    def test_unit_index_that_does_not_exist(self):
        with self.assertRaisesRegex(
            ValueError, r"unit 5 does not exist in layer 1, which has 5 units"
        ):
            dj.duplicate_units(self.net, 1, [0, 5])
        with self.assertRaisesRegex(
            ValueError, r"unit -1 does not exist in layer 0, which has 6 units"
        ):
            dj.remove_units(self.net, 0, [-1])

    def test_repeated_or_empty_units(self):
        with self.assertRaisesRegex(ValueError, r"repeat"):
            dj.duplicate_units(self.net, 0, [1, 1])
        with self.assertRaisesRegex(ValueError, r"no unit index given"):
            dj.remove_units(self.net, 0, [])

    def test_removing_every_unit(self):
        with self.assertRaisesRegex(ValueError, r"would leave it empty"):
            dj.remove_units(self.net, 1, range(5))

    def test_adding_a_task_twice(self):
        with self.assertRaisesRegex(ValueError, r"task 'a' already exists"):
            dj.add_task(self.net, self.key, "a", input_dim=4, output_dim=3)

    def test_bad_task_sizes_and_names(self):
        with self.assertRaisesRegex(ValueError, r"output_dim must be a positive integer, got 0"):
            dj.add_task(self.net, self.key, "c", input_dim=4, output_dim=0)
        with self.assertRaisesRegex(ValueError, r"input_dim must be a positive integer, got -3"):
            dj.add_task(self.net, self.key, "c", input_dim=-3, output_dim=2)
        with self.assertRaisesRegex(ValueError, r"reserved"):
            dj.add_task(self.net, self.key, "shared", input_dim=4, output_dim=2)
        with self.assertRaisesRegex(ValueError, r"shared input layer, which expects width 4"):
            dj.add_task(self.net, self.key, "c", input_dim=5, output_dim=2, own_input_head=False)

    def test_bad_network_arguments(self):
        with self.assertRaisesRegex(ValueError, r"unknown activation 'foo'"):
            dj.init_network(self.key, [3], activation="foo")
        with self.assertRaisesRegex(
            ValueError, r"hidden_widths\[1\] must be a positive integer, got 0"
        ):
            dj.init_network(self.key, [3, 0])
        with self.assertRaisesRegex(ValueError, r"at least one hidden layer"):
            dj.init_network(self.key, [])

    def test_bad_outgoing_modes(self):
        with self.assertRaisesRegex(ValueError, r"outgoing must be one of \('zero', 'init'\)"):
            dj.add_units(self.net, self.key, 0, 1, outgoing="copy")
        with self.assertRaisesRegex(
            ValueError, r"outgoing must be one of \('copy', 'split', 'zero'\)"
        ):
            dj.duplicate_units(self.net, 0, [0], outgoing="init")


if __name__ == "__main__":
    absltest.main()
