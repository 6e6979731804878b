"""DER protocol as library calls: config, learn_step from a user's script, save/restore, floats."""

import json
import shutil
import tempfile
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from den_jax.data import images
from den_jax.der import augment, bias_correction, config, evaluate, protocol, train
from den_jax.der import step as step_mod
from den_jax.der.protocol import PRESETS, DERConfig, learn_step, make_stream
from den_jax.der.step import step_key

TINY = dict(num_classes=4, base_width=2, first_epochs=1, later_epochs=1, batch_size=8)


def _user_script(optimizer_calls: list):
    """What a user writes: tiny data, own settings, two DER steps (kept under 40 lines)."""
    (tr, te) = images.synthetic_data(num_classes=4, per_class=8, size=8, channels=3, seed=0)
    cfg = PRESETS["smoke"].replace(
        **TINY, memory=8, train_per_class=None, first_lr=0.05, first_milestones=(), prune=True
    )
    data = make_stream(cfg, tr, te, mean=(0.5,) * 3, std=(0.25,) * 3)

    def frozen_sgd(steps_per_epoch):  # the user's own optimizer for step 1: lr 0
        optimizer_calls.append(steps_per_epoch)
        return optax.sgd(0.0)

    state, mem, reports, states = None, {}, [], []
    for t in range(2):
        opt = None if t == 0 else frozen_sgd
        state, mem, rep = learn_step(state, mem, data, cfg, step_key(cfg, t), step=t, optimizer=opt)
        reports.append(rep)
        states.append(state)
    return cfg, data, states, mem, reports


