"""DEN mechanisms: function-preserving split, safe pruning, one lr clock under ``grow``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import den_jax as dj
from den_jax import den
from den_jax.den import DENConfig, make_settings, phases, split
from den_jax.den.phases import PhaseState


def _net(widths=(4, 3), d_in=3):
    net = dj.init_network(jax.random.key(0), list(widths), shared_input_dim=d_in)
    net = dj.add_task(net, jax.random.key(1), "a", input_dim=d_in, output_dim=2)
    net = dj.add_task(net, jax.random.key(2), "b", input_dim=d_in, output_dim=2)
    # Non-zero biases, so dead-unit tests see them.
    p = jax.tree.map(lambda v: v, net.params)
    for layer in range(net.num_layers):
        b = jax.random.normal(jax.random.key(7 + layer), p["hidden"][layer]["b"].shape)
        p["hidden"][layer] = {**p["hidden"][layer], "b": 0.3 * b}
    return net.replace(params=p)


def _x(n=32, d=3):
    return jnp.asarray(np.random.default_rng(0).normal(size=(n, d)).astype(np.float32))


class SplitPreservesFunctionTest(chex.TestCase):
    def _drift_top_unit(self, net, unit):
        """Drifts only ``unit``'s incoming weights and bias (top layer) and task b's head."""
        p = jax.tree.map(lambda v: v, net.params)
        h = p["hidden"][1]
        p["hidden"][1] = {
            "w": h["w"].at[:, unit].add(0.7),
            "b": h["b"].at[unit].add(0.4),
        }
        hb = p["output_heads"]["b"]
        p["output_heads"]["b"] = {**hb, "w": hb["w"] + 0.2}
        return net.replace(params=p)

    def test_top_layer_split_keeps_current_and_restores_old(self):
        net = _net()
        h = net.params["hidden"][1]
        net = net.replace(
            params={**net.params, "hidden": [net.params["hidden"][0], {**h, "b": h["b"] + 1.0}]}
        )  # every top unit active, so a doubled contribution would show
        cur = self._drift_top_unit(net, 1)
        chosen = [np.asarray([], np.int64), np.asarray([1])]
        out = split.split_units(
            PhaseState(cur, None, 0), "b", chosen, net.params, net, make_settings(DENConfig())
        ).net
        self.assertEqual(out.widths, (4, 4))
        x = _x()
        # The current task's function is unchanged by the split ...
        np.testing.assert_allclose(dj.apply(out, x, "b"), dj.apply(cur, x, "b"), atol=1e-5)
        # ... and the older task sees its old unit again (drift only on the split unit).
        np.testing.assert_allclose(dj.apply(out, x, "a"), dj.apply(net, x, "a"), atol=1e-6)

    def test_split_of_both_layers_restores_old_task_exactly(self):
        net = _net()
        p = jax.tree.map(lambda v: v, net.params)
        w0 = p["input_heads"]["shared"]["w"]
        p["input_heads"]["shared"] = {"w": w0.at[:, 2].add(0.5)}
        cur = self._drift_top_unit(net.replace(params=p), 0)
        chosen = [np.asarray([2]), np.asarray([0])]
        out = split.split_units(
            PhaseState(cur, None, 0), "b", chosen, net.params, net, make_settings(DENConfig())
        ).net
        x = _x()
        np.testing.assert_allclose(dj.apply(out, x, "a"), dj.apply(net, x, "a"), atol=1e-6)
        # The copy of the top unit reads the copy of the bottom unit with W^t: the copy of
        # layer 0 carries the original's weight into every new column of layer 1.
        w1 = np.asarray(out.params["hidden"][1]["w"])
        np.testing.assert_array_equal(w1[2, 3], 0.0)
        np.testing.assert_array_equal(w1[4, 3], np.asarray(cur.params["hidden"][1]["w"])[2, 0])


class PruneSafeTest(chex.TestCase):
    def _expanded(self):
        net = _net()
        settings = make_settings(DENConfig())
        state, new_units, _ = phases.expand(
            PhaseState(net, None, 0), jax.random.key(5), "b", 2, settings
        )
        return state, new_units, settings

    def _outputs(self, net):
        x = _x()
        return [np.asarray(dj.apply(net, x, t)) for t in ("a", "b")]

    def test_pruning_never_changes_any_output(self):
        state, new_units, settings = self._expanded()
        p = jax.tree.map(lambda v: v, state.net.params)
        w0 = p["input_heads"]["shared"]["w"]
        # New layer-0 unit 4: zero inputs, bias 1.0 -> constant relu(1) = 1: must be kept.
        # New layer-0 unit 5: zero inputs, bias -1 -> relu = 0: dead.
        p["input_heads"]["shared"] = {"w": w0.at[:, 4].set(0.0).at[:, 5].set(0.0)}
        b0 = p["hidden"][0]["b"]
        p["hidden"][0] = {"b": b0.at[4].set(1.0).at[5].set(-1.0)}
        # New layer-1 unit 4: non-zero inputs but all outgoing weights zero: dead.
        for name in ("a", "b"):
            h = p["output_heads"][name]
            p["output_heads"][name] = {**h, "w": h["w"].at[4].set(0.0)}
        h1 = p["hidden"][1]
        p["hidden"][1] = {**h1, "w": h1["w"].at[:, 4].add(0.5)}
        state = state._replace(net=state.net.replace(params=p))
        before = self._outputs(state.net)
        pruned, removed = phases.prune_dead_units(state, "b", new_units, settings)
        self.assertEqual(removed, [1, 1])
        ids0 = pruned.net.meta.layers[0].ids
        self.assertIn(state.net.meta.layers[0].ids[4], ids0)
        self.assertNotIn(state.net.meta.layers[0].ids[5], ids0)
        for a, b in zip(before, self._outputs(pruned.net)):
            np.testing.assert_allclose(a, b, atol=1e-6)

    def test_random_dead_patterns_never_change_outputs(self):
        rng = np.random.default_rng(1)
        for trial in range(4):
            state, new_units, settings = self._expanded()
            p = jax.tree.map(np.asarray, jax.device_get(state.net.params))
            p = jax.tree.map(np.array, p)
            for layer, units in enumerate(new_units):
                for u in units:
                    r = rng.integers(3)
                    if r == 0:
                        (
                            p["input_heads"]["shared"]["w"]
                            if layer == 0
                            else p["hidden"][layer]["w"]
                        )[:, u] = 0.0
                        p["hidden"][layer]["b"][u] = rng.normal()
                    elif r == 1 and layer + 1 < state.net.num_layers:
                        p["hidden"][layer + 1]["w"][u] = 0.0
            net = state.net.replace(params=jax.tree.map(jnp.asarray, p))
            before = self._outputs(net)
            pruned, _ = phases.prune_dead_units(state._replace(net=net), "b", new_units, settings)
            for a, b in zip(before, self._outputs(pruned.net)):
                np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"trial {trial}")


class OneLearningRateClockTest(chex.TestCase):
    def _data(self, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(32, 3)).astype(np.float32)
        return x, (x[:, 0] > 0).astype(np.int32)

    def test_prox_reads_the_optimizer_clock_in_a_carried_state(self):
        # A prox that writes the lr it is given into task b's head bias.
        settings = make_settings(
            DENConfig(opt_state_policy="grow", lr_decay_steps=1, lr_decay_rate=0.5, batch_size=8)
        )
        net = _net()
        state = PhaseState(net, None, 0)
        state, _ = phases.train_phase(
            state, jax.random.key(0), "b", self._data(0), settings, num_steps=4,
            update_mask=dj.task_mask(net, "b"),
        )  # fmt: skip

        def prox(params, lr):
            params = jax.tree.map(lambda v: v, params)
            h = params["output_heads"]["b"]
            params["output_heads"]["b"] = {**h, "b": jnp.full_like(h["b"], lr)}
            return params

        # As a new task starts, the phase step restarts (step=0) but the optimizer's does not.
        state, stats = phases.train_phase(
            state._replace(step=0), jax.random.key(1), "b", self._data(1), settings,
            num_steps=1, update_mask=dj.task_mask(net, "b"), prox=prox,
        )  # fmt: skip
        self.assertEqual(stats["lr_step_start"], 4)
        np.testing.assert_allclose(
            np.asarray(state.net.params["output_heads"]["b"]["b"]), settings.lr_schedule(4)
        )

    def test_learner_carries_the_clock_across_tasks(self):
        cfg = den.config_from_dict(
            dict(
                steps_task1=7, steps_head=3, steps_selective=2, steps_expand=2, steps_split=2,
                batch_size=8, new_nodes_k=1, opt_state_policy="grow", expansion_threshold=0.0,
            )
        )  # fmt: skip
        net = dj.init_network(jax.random.key(0), [4, 3], shared_input_dim=3)
        net = dj.add_task(net, jax.random.key(1), "a", input_dim=3, output_dim=2)
        net, opt, _ = den.learn_task_with_state(
            net, jax.random.key(2), "a", self._data(0), None, cfg
        )
        net = dj.add_task(net, jax.random.key(3), "b", input_dim=3, output_dim=2)
        net, opt, rep = den.learn_task_with_state(
            net, jax.random.key(4), "b", self._data(1), None, cfg, opt_state=opt
        )
        ph = rep["phases"]
        self.assertEqual(ph["head"]["lr_step_start"], 7)
        self.assertEqual(ph["selective"]["lr_step_start"], 10)
        self.assertEqual(ph["expansion"]["lr_step_start"], 12)
        self.assertEqual(phases.schedule_step(opt[0]), 7 + rep["steps"])


class ReportTest(chex.TestCase):
    def test_layer_counts_and_split_cap(self):
        cfg = den.config_from_dict(
            dict(
                steps_task1=5, steps_head=3, steps_selective=3, steps_expand=3, steps_split=3,
                batch_size=8, new_nodes_k=1, expansion_threshold=0.0, drift_threshold=0.0,
                max_splits_per_layer=1, learning_rate=0.05,
            )
        )  # fmt: skip
        net = dj.init_network(jax.random.key(0), [4, 3], shared_input_dim=3)
        net = dj.add_task(net, jax.random.key(1), "a", input_dim=3, output_dim=2)
        x, y = OneLearningRateClockTest()._data(0)
        net, _ = den.learn_task(net, jax.random.key(2), "a", (x, y), None, cfg)
        net = dj.add_task(net, jax.random.key(3), "b", input_dim=3, output_dim=2)
        net, rep = den.learn_task(net, jax.random.key(4), "b", (x, 1 - y), None, cfg)
        sp = rep["phases"]["split"]
        self.assertEqual(sp["cap_hit"], [o > 1 for o in sp["over_threshold"]])
        self.assertTrue(any(sp["cap_hit"]))
        self.assertIn("tau", rep["phases"]["expansion"]["decision"])
        layers = rep["layers"]
        self.assertEqual(sum(layers["nonzero"]) + layers["heads_nonzero"][0], rep["nonzero_params"])
        self.assertEqual(sum(layers["stored"]) + layers["heads_stored"][0], rep["stored_params"])


class AdamProxSparsityTest(chex.TestCase):
    """Exact zeros under Adam on a hand-sized case, and persisting across steps."""

    def _run(self, prox_scale, steps=300):
        # loss = sum (w - c)^2: coordinate 0's optimum under mu=0.01 is exactly 0
        # (|dL/dw| = 0.002 < mu at w = 0); coordinate 1's is 1 - mu/2.
        c = jnp.asarray([0.001, 1.0])
        cfg = DENConfig(l1_lambda=0.01, learning_rate=1e-3, prox_scale=prox_scale)
        settings = make_settings(cfg)
        params = {"w": jnp.asarray([0.05, 0.0])}
        opt = settings.tx.init(params)
        l1 = phases.make_l1_prox(settings)
        history = []
        for step in range(steps):
            grads = {"w": 2 * (params["w"] - c)}
            upd, opt = settings.tx.update(grads, opt, params)
            params = jax.tree.map(lambda p, u: p + u, params, upd)
            if l1 is not None:
                params = l1(params, settings.lr_schedule(step))
            history.append(np.asarray(params["w"]))
        return np.asarray(history)

    def test_adam_metric_prox_makes_and_keeps_exact_zeros(self):
        h = self._run("adam")
        first = int(np.flatnonzero(h[:, 0] == 0.0)[0])
        self.assertLess(first, 150)
        np.testing.assert_array_equal(h[first:, 0], 0.0)  # stays exactly zero
        self.assertGreater(h[-1, 1], 0.2)  # the useful weight keeps growing

    def test_scalar_lr_threshold_does_not_keep_zeros(self):
        h = self._run("lr")
        self.assertLess(np.mean(h[150:, 0] == 0.0), 0.5)

    def test_adam_prox_zeros_persist_in_a_network(self):
        net = _net()
        cfg = DENConfig(prox_scale="adam", l1_lambda=0.05, batch_size=8, learning_rate=1e-2)
        settings = make_settings(cfg)
        x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
        data = (x, (x[:, 0] > 0).astype(np.int32))
        state = PhaseState(net, None, 0)
        zeros = []
        for k in range(3):
            state, _ = phases.train_phase(
                state, jax.random.key(k), "a", data, settings, num_steps=100,
                update_mask=dj.task_mask(net, "a"),
            )  # fmt: skip
            w = np.asarray(state.net.params["input_heads"]["shared"]["w"])
            zeros.append(w == 0)
        self.assertGreater(zeros[0].sum(), 0)
        self.assertTrue(np.all(zeros[2][zeros[1]]))  # zeros of phase 2 are still zero

    def test_adam_prox_rejects_optimizer_override(self):
        import optax

        with self.assertRaises(ValueError):
            make_settings(DENConfig(prox_scale="adam"), optimizer=optax.sgd(0.1))


class HeadL1Test(chex.TestCase):
    """``head_l1_lambda``: a sparser head (Eq. 3) makes the breadth-first search select less."""

    def _selected_top(self, prox_scale, head_l1):
        cfg = den.config_from_dict(
            dict(
                steps_task1=60, steps_head=80, steps_selective=2, steps_expand=2, steps_split=2,
                batch_size=16, new_nodes_k=1, expansion_threshold=1e9, learning_rate=1e-2,
                l1_lambda=1e-4, head_l1_lambda=head_l1, prox_scale=prox_scale,
                split_when="never",
            )
        )  # fmt: skip
        x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int32)
        net = dj.init_network(jax.random.key(0), [8, 12], shared_input_dim=3)
        net = dj.add_task(net, jax.random.key(1), "a", input_dim=3, output_dim=2)
        net, _ = den.learn_task(net, jax.random.key(2), "a", (x, y), None, cfg)
        net = dj.add_task(net, jax.random.key(3), "b", input_dim=3, output_dim=2)
        _, rep = den.learn_task(net, jax.random.key(4), "b", (x, (x[:, 1] > 0).astype(np.int32)),
                                None, cfg)  # fmt: skip
        return rep["phases"]["head"]["l1_lambda"], rep["phases"]["selective"]["selected_units"][-1]

    def test_stronger_head_l1_selects_fewer_top_units_adam(self):
        lam, dense = self._selected_top("adam", None)
        self.assertEqual(lam, 1e-4)
        lam, sparse = self._selected_top("adam", 0.05)
        self.assertEqual(lam, 0.05)
        self.assertLess(sparse, dense)

    def test_stronger_head_l1_selects_fewer_top_units_lr(self):
        _, dense = self._selected_top("lr", None)
        _, sparse = self._selected_top("lr", 20.0)
        self.assertLess(sparse, dense)

    def test_bad_head_l1_names_the_field(self):
        with self.assertRaisesRegex(ValueError, "head_l1_lambda"):
            DENConfig(head_l1_lambda=-1.0)
