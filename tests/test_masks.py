"""den_jax.masks: task and trainable masks, and masked optimizer updates."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import den_jax as dj
from den_jax import den


def _net():
    key = jax.random.key(0)
    net = dj.init_network(key, [4, 3], shared_input_dim=5)
    net = dj.add_task(net, jax.random.key(1), "a", input_dim=5, output_dim=2)
    net = dj.add_units_all(net, jax.random.key(2), 2)
    net = dj.add_task(net, jax.random.key(3), "b", input_dim=5, output_dim=3)
    net = dj.add_task(net, jax.random.key(4), "c", input_dim=7, output_dim=2)
    return dj.add_units_all(net, jax.random.key(5), 1)


def test_task_mask_covers_exactly_the_task_forward_pass():
    net = _net()
    for task in ("a", "b", "c"):
        m = dj.task_mask(net, task)
        full = den.subnetwork_masks(net, task, [np.arange(n) for n in dj.task_widths(net, task)])
        chex.assert_trees_all_equal(m, full)
        # Perturbing every masked-out entry leaves the task's outputs unchanged.
        noisy = jax.tree.map(lambda p, k: jnp.where(k == 0, p + 7.0, p), net.params, m)
        x = jnp.ones((3, net.task(task).input_dim))
        np.testing.assert_array_equal(
            dj.apply(net.replace(params=noisy), x, task), dj.apply(net, x, task)
        )
    m = dj.task_mask(net, "a")
    assert float(m["hidden"][0]["b"].sum()) == 6  # a: 4 initial units + 2 stamped "a"
    assert float(m["output_heads"]["b"]["w"].sum()) == 0


def test_trainable_mask():
    net = _net()
    m = dj.trainable_mask(net, "c")
    assert float(m["input_heads"]["c"]["w"]) == 1 and float(m["input_heads"]["shared"]["w"]) == 0
    assert float(m["output_heads"]["c"]["b"]) == 1 and float(m["output_heads"]["a"]["w"]) == 0
    assert all(float(v) == 1 for v in jax.tree.leaves(m["hidden"]))
    m = dj.trainable_mask(net, "b", shared=False)
    assert all(float(v) == 0 for v in jax.tree.leaves(m["hidden"]))
    assert float(m["input_heads"]["shared"]["w"]) == 0


def _adamw_steps(tx, params, n=3):
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(n):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_mask_updates_after_adamw_keeps_frozen_bits():
    params = {"w": jnp.arange(1.0, 5.0), "b": jnp.ones(())}
    mask = {"w": jnp.asarray([1.0, 0.0, 1.0, 0.0]), "b": jnp.zeros(())}
    out = _adamw_steps(
        optax.chain(optax.adamw(0.1, weight_decay=0.5), dj.mask_updates(mask)), params
    )
    np.testing.assert_array_equal(out["w"][np.array([1, 3])], params["w"][np.array([1, 3])])
    np.testing.assert_array_equal(out["b"], params["b"])
    assert np.all(out["w"][np.array([0, 2])] != params["w"][np.array([0, 2])])
    assert dj.mask_updates(mask).init(params) == ()


def test_mask_updates_before_adamw_would_move_frozen_weights():
    params = {"w": jnp.arange(1.0, 5.0), "b": jnp.ones(())}
    mask = {"w": jnp.zeros(4), "b": jnp.zeros(())}
    out = _adamw_steps(
        optax.chain(dj.mask_updates(mask), optax.adamw(0.1, weight_decay=0.5)), params
    )
    assert np.all(out["w"] != params["w"])  # weight decay still acts: the order matters


def test_mask_updates_checks_the_mask_structure():
    with pytest.raises(ValueError, match="shaped like the parameters"):
        dj.mask_updates({"w": jnp.ones(3)}).init({"w": jnp.ones(4)})