class LearnStepTest(chex.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.calls = []
        cls.cfg, cls.data, cls.states, cls.mem, cls.reports = _user_script(cls.calls)

    def test_two_steps_from_a_user_script(self):
        s0, s1 = self.states
        self.assertEqual((s1.step, s1.num_old, s1.num_seen), (1, 2, 4))
        self.assertEqual([r["step"] for r in self.reports], [0, 1])
        self.assertEqual([r["num_seen"] for r in self.reports], [2, 4])
        # The user's factory built step 1's optimizer, with the step's batches per epoch.
        self.assertEqual(self.calls, [self.reports[1]["steps_per_epoch"]])
        self.assertEqual(self.reports[1]["pool_size"], 16 + 8)  # new classes + memory (4 + 4)
        # lr 0: the new backbone is still the copy of step 0's; step 0 did train.
        chex.assert_trees_all_equal(s1.new["params"], s0.new["params"])
        self.assertEqual(len(self.reports[0]["epochs"]), 1)
        # Herding memory from the final model: memory // classes exemplars of each class.
        self.assertEqual(sorted(self.mem), [0, 1, 2, 3])
        for c, idx in self.mem.items():
            self.assertLen(idx, 2)
            np.testing.assert_array_equal(self.data.y_train[idx], c)
        r = self.reports[1]
        self.assertLen(r["task_acc"], 2)
        self.assertIn("old", r["grouped"])
        self.assertIsNotNone(r["weight_align_gamma"])
        self.assertIn("pruned_inner_widths", r["params"])
        json.dumps(self.reports)  # JSON-friendly

    def test_step_is_checked_against_the_state(self):
        with self.assertRaisesRegex(ValueError, "start of step 2"):
            learn_step(self.states[1], self.mem, self.data, self.cfg, jax.random.key(0), step=1)
        with self.assertRaisesRegex(ValueError, "all 2 steps are done"):
            learn_step(self.states[1], self.mem, self.data, self.cfg, jax.random.key(0))

    def test_save_restore_round_trip(self):
        d = tempfile.mkdtemp()
        shape = self.data.image_shape
        protocol.save_state(
            d, 1, self.states[1], self.mem, {"x": 1}, cfg=self.cfg, image_shape=shape
        )
        state, mem, meta = protocol.restore_state(d, self.cfg)
        self.assertEqual(meta["results"], {"x": 1})
        self.assertEqual(meta["config"], self.cfg.to_dict())
        self.assertEqual(
            (state.num_old, state.num_seen, state.old_inner_widths),
            (self.states[1].num_old, self.states[1].num_seen, self.states[1].old_inner_widths),
        )
        self.assertIsNotNone(state.mask_e)
        chex.assert_trees_all_equal(state, self.states[1])
        self.assertEqual(sorted(mem), sorted(self.mem))
        for c in mem:
            np.testing.assert_array_equal(mem[c], self.mem[c])


class FloatBatchTest(chex.TestCase):
    def test_float_augment_matches_uint8(self):
        rng = np.random.default_rng(0)
        xu8 = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
        mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
        xf = ((xu8 / 255.0 - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
        k = jax.random.key(3)
        a = augment.augment(k, jnp.asarray(xu8), mean, std, pad=0, brightness=0.0)
        b = augment.augment(k, jnp.asarray(xf), (0.0,) * 3, (1.0,) * 3, pad=0, brightness=0.0)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)

    def test_learn_step_on_normalised_floats(self):
        (tr, te) = images.synthetic_data(4, 8, 8, 3, 0)
        norm = lambda x: ((x / 255.0 - 0.5) / 0.25).astype(np.float32)
        cfg = DERConfig(**TINY, init_classes=2, increment=2, memory=8, dataset="custom")
        data = images.StreamData.from_float(
            (norm(tr[0]), tr[1]),
            (norm(te[0]), te[1]),
            num_classes=4,
            init_classes=2,
            increment=2,
        )
        self.assertTrue(data.normalised)
        self.assertEqual((data.mean, data.std), ((0.0,) * 3, (1.0,) * 3))
        self.assertEqual(data.augment_options, {"brightness": 0.0})
        via_cfg = make_stream(cfg, (norm(tr[0]), tr[1]), (norm(te[0]), te[1]))
        np.testing.assert_array_equal(via_cfg.x_train, data.x_train)
        state, mem, rep = learn_step(None, {}, data, cfg, jax.random.key(0))
        self.assertEqual(state.num_seen, 2)
        self.assertTrue(np.isfinite(rep["epochs"][0]["loss"]))
        self.assertEqual(sorted(mem), [0, 1])
        self.assertEqual(rep["task_acc"][0], rep["top1"])

    def test_bad_images_are_refused(self):
        (tr, te) = images.synthetic_data(4, 8, 8, 3, 0)
        kw = dict(num_classes=4, init_classes=2, increment=2)
        with self.assertRaisesRegex(ValueError, "float"):
            images.StreamData.from_float(tr, te, **kw)
        bad = tr[0].astype(np.float32)
        bad[5, 0, 0, 0] = np.nan
        with self.assertRaisesRegex(
            ValueError, r"train split images: non-finite .* \(5, 0, 0, 0\)"
        ):
            images.StreamData.from_float((bad, tr[1]), (bad, tr[1]), **kw)
        with self.assertRaisesRegex(ValueError, "uint8"):
            images.StreamData.from_uint8((bad, tr[1]), te, mean=(0,) * 3, std=(1,) * 3, **kw)
        with self.assertRaisesRegex(ValueError, "test split labels: label 7 at index 0"):
            images.StreamData.from_uint8(tr, (te[0], te[1] + 7), mean=(0,) * 3, std=(1,) * 3, **kw)
        with self.assertRaisesRegex(ValueError, "mean and std"):
            make_stream(DERConfig(**TINY, init_classes=2, increment=2), tr, te)


class ConfigTest(chex.TestCase):
    def test_presets_keep_pycil_values(self):
        b0 = PRESETS["b0_10"].to_dict()
        self.assertEqual(
            {k: b0[k] for k in ("first_epochs", "first_milestones", "later_milestones", "memory")},
            {
                "first_epochs": 200,
                "first_milestones": [60, 120, 170],
                "later_milestones": [80, 120, 150],
                "memory": 2000,
            },
        )
        self.assertEqual((PRESETS["b50_10"].init_classes, PRESETS["b50_10"].increment), (50, 10))
        smoke = PRESETS["smoke"]
        self.assertEqual((smoke.dataset, smoke.num_classes, smoke.base_width), ("synthetic", 6, 4))
        self.assertEqual(sorted(PRESETS), ["b0_10", "b0_5", "b50_10", "notebook", "seed", "smoke"])

    def test_validation_names_the_field(self):
        with self.assertRaisesRegex(ValueError, "DERConfig.method"):
            DERConfig(method="ewc")
        with self.assertRaisesRegex(ValueError, "DERConfig.batch_size"):
            DERConfig(batch_size=0)
        with self.assertRaisesRegex(ValueError, "DERConfig.first_lr"):
            DERConfig(first_lr=-1.0)
        with self.assertRaisesRegex(ValueError, r"unknown DERConfig fields \['lr_typo'\]"):
            DERConfig.from_mapping({"lr_typo": 1})

    def test_json_round_trip_and_build(self):
        cfg = PRESETS["smoke"]
        self.assertEqual(DERConfig.from_mapping(json.loads(cfg.to_json())), cfg)
        built = config.build_config("b0_10", {"epochs": 3, "milestones": [1, 5], "lr": 0.2})
        self.assertEqual((built.first_epochs, built.later_epochs), (3, 3))
        self.assertEqual((built.first_milestones, built.later_milestones), ((1,), (1,)))
        self.assertEqual(built.epoch_loop, config.resolve_epoch_loop())
        self.assertEqual(config.build_config("smoke", {"dataset": "mnist"}).num_classes, 10)

    def test_step_schedule_aux_weight_rule(self):
        cfg = PRESETS["smoke"]
        self.assertEqual(config.step_schedule(cfg, 0)["aux_weight"], 0.0)
        self.assertEqual(config.step_schedule(cfg, 1)["aux_weight"], 1.0)
        self.assertEqual(config.step_schedule(cfg, 1)["weight_decay"], cfg.later_wd)
        ft = cfg.replace(method="finetune")
        self.assertEqual(config.step_schedule(ft, 2)["aux_weight"], 0.0)


def _leaves(tree):
    return {
        jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def _curves(results):
    keys = ("top1_curve", "top5_curve", "nme_top1_curve", "nme_top5_curve", "acc_matrix")
    return {k: results[k] for k in keys}


class ResumeEqualsUninterruptedTest(chex.TestCase):
    """A run killed after step 0 and resumed equals the uninterrupted run (smoke preset).

    The killed run's folder is the uninterrupted run's folder as it stood when step 0 had
    been checkpointed (copied from ``on_step``): exactly what a process killed then
    leaves. The uninterrupted run also records the order of the calls inside step 1.
    """

    @classmethod
    def setUpClass(cls):
        tr, te = images.synthetic_data(num_classes=4, per_class=8, size=8, channels=3, seed=0)
        cls.cfg = PRESETS["smoke"].replace(
            **TINY, memory=8, train_per_class=None, epoch_loop="step", prune=True
        )
        cls.data = make_stream(cls.cfg, tr, te, mean=(0.5,) * 3, std=(0.25,) * 3)
        root = tempfile.mkdtemp()
        cls.full_dir, cls.killed_dir = f"{root}/full", f"{root}/killed"
        cls.wrong_dir = f"{root}/wrong"

        def on_step(t, results):
            if t == 0:
                shutil.copytree(cls.full_dir, cls.killed_dir)
                shutil.copytree(cls.full_dir, cls.wrong_dir)

        cls.calls = []
        real_align, real_update, real_pool = (
            step_mod.bias_correction.weight_align,
            step_mod.memory.update_memory,
            step_mod._pool,
        )

        def align(state):
            cls.calls.append(("align", state.num_seen))
            return real_align(state)

        def update(mem, groups, feats_fn, quota):
            cls.calls.append(("memory", sorted(groups)))
            cls.memory_feats = feats_fn(np.arange(4))
            return real_update(mem, groups, feats_fn, quota)

        def pool(mem, data, cfg, lo, hi):
            out = real_pool(mem, data, cfg, lo, hi)
            cls.calls.append(("pool", lo, hi, {int(c): list(v) for c, v in mem.items()}, out))
            return out

        with (
            mock.patch.object(step_mod.bias_correction, "weight_align", align),
            mock.patch.object(step_mod.memory, "update_memory", update),
            mock.patch.object(step_mod, "_pool", pool),
        ):
            cls.full = protocol.run_protocol(cls.cfg, cls.data, cls.full_dir, on_step=on_step)
        cls.resumed = protocol.run_protocol(cls.cfg, cls.data, cls.killed_dir, resume=True)

    def _final(self, d):
        return protocol.restore_state(f"{d}/{protocol.CHECKPOINTS}", self.cfg)

    def test_resumed_equals_uninterrupted(self):
        self.assertEqual(_curves(self.resumed), _curves(self.full))
        self.assertEqual(self.resumed["pycil_grouped"], self.full["pycil_grouped"])
        s_full, m_full, _ = self._final(self.full_dir)
        s_res, m_res, _ = self._final(self.killed_dir)
        chex.assert_trees_all_equal(_leaves(s_res), _leaves(s_full))
        self.assertEqual(sorted(m_res), sorted(m_full))
        for c in m_full:
            np.testing.assert_array_equal(m_res[c], m_full[c])

    def test_resume_with_a_wrong_memory_differs(self):
        # The comparison above can fail: resuming with another memory (each class's
        # exemplars replaced by other images of the class) changes the final model.
        real = protocol.restore_state

        def wrong_restore(*a, **k):
            state, mem, meta = real(*a, **k)
            y = self.data.y_train
            bad = {c: np.setdiff1d(np.flatnonzero(y == c), v)[: len(v)] for c, v in mem.items()}
            return state, bad, meta

        with mock.patch.object(protocol, "restore_state", wrong_restore):
            protocol.run_protocol(self.cfg, self.data, self.wrong_dir, resume=True)
        s_full, _, _ = self._final(self.full_dir)
        s_bad, _, _ = self._final(self.wrong_dir)
        a, b = _leaves(s_full), _leaves(s_bad)
        self.assertTrue(any(not np.array_equal(a[k], b[k]) for k in a))

    def test_step_order_pool_and_memory_from_final_model(self):
        names = [c[0] for c in self.calls]
        # step 0: pool, memory; step 1: pool, weight alignment, then memory.
        self.assertEqual(names, ["pool", "memory", "pool", "align", "memory"])
        _, lo, hi, mem_before, pool1 = self.calls[2]
        new = np.flatnonzero((self.data.y_train >= lo) & (self.data.y_train < hi))
        mem_idx = np.concatenate([np.asarray(v) for v in mem_before.values()])
        self.assertEqual(sorted(pool1.tolist()), sorted(new.tolist() + mem_idx.tolist()))
        self.assertLen(mem_idx, 8)
        # The memory of step 1 was herded with the final (aligned) model.
        state, _, _ = self._final(self.full_dir)
        predict = evaluate.make_predict(self.data.mean, self.data.std)
        want = evaluate.predict_all(predict, state, self.data.x_train[np.arange(4)])[1]
        np.testing.assert_allclose(self.memory_feats, want, rtol=1e-5, atol=1e-6)

    def test_results_carry_nme_pycil_and_pruning_figures(self):
        r = self.full
        for k in ("nme_top1_curve", "nme_top5_curve", "pycil_forgetting", "pycil_grouped"):
            self.assertLen(r[k], 2)
        self.assertEqual(r["pycil_grouped"][0]["old"], 0.0)
        p = r["params"][-1]
        for k in ("kept_channels", "backbone_params_before", "backbone_params_after", "flops"):
            self.assertIn(k, p)
        self.assertLessEqual(p["backbone_params_after"], p["backbone_params_before"])

    def test_balanced_finetune_changes_only_the_classifier(self):
        state, mem, _ = self._final(self.full_dir)
        mesh = train.make_mesh()
        x = train.replicate(jnp.asarray(self.data.x_train), mesh)
        y = train.replicate(jnp.asarray(self.data.y_train), mesh)
        pool = np.arange(len(self.data.y_train))
        out = bias_correction.balanced_finetune(
            state,
            jax.random.key(3),
            x,
            y,
            pool,
            mean=self.data.mean,
            std=self.data.std,
            rng=np.random.default_rng(0),
            epochs=1,
            batch_size=8,
        )
        a, b = _leaves(state), _leaves(out)
        changed = sorted(k for k in a if not np.array_equal(a[k], b[k]))
        self.assertTrue(changed)
        self.assertTrue(all(k.startswith(".fc") for k in changed), changed)


class ScheduleAndAugmentTest(chex.TestCase):
    def test_lr_schedule_equals_pycil_milestones(self):
        # PyCIL: MultiStepLR(milestones=[60, 120, 170], gamma=0.1), stepped once per epoch.
        spe = 2
        tx = train.make_optimizer(
            lr=0.1, milestones=[60, 120, 170], steps_per_epoch=spe, weight_decay=0.0, momentum=0.0
        )
        p = jnp.zeros(())
        st = tx.init(p)
        lrs = []
        for _ in range(200 * spe):
            u, st = tx.update(jnp.ones(()), st, p)
            lrs.append(-float(u))
        want = [0.1 * 0.1 ** sum(e >= m for m in (60, 120, 170)) for e in range(200)]
        np.testing.assert_allclose(lrs[::spe], want, rtol=1e-6)
        np.testing.assert_allclose(lrs[1::spe], want, rtol=1e-6)
        cfg = PRESETS["b0_10"]
        self.assertEqual(config.step_schedule(cfg, 0)["milestones"], [60, 120, 170])
        self.assertEqual(config.step_schedule(cfg, 1)["milestones"], [80, 120, 150])

    def test_augmentation_statistics(self):
        n, pad = 4000, 4
        key = jax.random.key(0)
        mean, std = (0.0,), (1.0,)
        white = jnp.full((n, 8, 8, 1), 255, jnp.uint8)
        crop = np.asarray(augment.augment(key, white, mean, std, flip=False, brightness=0.0))
        zero_rows = crop[..., 0].max(axis=2) == 0  # [n, 8]
        top = np.argmin(zero_rows, axis=1)  # leading zero rows
        bottom = np.argmin(zero_rows[:, ::-1], axis=1)
        dy = bottom - top  # crop offset - pad, in [-4, 4]
        counts = np.bincount(dy + pad, minlength=2 * pad + 1)
        self.assertEqual(len(counts), 2 * pad + 1)
        np.testing.assert_allclose(counts / n, 1 / 9, atol=0.025)  # uniform offsets
        half = np.zeros((n, 8, 8, 1), np.uint8)
        half[:, :, 4:] = 255
        fl = np.asarray(augment.augment(key, jnp.asarray(half), mean, std, pad=0, brightness=0.0))
        rate = np.mean(fl[:, 0, 0, 0] > 0.5)
        self.assertBetween(rate, 0.47, 0.53)
        grey = jnp.full((n, 2, 2, 1), 100, jnp.uint8)
        b = 63 / 255
        br = np.asarray(augment.augment(key, grey, mean, std, pad=0, flip=False, brightness=b))
        factor = br[:, 0, 0, 0] / (100 / 255)
        self.assertGreaterEqual(factor.min(), 1 - b - 1e-6)
        self.assertLessEqual(factor.max(), 1 + b + 1e-6)
        self.assertLess(factor.min(), 1 - 0.95 * b)
        self.assertGreater(factor.max(), 1 + 0.95 * b)
        self.assertAlmostEqual(float(factor.mean()), 1.0, delta=0.01)


if __name__ == "__main__":
    absltest.main()
