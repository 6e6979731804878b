"""Checkpoint round trip of a grown network with a typed optimizer state."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import den_jax as dj
from den_jax.network_io import (
    abstract_params,
    load_network,
    meta_from_json,
    meta_to_json,
    save_network,
)


def _grown_net():
    k = jax.random.PRNGKey(0)
    net = dj.init_network(k, [5, 4], shared_input_dim=6, activation="gelu")
    net = dj.add_task(net, k, "a", input_dim=6, output_dim=3, metadata={"class_order": [2, 0, 1]})
    net = dj.add_task(net, jax.random.fold_in(k, 1), "b", input_dim=9, output_dim=2)
    net = dj.add_units_all(net, jax.random.fold_in(k, 2), 3, outgoing="init")
    net = dj.duplicate_units(net, 1, [0, 2])
    return dj.remove_units(net, 0, [6])


def test_round_trip_with_typed_optimizer_state(tmp_path):
    net = _grown_net()
    tx = optax.adam(1e-3)
    opt_state = tx.init(net.params)
    grads = jax.tree.map(jnp.ones_like, net.params)
    _, opt_state = tx.update(grads, opt_state, net.params)
    save_network(str(tmp_path), 1, net, extra_arrays={"opt": opt_state}, extra_meta={"lr": 1e-3})

    def target(meta):
        return {"opt": jax.eval_shape(tx.init, abstract_params(meta))}

    loaded, extra, saved = load_network(str(tmp_path), 1, extra_abstract=target)
    assert loaded.meta == net.meta
    chex.assert_trees_all_equal(loaded.params, net.params)
    assert type(extra["opt"][0]) is optax.ScaleByAdamState
    chex.assert_trees_all_equal(extra["opt"], opt_state)
    assert saved["extra"] == {"lr": 1e-3}
    assert saved["index_maps"]["a"]["metadata"] == {"class_order": [2, 0, 1]}
    assert saved["index_maps"]["b"]["widths"] == list(loaded.widths)
    x = jnp.ones((2, 6))
    chex.assert_trees_all_equal(dj.apply(loaded, x, "a"), dj.apply(net, x, "a"))


def test_earlier_step_still_loads_after_growth(tmp_path):
    k = jax.random.PRNGKey(0)
    net = dj.init_network(k, [4], shared_input_dim=3)
    net = dj.add_task(net, k, "a", input_dim=3, output_dim=2)
    save_network(str(tmp_path), 0, net)
    grown = dj.add_task(net, k, "b", input_dim=3, output_dim=2)
    grown = dj.add_units_all(grown, k, 5)
    save_network(str(tmp_path), 1, grown)
    first, _, _ = load_network(str(tmp_path), 0)
    assert first.widths == (4,)
    x = jnp.ones((1, 3))
    chex.assert_trees_all_equal(dj.apply(first, x, "a"), dj.apply(grown, x, "a"))


def test_meta_json_round_trip_and_bad_json():
    net = _grown_net()
    assert meta_from_json(meta_to_json(net.meta)) == net.meta
    with pytest.raises(ValueError, match="not a den_jax network description"):
        meta_from_json({"activation": "relu"})


def test_step_without_a_network_refused(tmp_path):
    import numpy as np

    from den_jax import checkpoint

    checkpoint.save_step(str(tmp_path), 0, {"w": np.ones(2, np.float32)}, {"other": 1})
    with pytest.raises(ValueError, match="step 0 .* does not hold a network"):
        load_network(str(tmp_path), 0)
