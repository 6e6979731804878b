"""Width and depth growth preserve the function; the optimizer state follows the params."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from hypothesis import given, settings

import den_jax as dj
from den_jax.growth import GrowthAction, apply_actions, grow_width, insert_layer

SETTINGS = settings(max_examples=8, deadline=None)


def _net(seed, widths, d_in=5, d_out=3, activation="relu", tasks=1):
    key = jax.random.PRNGKey(seed)
    net = dj.init_network(key, widths, shared_input_dim=d_in, activation=activation)
    for t in range(tasks):
        net = dj.add_task(
            net, jax.random.fold_in(key, t + 1), f"t{t}", input_dim=d_in, output_dim=d_out
        )
    # Non-zero biases so that identity layers are exercised on shifted activations.
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(key, a.shape), net.params)
    return net.replace(params=params)


net_shapes = st.tuples(st.integers(0, 10_000), st.lists(st.integers(1, 6), min_size=1, max_size=3))


class GrowthPreservesFunctionTest(chex.TestCase):
    @SETTINGS
    @given(net_shapes, st.integers(0, 2), st.integers(1, 5))
    def test_width_growth_keeps_outputs(self, shape, layer, units):
        seed, widths = shape
        net = _net(seed, widths)
        layer = layer % len(widths)
        x = jax.random.normal(jax.random.PRNGKey(seed + 1), (7, 5))
        grown = grow_width(net, jax.random.PRNGKey(3), layer, units)
        self.assertEqual(grown.widths[layer], widths[layer] + units)
        chex.assert_trees_all_close(dj.apply(grown, x, "t0"), dj.apply(net, x, "t0"), atol=1e-6)

    @SETTINGS
    @given(net_shapes, st.integers(0, 3), st.sampled_from(["relu", "identity"]))
    def test_depth_growth_keeps_outputs(self, shape, pos, activation):
        seed, widths = shape
        net = _net(seed, widths, activation=activation)
        position = 1 + pos % len(widths)
        x = 3.0 * jax.random.normal(jax.random.PRNGKey(seed + 1), (7, 5))
        grown = insert_layer(net, position)
        self.assertEqual(grown.num_layers, len(widths) + 1)
        self.assertEqual(grown.widths[position], widths[position - 1])
        self.assertLen(set(i for layer in grown.meta.layers for i in layer.ids), sum(grown.widths))
        chex.assert_trees_all_close(dj.apply(grown, x, "t0"), dj.apply(net, x, "t0"), atol=1e-5)

    @settings(max_examples=4, deadline=None)
    @given(net_shapes, st.integers(1, 4))
    def test_depth_growth_keeps_every_task(self, shape, units):
        seed, widths = shape
        net = _net(seed, widths, tasks=1)
        net = dj.add_task(net, jax.random.PRNGKey(9), "t1", input_dim=5, output_dim=2)
        net = dj.add_units(net, jax.random.PRNGKey(4), 0, units)  # units stamped 1
        x = jax.random.normal(jax.random.PRNGKey(seed + 2), (4, 5))
        grown = insert_layer(net, 1)
        for task in ("t0", "t1"):
            chex.assert_trees_all_close(dj.apply(grown, x, task), dj.apply(net, x, task), atol=1e-5)
        self.assertEqual(grown.meta.layers[1].stamps, net.meta.layers[0].stamps)

    @chex.variants(with_jit=True, without_jit=True)
    def test_grown_network_runs_under_jit(self):
        net = _net(0, [3, 4])
        grown, _ = apply_actions(
            net,
            jax.random.PRNGKey(1),
            [GrowthAction("width", 0, 2), GrowthAction("depth", 2), GrowthAction("width", 2, 3)],
        )
        self.assertEqual(grown.widths, (5, 4, 7))
        x = jnp.ones((2, 5))
        fn = self.variant(dj.apply, static_argnums=2)
        chex.assert_trees_all_close(fn(grown, x, "t0"), dj.apply(net, x, "t0"), atol=1e-5)


class OptimizerStateTest(parameterized.TestCase):
    @parameterized.parameters("adam", "sgd_momentum", "rmsprop")
    def test_opt_state_follows_params(self, name):
        tx = {
            "adam": optax.adam(1e-2),
            "sgd_momentum": optax.sgd(1e-2, momentum=0.9),
            "rmsprop": optax.rmsprop(1e-2),
        }[name]
        net = _net(1, [3, 2])
        opt = tx.init(net.params)
        grads = jax.tree.map(jnp.ones_like, net.params)
        _, opt = tx.update(grads, opt, net.params)
        actions = [
            GrowthAction("width", 1, 2),
            GrowthAction("depth", 1),
            GrowthAction("width", 0, 1),
        ]
        grown, grown_opt = apply_actions(net, jax.random.PRNGKey(0), actions, opt)
        fresh = tx.init(grown.params)
        chex.assert_trees_all_equal_shapes(grown_opt, fresh)
        # The grown state is usable: one more update works and has the params' shapes.
        updates, _ = tx.update(jax.tree.map(jnp.ones_like, grown.params), grown_opt, grown.params)
        chex.assert_trees_all_equal_shapes(updates, grown.params)
        if name == "adam":
            self.assertEqual(int(grown_opt[0].count), 1)
            # Old units keep their moments, new ones start at zero.
            mu = grown_opt[0].mu["hidden"][0]["b"]
            np.testing.assert_allclose(mu[:3], opt[0].mu["hidden"][0]["b"])
            np.testing.assert_array_equal(mu[3:], 0.0)
            np.testing.assert_array_equal(grown_opt[0].mu["hidden"][1]["w"], 0.0)


class BadGrowthTest(parameterized.TestCase):
    def test_errors(self):
        net = _net(0, [3, 3])
        key = jax.random.PRNGKey(0)
        with self.assertRaisesRegex(ValueError, "out of range"):
            grow_width(net, key, 2, 1)
        with self.assertRaisesRegex(ValueError, "positive"):
            grow_width(net, key, 0, -1)
        with self.assertRaisesRegex(ValueError, "valid positions are 1..2"):
            insert_layer(net, 0)
        with self.assertRaisesRegex(ValueError, "does not exist"):
            apply_actions(net, key, [GrowthAction("width", 5, 1)])
        with self.assertRaisesRegex(ValueError, "positive number of units"):
            apply_actions(net, key, [GrowthAction("width", 0, 0)])
        with self.assertRaisesRegex(ValueError, "kind"):
            apply_actions(net, key, [GrowthAction("sideways", 0, 1)])
        with self.assertRaisesRegex(ValueError, "tanh"):
            insert_layer(_net(0, [3], activation="tanh"), 1)


if __name__ == "__main__":
    absltest.main()
