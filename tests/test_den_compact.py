"""Compact selective retraining (den_jax.den.compact) trains what masked dense steps train."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import den_jax as dj
from den_jax import den
from den_jax.den.compact import Subnetwork
from den_jax.den.config import DENConfig
from den_jax.den.selection import select_subnetwork


def _two_tasks(cfg, keep_first=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 5)).astype(np.float32)
    net = dj.init_network(jax.random.key(0), [10, 8], shared_input_dim=5)
    net = dj.add_task(net, jax.random.key(1), "a", input_dim=5, output_dim=2)
    net, _ = den.learn_task(net, jax.random.key(2), "a", (x, (x[:, 0] > 0).astype(np.int32)),
                            None, cfg)  # fmt: skip
    first = net
    net = dj.add_task(net, jax.random.key(3), "b", input_dim=5, output_dim=2)
    y = (x[:, 1] + x[:, 2] > 0).astype(np.int32)
    net, rep = den.learn_task(net, jax.random.key(4), "b", (x, y), (x[:48], y[:48]), cfg)
    return (net, rep, first) if keep_first else (net, rep)


def _cfg(**kw):
    base = dict(
        steps_task1=80, steps_head=60, steps_selective=40, steps_expand=20, steps_split=20,
        batch_size=16, new_nodes_k=2, learning_rate=1e-2, l1_lambda=1e-3, head_l1_lambda=0.05,
        prox_scale="adam", split_when="never", expansion_threshold=1e9,
    )  # fmt: skip
    return den.config_from_dict({**base, **kw})


class CompactSelectiveTest(chex.TestCase):
    def test_compact_equals_masked_dense(self):
        masked, rep_m = _two_tasks(_cfg())
        compact, rep_c = _two_tasks(_cfg(selective_retraining="compact"))
        sel = rep_c["phases"]["selective"]
        # A real subnetwork was selected, so the compact network is smaller than the full one.
        self.assertLess(sum(sel["selected_units"]), sum(sel["available_units"]))
        self.assertTrue(sel["compact"])
        self.assertFalse(rep_m["phases"]["selective"]["compact"])
        self.assertEqual(sel["trainable"], rep_m["phases"]["selective"]["trainable"])
        chex.assert_trees_all_close(compact.params, masked.params, atol=2e-5, rtol=2e-5)

    def test_compact_with_expansion_and_split(self):
        cfg = dict(expansion_threshold=0.0, split_when="always", drift_threshold=0.0)
        masked, _ = _two_tasks(_cfg(**cfg))
        compact, _ = _two_tasks(_cfg(selective_retraining="compact", **cfg))
        self.assertEqual(masked.widths, compact.widths)
        chex.assert_trees_all_close(compact.params, masked.params, atol=1e-4, rtol=1e-4)

    def test_old_task_untouched_outside_the_drift(self):
        """Unselected weights are bit-identical after compact selective retraining."""
        cfg = _cfg(selective_retraining="compact", steps_selective=30)
        net, rep, first = _two_tasks(cfg, keep_first=True)
        del rep
        # Only the selective phase ran on task b (no expansion, no split): every hidden
        # weight outside the selected rows and columns keeps its task-a value.
        n0 = first.widths
        sel = select_subnetwork(
            dj.add_task(first, jax.random.key(3), "b", input_dim=5, output_dim=2), "b"
        )
        mask = np.asarray(sel.masks["hidden"][1]["w"])
        before = np.asarray(first.params["hidden"][1]["w"])[: n0[0], : n0[1]]
        after = np.asarray(net.params["hidden"][1]["w"])[: n0[0], : n0[1]]
        np.testing.assert_array_equal(after[mask == 0], before[mask == 0])


class SubnetworkTest(parameterized.TestCase):
    def _net(self):
        net = dj.init_network(jax.random.key(0), [6, 5], shared_input_dim=4)
        net = dj.add_task(net, jax.random.key(1), "a", input_dim=4, output_dim=3)
        return net

    def test_scatter_of_the_gathered_net_is_the_net(self):
        net = self._net()
        sub = Subnetwork.build(net, "a", [np.array([0, 2, 5]), np.array([1, 4])])
        chex.assert_trees_all_equal(sub.scatter(sub.compact_net()).params, net.params)

    @parameterized.parameters(False, True)
    def test_compact_forward_equals_full_when_unselected_have_no_path(self, jit):
        net = self._net()
        top, low = np.array([1, 4]), np.array([0, 2, 5])
        p = jax.tree.map(lambda v: v, net.params)
        w_head = p["output_heads"]["a"]["w"]
        p["output_heads"]["a"]["w"] = w_head.at[np.setdiff1d(np.arange(5), top)].set(0.0)
        w1 = p["hidden"][1]["w"]
        rows = np.setdiff1d(np.arange(6), low)
        p["hidden"][1]["w"] = w1.at[np.ix_(rows, top)].set(0.0)
        net = net.replace(params=p)
        sub = Subnetwork.build(net, "a", [low, top])
        x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 4)), jnp.float32)
        fwd = jax.jit(dj.apply, static_argnums=2) if jit else dj.apply
        np.testing.assert_allclose(fwd(sub.compact_net(), x, "a"), fwd(net, x, "a"), atol=1e-6)

    def test_bad_units_are_refused(self):
        net = self._net()
        with self.assertRaisesRegex(ValueError, "one index array per hidden layer"):
            Subnetwork.build(net, "a", [np.array([0])])
        with self.assertRaisesRegex(ValueError, r"layer 1: .* in \[0, 5\)"):
            Subnetwork.build(net, "a", [np.array([0]), np.array([7])])

    def test_compact_needs_reset_optimizer_state(self):
        with self.assertRaisesRegex(ValueError, "selective_retraining.*opt_state_policy"):
            DENConfig(selective_retraining="compact", opt_state_policy="grow")
        with self.assertRaisesRegex(ValueError, "selective_retraining"):
            DENConfig(selective_retraining="gathered")
