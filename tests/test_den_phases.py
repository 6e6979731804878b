"""DEN phases: drift and split on a hand-built case, expansion and pruning, opt-state policies."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import den_jax as dj
from den_jax import den
from den_jax.den import DENConfig, make_settings, phases, split
from den_jax.den.phases import PhaseState


def _two_task_net(widths=(3, 2), d_in=2):
    key = jax.random.key(0)
    net = dj.init_network(key, list(widths), shared_input_dim=d_in)
    net = dj.add_task(net, jax.random.key(1), "a", input_dim=d_in, output_dim=2)
    net = dj.add_task(net, jax.random.key(2), "b", input_dim=d_in, output_dim=2)
    return net


def _settings(**kw):
    return make_settings(DENConfig(batch_size=4, **kw))


class SplitTest(chex.TestCase):
    def _drifted(self):
        net = _two_task_net()
        prev = net.params
        p = jax.tree.map(lambda v: v, prev)
        w = np.asarray(prev["input_heads"]["shared"]["w"]).copy()
        w[:, 0] += [0.03, 0.04]  # rho = 0.05
        w[:, 1] += [0.6, 0.8]  # rho = 1.0
        w[:, 2] += [0.3, 0.4]  # rho = 0.5
        p["input_heads"]["shared"] = {"w": jnp.asarray(w)}
        b = np.asarray(prev["hidden"][0]["b"]).copy()
        b[1] += 0.5  # unit 1 also drifted in its bias
        p["hidden"][0] = {"b": jnp.asarray(b)}
        return net, prev, net.replace(params=p)

    def test_drift_hand_computed(self):
        net, prev, cur = self._drifted()
        drift = split.unit_drift(cur, prev, phases.old_task_mask(cur, "b"))
        np.testing.assert_allclose(drift[0], [0.05, np.sqrt(1.0 + 0.25), 0.5], rtol=1e-5)
        np.testing.assert_allclose(drift[1], [0.0, 0.0], atol=1e-7)

    def test_choose_most_drifted_first_with_cap(self):
        net, prev, cur = self._drifted()
        drift = split.unit_drift(cur, prev, phases.old_task_mask(cur, "b"))
        chosen = split.choose_split_units(drift, cur, task_index=1, threshold=0.1, cap=1)
        np.testing.assert_array_equal(chosen[0], [1])
        assert chosen[1].size == 0
        chosen = split.choose_split_units(drift, cur, task_index=1, threshold=0.1, cap=5)
        np.testing.assert_array_equal(chosen[0], [1, 2])
        # Units of the current task (stamp 1) are never split.
        chosen = split.choose_split_units(drift, cur, task_index=0, threshold=0.1, cap=5)
        assert chosen[0].size == 0

    def test_split_restores_original_and_stamps_copy(self):
        net, prev, cur = self._drifted()
        settings = _settings()
        chosen = [np.asarray([1]), np.asarray([], np.int64)]
        state = split.split_units(PhaseState(cur, None, 0), "b", chosen, prev, net, settings)
        out = state.net
        self.assertEqual(out.widths, (4, 2))
        layer = out.meta.layers[0]
        self.assertEqual(layer.stamps, (0, 0, 0, 1))  # the copy is stamped with task b
        self.assertEqual(layer.parents[3], layer.ids[1])
        w = np.asarray(out.params["input_heads"]["shared"]["w"])
        b = np.asarray(out.params["hidden"][0]["b"])
        # Original unit 1 has W^{t-1} back (bit-identical), the copy keeps W^t.
        np.testing.assert_array_equal(w[:, 1], np.asarray(prev["input_heads"]["shared"]["w"])[:, 1])
        np.testing.assert_array_equal(b[1], np.asarray(prev["hidden"][0]["b"])[1])
        np.testing.assert_array_equal(
            w[:, 3], np.asarray(cur.params["input_heads"]["shared"]["w"])[:, 1]
        )
        np.testing.assert_array_equal(b[3], np.asarray(cur.params["hidden"][0]["b"])[1])
        # Unsplit units keep their current weights.
        np.testing.assert_array_equal(
            w[:, 0], np.asarray(cur.params["input_heads"]["shared"]["w"])[:, 0]
        )
        # Outgoing weights into older units stay with the original (older tasks use them);
        # the copy's entries there start at zero (no doubled contribution).
        h1 = np.asarray(out.params["hidden"][1]["w"])
        np.testing.assert_array_equal(h1[1], np.asarray(cur.params["hidden"][1]["w"])[1])
        np.testing.assert_array_equal(h1[3], 0.0)
        # Task a never sees the copy: its outputs only depend on the (restored) originals.
        x = jnp.ones((2, 2))
        restored = (
            cur.params["input_heads"]["shared"]["w"]
            .at[:, 1]
            .set(prev["input_heads"]["shared"]["w"][:, 1])
        )
        ref = dict(cur.params)
        ref["input_heads"] = {"shared": {"w": restored}}
        ref["hidden"] = [
            {"b": cur.params["hidden"][0]["b"].at[1].set(prev["hidden"][0]["b"][1])},
            cur.params["hidden"][1],
        ]
        np.testing.assert_array_equal(
            dj.apply(out, x, "a"), dj.apply(cur.replace(params=ref), x, "a")
        )


class ExpansionTest(chex.TestCase):
    def test_expand_masks_and_prune_dead(self):
        net = _two_task_net(widths=(3, 2))
        settings = _settings()
        state, new_units, mask = phases.expand(
            PhaseState(net, None, 0), jax.random.key(5), "b", 2, settings
        )
        self.assertEqual(state.net.widths, (5, 4))
        np.testing.assert_array_equal(new_units[0], [3, 4])
        np.testing.assert_array_equal(new_units[1], [2, 3])
        # Old units' incoming weights frozen; new columns and rows trainable; old head frozen.
        np.testing.assert_array_equal(mask["input_heads"]["shared"]["w"][0], [0, 0, 0, 1, 1])
        m1 = np.asarray(mask["hidden"][1]["w"])
        np.testing.assert_array_equal(m1[:3, :2], np.zeros((3, 2)))
        np.testing.assert_array_equal(m1[3:], np.ones((2, 4)))
        np.testing.assert_array_equal(m1[:, 2:], np.ones((5, 2)))
        np.testing.assert_array_equal(mask["output_heads"]["b"]["w"], np.ones((4, 2)))
        np.testing.assert_array_equal(mask["output_heads"]["a"]["w"], np.zeros((4, 2)))
        # Kill the incoming weights of new unit 4 (layer 0) and 3 (layer 1).
        p = jax.tree.map(lambda v: v, state.net.params)
        p["input_heads"]["shared"] = {"w": p["input_heads"]["shared"]["w"].at[:, 4].set(0.0)}
        p["hidden"][1] = {**p["hidden"][1], "w": p["hidden"][1]["w"].at[:, 3].set(0.0)}
        state = state._replace(net=state.net.replace(params=p))
        pruned, removed = phases.prune_dead_units(state, "b", new_units, settings)
        self.assertEqual(removed, [1, 1])
        self.assertEqual(pruned.net.widths, (4, 3))
        kept_ids = [layer.ids for layer in pruned.net.meta.layers]
        self.assertNotIn(state.net.meta.layers[0].ids[4], kept_ids[0])
        self.assertIn(state.net.meta.layers[0].ids[3], kept_ids[0])

    def test_group_prox_only_on_new_columns(self):
        net = _two_task_net(widths=(3, 2))
        settings = _settings(group_lambda=1e6, l1_lambda=0.0, prox_scale="none")
        state, new_units, _ = phases.expand(
            PhaseState(net, None, 0), jax.random.key(5), "b", 2, settings
        )
        prox = phases.make_expansion_prox(settings, state.net, "b", new_units)
        out = prox(state.net.params, 1.0)
        w0 = np.asarray(out["input_heads"]["shared"]["w"])
        np.testing.assert_array_equal(w0[:, 3:], 0.0)
        np.testing.assert_array_equal(
            w0[:, :3], np.asarray(state.net.params["input_heads"]["shared"]["w"])[:, :3]
        )


class OptStatePolicyTest(chex.TestCase):
    def _data(self, n=16, d=2):
        x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
        return jnp.asarray(x), jnp.asarray((x[:, 0] > 0).astype(np.int32))

    def test_grow_pads_moments_by_unit_and_keeps_count(self):
        net = _two_task_net()
        settings = _settings(opt_state_policy="grow")
        state = PhaseState(net, None, 0)
        state, _ = phases.train_phase(
            state, jax.random.key(0), "b", self._data(), settings, num_steps=3,
            update_mask=dj.task_mask(net, "b"),
        )  # fmt: skip
        mu_before = state.opt_state[0].mu
        grown, new_units, _ = phases.expand(state, jax.random.key(1), "b", 2, settings)
        adam = grown.opt_state[0]
        self.assertEqual(int(adam.count), 3)
        chex.assert_trees_all_equal_shapes(adam.mu, grown.net.params)
        w_mu = np.asarray(adam.mu["input_heads"]["shared"]["w"])
        np.testing.assert_array_equal(
            w_mu[:, :3], np.asarray(mu_before["input_heads"]["shared"]["w"])
        )
        np.testing.assert_array_equal(w_mu[:, 3:], 0.0)
        grown, _ = phases.train_phase(
            grown, jax.random.key(2), "b", self._data(), settings, num_steps=2,
            update_mask=dj.task_mask(grown.net, "b"),
        )  # fmt: skip
        self.assertEqual(int(grown.opt_state[0].count), 5)
        self.assertEqual(grown.step, 5)

    def test_reset_starts_fresh_each_phase(self):
        net = _two_task_net()
        settings = _settings(opt_state_policy="reset")
        state = PhaseState(net, None, 0)
        state, _ = phases.train_phase(
            state, jax.random.key(0), "b", self._data(), settings, num_steps=3,
            update_mask=dj.task_mask(net, "b"),
        )  # fmt: skip
        grown, _, _ = phases.expand(state, jax.random.key(1), "b", 2, settings)
        adam = grown.opt_state[0]
        self.assertEqual(int(adam.count), 0)
        chex.assert_trees_all_equal(adam.mu, jax.tree.map(jnp.zeros_like, grown.net.params))
        grown, _ = phases.train_phase(
            grown, jax.random.key(2), "b", self._data(), settings, num_steps=2,
            update_mask=dj.task_mask(grown.net, "b"),
        )  # fmt: skip
        self.assertEqual(int(grown.opt_state[0].count), 2)
        self.assertEqual(grown.step, 2)

    def test_default_losses_come_from_den_jax_losses(self):
        from den_jax import losses

        self.assertIs(make_settings(DENConfig()).logits_loss, losses.softmax_ce)
        self.assertIs(make_settings(DENConfig(loss="sigmoid_ce")).logits_loss, losses.sigmoid_ce)


class SelectiveMaskTest(chex.TestCase):
    def test_unselected_weights_bit_identical_under_adamw_and_prox(self):
        net = _two_task_net(widths=(4, 3), d_in=2)
        p = jax.tree.map(lambda v: v, net.params)
        # Head of task b uses top units 0 and 1 only -> unit 2 and what feeds only it is frozen.
        p["output_heads"]["b"] = {
            **p["output_heads"]["b"],
            "w": p["output_heads"]["b"]["w"].at[2].set(0.0),
        }
        net = net.replace(params=p)
        sel = den.select_subnetwork(net, "b")
        settings = make_settings(
            DENConfig(batch_size=4, l1_lambda=10.0),
            optimizer=lambda s: optax.adamw(s, weight_decay=0.5),
        )
        x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
        y = jnp.asarray([0, 1] * 4)
        out, _ = phases.train_phase(
            PhaseState(net, None, 0), jax.random.key(0), "b", (x, y), settings, num_steps=5,
            update_mask=sel.masks, prox=phases.make_l1_prox(settings),
            prev=net.params, drift_mask=phases.old_task_mask(net, "b"),
        )  # fmt: skip
        before = jax.tree.leaves(net.params)
        after = jax.tree.leaves(out.net.params)
        masks = jax.tree.leaves(sel.masks)
        changed_somewhere = False
        for b, a, m in zip(before, after, masks):
            b, a, m = np.asarray(b), np.asarray(a), np.asarray(m)
            np.testing.assert_array_equal(a[m == 0], b[m == 0])
            changed_somewhere |= bool(np.any(a[m != 0] != b[m != 0]))
        self.assertTrue(changed_somewhere)
        np.testing.assert_array_equal(
            out.net.params["hidden"][1]["w"][:, 2], net.params["hidden"][1]["w"][:, 2]
        )
