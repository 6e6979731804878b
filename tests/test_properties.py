"""Hypothesis invariants over random widths and random sequences of surgery.

* every finished task's outputs stay bit-identical after any later growth (add units,
  duplicate, prune units of the newest task, add a task), with and without jit;
* no function mutates its input;
* shapes, timestamps, ids and index maps stay consistent;
* jit and non-jit agree.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import den_jax as dj
from den_jax.network_io import abstract_params

jit_apply = jax.jit(dj.apply, static_argnums=2)

op_strategy = st.one_of(
    st.tuples(
        st.just("add"), st.integers(0, 5), st.integers(1, 3), st.sampled_from(["zero", "init"])
    ),
    st.tuples(
        st.just("dup"), st.integers(0, 5), st.integers(1, 3), st.sampled_from(["copy", "zero"])
    ),
    st.tuples(st.just("prune"), st.integers(0, 5), st.integers(1, 3), st.just("")),
    st.tuples(st.just("task"), st.integers(1, 6), st.integers(1, 4), st.booleans()),
)


def _check_consistency(net):
    shapes = jax.tree.map(lambda s: s.shape, abstract_params(net.meta))
    chex.assert_trees_all_equal(shapes, jax.tree.map(lambda p: p.shape, net.params))
    all_ids = [i for layer in net.meta.layers for i in layer.ids]
    assert len(all_ids) == len(set(all_ids))
    assert max(all_ids) < net.meta.next_unit_id
    for layer in net.meta.layers:
        assert list(layer.stamps) == sorted(layer.stamps)
        assert len(layer.stamps) == len(layer.ids) == len(layer.parents)
        assert max(layer.stamps) <= net.meta.newest_task
    for t in net.meta.tasks:
        imap = dj.index_map(net, t.name)
        assert imap["widths"] == [len(u) for u in imap["units"]]
        assert imap["widths"] == list(dj.task_widths(net, t.name))


def _apply_op(net, op, key):
    kind, a, b, c = op
    layer = a % net.num_layers
    if kind == "add":
        return dj.add_units(net, key, layer, b, outgoing=c)
    if kind == "dup":
        units = sorted({(a * 7 + i * 3) % net.widths[layer] for i in range(b)})
        return dj.duplicate_units(net, layer, units, outgoing=c)
    if kind == "prune":
        newest = net.meta.newest_task
        stamps = net.meta.layers[layer].stamps
        own = [i for i, s in enumerate(stamps) if s == newest and s > 0]
        removable = own[: min(b, len(stamps) - 1)]
        return dj.remove_units(net, layer, removable) if removable else net
    name = f"t{len(net.meta.tasks)}"
    return dj.add_task(
        net, key, name, input_dim=net.meta.shared_input_dim if c else a, output_dim=b
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    shared=st.integers(1, 5),
    activation=st.sampled_from(["relu", "tanh", "gelu"]),
    ops=st.lists(op_strategy, min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_growth_never_changes_finished_tasks(widths, shared, activation, ops, seed):
    key = jax.random.PRNGKey(seed)
    net = dj.init_network(key, widths, shared_input_dim=shared, activation=activation)
    net = dj.add_task(net, jax.random.fold_in(key, 999), "t0", input_dim=shared, output_dim=2)
    inputs, finished = {}, {}

    def snapshot(n):
        for t in n.meta.tasks:
            if t.name not in inputs:
                inputs[t.name] = jax.random.normal(
                    jax.random.fold_in(key, t.index), (3, t.input_dim)
                )
        return {t.name: dj.apply(n, inputs[t.name], t.name) for t in n.meta.tasks}

    for i, op in enumerate(ops):
        before_params = jax.tree.map(np.array, net.params)
        before_meta = net.meta
        if op[0] == "task":  # the newest task is finished: record its outputs
            newest = net.meta.tasks[-1].name
            finished[newest] = snapshot(net)[newest]
        new = _apply_op(net, op, jax.random.fold_in(key, i))
        chex.assert_trees_all_equal(net.params, before_params)  # input not mutated
        assert net.meta == before_meta
        _check_consistency(new)
        outs = snapshot(new)
        for name, want in finished.items():
            np.testing.assert_array_equal(outs[name], want, err_msg=f"{name} changed after {op}")
        net = new

    for name, want in finished.items():
        chex.assert_trees_all_close(jit_apply(net, inputs[name], name), want, rtol=1e-5, atol=1e-6)
    for t in net.meta.tasks:
        chex.assert_trees_all_close(
            jit_apply(net, inputs[t.name], t.name),
            dj.apply(net, inputs[t.name], t.name),
            rtol=1e-5,
            atol=1e-6,
        )


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_jit_outputs_of_finished_tasks_are_bit_identical_after_growth(widths, k, seed):
    key = jax.random.PRNGKey(seed)
    net = dj.init_network(key, widths, shared_input_dim=3)
    net = dj.add_task(net, key, "a", input_dim=3, output_dim=2)
    x = jax.random.normal(key, (4, 3))
    want = jit_apply(net, x, "a")
    net = dj.add_task(net, jax.random.fold_in(key, 1), "b", input_dim=5, output_dim=3)
    net = dj.add_units_all(net, jax.random.fold_in(key, 2), k, outgoing="init")
    net = dj.duplicate_units(net, 0, [0])
    np.testing.assert_array_equal(jit_apply(net, x, "a"), want)
    assert jnp.all(jnp.isfinite(jit_apply(net, jnp.ones((2, 5)), "b")))
