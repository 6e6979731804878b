"""Breadth-first subnetwork search on hand-built sparse weights."""

import jax
import jax.numpy as jnp
import numpy as np

import den_jax as dj
from den_jax.den import bfs_units, select_subnetwork


def test_bfs_all_outputs_hand_built():
    # Top layer (3 units) -> head with 2 outputs: unit 0 feeds output 1 only, unit 2 none.
    head = np.asarray([[0.0, 0.7], [0.2, 0.0], [0.0, 0.0]])
    # Layer 0 (4 units) -> layer 1 (3 units): unit 3 only feeds unselected unit 2.
    w1 = np.asarray(
        [
            [0.5, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, -0.3, 0.0],
            [0.0, 0.0, 0.9],
        ]
    )
    units = bfs_units(head, [w1])
    np.testing.assert_array_equal(units[1], [0, 1])  # output column 0 alone would miss unit 0
    np.testing.assert_array_equal(units[0], [0, 2])  # negative weights count


def test_bfs_three_layers_and_empty():
    head = np.asarray([[1.0], [0.0]])
    w2 = np.asarray([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    w1 = np.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    units = bfs_units(head, [w1, w2])
    np.testing.assert_array_equal(units[2], [0])
    np.testing.assert_array_equal(units[1], [1])
    np.testing.assert_array_equal(units[0], [1])
    empty = bfs_units(np.zeros((2, 1)), [w1, w2])
    assert all(u.size == 0 for u in empty)


def test_select_subnetwork_masks_on_network():
    key = jax.random.key(0)
    net = dj.init_network(key, [4, 3], shared_input_dim=5)
    net = dj.add_task(net, key, "a", input_dim=5, output_dim=2)
    net = dj.add_task(net, key, "b", input_dim=5, output_dim=2)
    p = jax.tree.map(lambda v: v, net.params)
    p["hidden"][1]["w"] = jnp.asarray(
        [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.9]]
    )
    p["output_heads"]["b"]["w"] = jnp.asarray([[0.0, 0.7], [0.2, 0.0], [0.0, 0.0]])
    net = net.replace(params=p)
    sel = select_subnetwork(net, "b")
    np.testing.assert_array_equal(sel.units[0], [0, 2])
    np.testing.assert_array_equal(sel.units[1], [0, 1])
    m = sel.masks
    assert jax.tree.structure(m) == jax.tree.structure(net.params)
    np.testing.assert_array_equal(m["input_heads"]["shared"]["w"], np.tile([1, 0, 1, 0], (5, 1)))
    np.testing.assert_array_equal(m["hidden"][0]["b"], [1, 0, 1, 0])
    expected_w1 = np.zeros((4, 3))
    expected_w1[np.ix_([0, 2], [0, 1])] = 1
    np.testing.assert_array_equal(m["hidden"][1]["w"], expected_w1)
    np.testing.assert_array_equal(m["hidden"][1]["b"], [1, 1, 0])
    np.testing.assert_array_equal(m["output_heads"]["b"]["w"], [[1, 1], [1, 1], [0, 0]])
    np.testing.assert_array_equal(m["output_heads"]["b"]["b"], [1, 1])
    np.testing.assert_array_equal(m["output_heads"]["a"]["w"], np.zeros((3, 2)))
