"""Pure surgery: add, duplicate and remove units; carrying trees and optimizer state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

import den_jax as dj


def _net(shared=True):
    k = jax.random.PRNGKey(0)
    net = dj.init_network(k, [4, 3], shared_input_dim=5 if shared else None)
    net = dj.add_task(net, jax.random.PRNGKey(1), "a", input_dim=5, output_dim=2)
    return dj.add_task(net, jax.random.PRNGKey(2), "b", input_dim=6, output_dim=3)


class AddUnitsTest(parameterized.TestCase):
    @parameterized.parameters(0, 1)
    def test_shapes_stamps_and_zero_outgoing(self, layer):
        net = _net()
        grown = dj.add_units(net, jax.random.PRNGKey(3), layer, 2)
        self.assertEqual(grown.widths[layer], net.widths[layer] + 2)
        self.assertEqual(grown.meta.layers[layer].stamps[-2:], (1, 1))
        self.assertEqual(grown.meta.layers[layer].parents[-2:], (-1, -1))
        self.assertEqual(grown.meta.next_unit_id, net.meta.next_unit_id + 2)
        if layer == 0:
            for head in grown.params["input_heads"].values():
                chex.assert_shape(head["w"], (None, 6))
            np.testing.assert_array_equal(grown.params["hidden"][1]["w"][4:], 0.0)
        else:
            for head in grown.params["output_heads"].values():
                np.testing.assert_array_equal(head["w"][3:], 0.0)
        np.testing.assert_array_equal(grown.params["hidden"][layer]["b"][-2:], 0.0)
        # zero outgoing weights: even the newest task's outputs are unchanged
        x = jax.random.normal(jax.random.PRNGKey(4), (3, 6))
        chex.assert_trees_all_close(dj.apply(grown, x, "b"), dj.apply(net, x, "b"), atol=1e-6)

    def test_init_outgoing_only_touches_the_newest_head(self):
        grown = dj.add_units(_net(), jax.random.PRNGKey(3), 1, 2, outgoing="init")
        np.testing.assert_array_equal(grown.params["output_heads"]["a"]["w"][3:], 0.0)
        self.assertGreater(float(jnp.abs(grown.params["output_heads"]["b"]["w"][3:]).sum()), 0.0)

    def test_add_units_all_connects_new_units_of_consecutive_layers(self):
        grown = dj.add_units_all(_net(), jax.random.PRNGKey(3), 2, outgoing="init")
        self.assertEqual(grown.widths, (6, 5))
        block = grown.params["hidden"][1]["w"][4:, 3:]  # new layer-0 units -> new layer-1 units
        self.assertGreater(float(jnp.abs(block).sum()), 0.0)

    def test_add_units_all_per_layer_counts(self):
        net = _net()
        grown = dj.add_units_all(net, jax.random.PRNGKey(3), [3, 0], outgoing="init")
        self.assertEqual(grown.widths, (7, 3))
        chex.assert_trees_all_equal(grown.params["hidden"][1]["b"], net.params["hidden"][1]["b"])
        # New layer-0 units feed the old layer-1 units (rows initialised for the newest task).
        self.assertGreater(float(jnp.abs(grown.params["hidden"][1]["w"][4:]).sum()), 0.0)
        grown = dj.add_units_all(net, jax.random.PRNGKey(3), (0, 2))
        self.assertEqual(grown.widths, (4, 5))
        self.assertEqual(grown.meta.next_unit_id, net.meta.next_unit_id + 2)

    @parameterized.parameters(
        ([2], r"has 1 entries \[2\]; expected one per hidden layer \(2\)"),
        ([0, 0], "at least one > 0"),
        ([1, -2], ">= 0"),
        ("ab", "integer or one per layer"),
    )
    def test_add_units_all_rejects_bad_counts(self, k, fragment):
        with self.assertRaisesRegex(ValueError, fragment):
            dj.add_units_all(_net(), jax.random.PRNGKey(3), k)


class DuplicateUnitsTest(absltest.TestCase):
    def test_copies_weights_and_records_parents(self):
        net = _net()
        dup = dj.duplicate_units(net, 0, [1, 3])
        for key, head in dup.params["input_heads"].items():
            w = net.params["input_heads"][key]["w"]
            np.testing.assert_array_equal(head["w"][:, 4:], w[:, np.array([1, 3])])
        np.testing.assert_array_equal(
            dup.params["hidden"][1]["w"][4:], net.params["hidden"][1]["w"][np.array([1, 3])]
        )
        np.testing.assert_array_equal(
            dup.params["hidden"][0]["b"][4:], net.params["hidden"][0]["b"][np.array([1, 3])]
        )
        units = dup.meta.layers[0]
        self.assertEqual(units.parents[4:], (units.ids[1], units.ids[3]))
        self.assertEqual(units.stamps[4:], (1, 1))

    def test_split_and_zero_keep_the_newest_function(self):
        net = dj.init_network(jax.random.PRNGKey(0), [4, 3], shared_input_dim=5)
        net = dj.add_task(net, jax.random.PRNGKey(1), "only", input_dim=5, output_dim=2)
        x = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
        for mode in ("split", "zero"):
            for layer in (0, 1):
                dup = dj.duplicate_units(net, layer, [0, 2], outgoing=mode)
                chex.assert_trees_all_close(dj.apply(dup, x, 0), dj.apply(net, x, 0), atol=1e-5)

    def test_copy_leaves_older_tasks_unchanged(self):
        net = _net()
        dup = dj.duplicate_units(net, 1, [0, 1, 2], outgoing="copy")
        x = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
        chex.assert_trees_all_equal(dj.apply(dup, x, "a"), dj.apply(net, x, "a"))


class RemoveUnitsTest(absltest.TestCase):
    def test_removes_columns_rows_and_bookkeeping(self):
        net = dj.add_units_all(_net(), jax.random.PRNGKey(5), 3, outgoing="init")
        pruned = dj.remove_units(net, 0, [4, 6])
        keep = np.array([0, 1, 2, 3, 5])
        self.assertEqual(pruned.widths, (5, 6))
        np.testing.assert_array_equal(
            pruned.params["input_heads"]["shared"]["w"],
            net.params["input_heads"]["shared"]["w"][:, keep],
        )
        np.testing.assert_array_equal(
            pruned.params["hidden"][1]["w"], net.params["hidden"][1]["w"][keep]
        )
        self.assertEqual(pruned.meta.layers[0].ids, tuple(net.meta.layers[0].ids[i] for i in keep))
        x = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
        chex.assert_trees_all_equal(dj.apply(pruned, x, "a"), dj.apply(net, x, "a"))

    def test_remove_last_layer_units_trims_every_head(self):
        pruned = dj.remove_units(_net(), 1, [0])
        for head in pruned.params["output_heads"].values():
            chex.assert_shape(head["w"], (2, None))


class AlignTest(absltest.TestCase):
    def test_align_tree_moves_values_by_unit_id(self):
        net = _net()
        tagged = jax.tree.map(
            lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape) + 1, net.params
        )
        new = dj.duplicate_units(net, 0, [2])
        new = dj.remove_units(new, 0, [0])
        new = dj.add_units(new, jax.random.PRNGKey(0), 1, 1)
        out = dj.align_tree(tagged, net, new, fill=-1.0)
        chex.assert_trees_all_equal_shapes(out, new.params)
        np.testing.assert_array_equal(out["hidden"][0]["b"], [2.0, 3.0, 4.0, -1.0])
        np.testing.assert_array_equal(out["hidden"][1]["w"][:3, :3], tagged["hidden"][1]["w"][1:4])
        np.testing.assert_array_equal(out["hidden"][1]["w"][3], -1.0)
        np.testing.assert_array_equal(out["hidden"][1]["w"][:, 3], -1.0)
        np.testing.assert_array_equal(
            out["output_heads"]["a"]["w"][:3], tagged["output_heads"]["a"]["w"]
        )

    def test_new_task_heads_get_fill(self):
        net = _net()
        new = dj.add_task(net, jax.random.PRNGKey(0), "c", input_dim=2, output_dim=4)
        out = dj.align_tree(net.params, net, new, fill=0.0)
        np.testing.assert_array_equal(out["output_heads"]["c"]["w"], 0.0)
        np.testing.assert_array_equal(out["input_heads"]["c"]["w"], 0.0)
        chex.assert_trees_all_equal(out["output_heads"]["a"], net.params["output_heads"]["a"])

    def test_grow_opt_state_keeps_moments_and_count(self):
        net = _net()
        tx = optax.adamw(1e-2, weight_decay=1e-3)
        state = tx.init(net.params)
        grads = jax.tree.map(jnp.ones_like, net.params)
        _, state = tx.update(grads, state, net.params)
        grown = dj.add_units_all(net, jax.random.PRNGKey(7), 2)
        new_state = dj.grow_opt_state(state, net, grown)
        fresh = tx.init(grown.params)
        chex.assert_trees_all_equal_shapes(new_state, fresh)
        chex.assert_trees_all_equal_structs(new_state, fresh)
        adam = new_state[0]
        self.assertEqual(int(adam.count), 1)
        np.testing.assert_allclose(adam.mu["hidden"][1]["w"][:4, :3], 0.1, rtol=1e-6)
        np.testing.assert_array_equal(adam.mu["hidden"][1]["w"][4:], 0.0)
        # the grown state drives an update without a restart
        updates, _ = tx.update(jax.tree.map(jnp.ones_like, grown.params), new_state, grown.params)
        chex.assert_trees_all_equal_shapes(updates, grown.params)


class PurityTest(absltest.TestCase):
    def test_inputs_are_not_mutated(self):
        net = _net()
        before = jax.tree.map(np.array, net.params)
        meta_before = net.meta
        k = jax.random.PRNGKey(0)
        dj.add_units_all(net, k, 2, outgoing="init")
        dj.duplicate_units(net, 0, [0], outgoing="split")
        dj.remove_units(net, 1, [0])
        dj.add_task(net, k, "c", input_dim=5, output_dim=2)
        chex.assert_trees_all_equal(net.params, before)
        self.assertEqual(net.meta, meta_before)
        self.assertEqual(set(net.params["output_heads"]), {"a", "b"})


if __name__ == "__main__":
    absltest.main()
