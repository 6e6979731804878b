"""DER speed paths: scanned epoch, stacked old backbones, bfloat16 compute, donation, traces.

Every path is checked against the plain computation it replaces (docs/der.md, "Speed
paths"). Tiny shapes (ResNet-32 at width 4 on 8x8 images) keep compile times short.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from den_jax.der import model, pruning, resnet, train

BW, IMG = 4, 8
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
N, BATCH = 40, 16  # images on the device; an epoch of 40 is 16 + 16 + a partial 8


def _data(n, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def _state(prune: bool, step: int = 1) -> model.DERState:
    """A DER state of 6 classes: step 0 (2 classes) or step 1 (one frozen backbone, 2 + 2)."""
    s = model.init_der_state(
        jax.random.key(0),
        base_width=BW,
        in_channels=3,
        image_size=IMG,
        num_first=2,
        num_total=6,
        prune=prune,
    )
    return model.expand(s, jax.random.key(1), 2) if step else s


def _random_backbone(seed: int) -> dict:
    """A backbone with random weights and random, non-trivial BN statistics."""
    rng = np.random.default_rng(seed)
    v = resnet.init_backbone(jax.random.key(seed), BW, 3, IMG)
    stats = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32), v["batch_stats"]
    )
    return {"params": v["params"], "batch_stats": stats}


def _loop_old_features(state: model.DERState, x: jax.Array) -> jax.Array:
    """Reference: one ResNet apply per frozen backbone, in order."""
    return jnp.concatenate(
        [
            resnet.ResNet32(BW, widths).apply(v, x, train=False)
            for v, widths in zip(state.old, state.old_inner_widths)
        ],
        axis=-1,
    )


@functools.cache
def _train_fns(prune: bool, donate: bool, step: int):
    """Optimizer, step and epoch functions, built once per process (compiles are shared).

    The step traces once (a partial last batch is padded to the full shape), the epoch
    once.
    """
    tx = train.make_optimizer(lr=0.01, milestones=[1], steps_per_epoch=3, weight_decay=5e-4)
    kw = dict(aux_weight=float(step > 0), mean=MEAN, std=STD, prune_lambda=0.5, donate=donate)
    step_fn = train.make_train_step(tx, **kw, wrap=lambda f: chex.assert_max_traces(f, n=1))
    epoch_fn = train.make_train_epoch(tx, **kw, wrap=lambda f: chex.assert_max_traces(f, n=1))
    return tx, step_fn, epoch_fn


def _assert_trees_close(got, want, rtol=1e-4):
    """Leaf by leaf: max |got - want| <= rtol * max |want| (float reduction order)."""
    chex.assert_trees_all_equal_structs(got, want)
    flat = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(flat, jax.tree.leaves(got)):
        w, g = np.asarray(w), np.asarray(g)
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        np.testing.assert_allclose(
            g, w, rtol=0, atol=rtol * max(scale, 1e-6), err_msg=jax.tree_util.keystr(path)
        )


def _fingerprint(state: model.DERState, opt_state) -> dict:
    """What training changes: trainable params, new-backbone BN stats, optimizer state."""
    return {
        "params": model.trainable(state),
        "batch_stats": state.new["batch_stats"],
        "opt": opt_state,
        "old": state.old,
    }


def _no_step(*args):
    raise AssertionError("the epoch function must not run on refused batches")


class ScannedEpochTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        chex.clear_trace_counter()

    @parameterized.named_parameters(
        # Step 1 (a frozen backbone, aux loss), 32 images: batches 16 + 16, all in the scan.
        ("plain", False, False, 1, 32),
        # Step 0 with channel masks (s annealed), 40 images: 16 + 16 + 8 (padded to 16 with
        # -1 in both paths; batch index 2 for its key and s). State and optimizer state
        # are donated in both paths.
        ("pruned_partial_donated", True, True, 0, 40),
    )
    def test_scanned_epoch_equals_step_loop(self, prune, donate, step, n):
        """Two epochs: scanned epoch == step loop (params, BN stats, optimizer, metrics).

        The step and epoch functions are wrapped in ``chex.assert_max_traces``: the epoch
        traces once over both epochs, the step once (the partial batch is padded).
        """
        x, y = _data(N, 2 if step == 0 else 4)
        tx, step_fn, epoch_fn = _train_fns(prune, donate, step)
        mesh = train.make_mesh()
        # A small s_max: at s * e > ~17 sigma(s e) saturates in float32 and the HAT gradient
        # compensation divides ~0 by eps, which amplifies rounding differences (s_max = 50
        # here gives 9% differences in the momentum of a BN bias after 6 steps).
        s_max = 5.0 if prune else None
        state = _state(prune, step)
        init = (state, tx.init(model.trainable(state)))
        ref = jax.tree.map(jnp.copy, init)  # donation deletes the inputs: separate copies
        got = jax.tree.map(jnp.copy, init)
        rng = np.random.default_rng(0)
        for e in range(2):
            batches = train.epoch_batches(rng, n, BATCH)
            self.assertEqual([len(b) for b in batches], [16, 16] + [8] * (n == 40))
            key = jax.random.fold_in(jax.random.key(3), e)
            before = got
            *ref, m_ref = train.run_epoch(step_fn, *ref, x, y, batches, key, mesh, s_max=s_max)
            *got, m_got = train.run_epoch_scanned(
                epoch_fn, *got, x, y, batches, key, mesh, s_max=s_max
            )
            # Donated inputs are consumed (JAX implements donation on CPU too).
            self.assertEqual(before[0].new["params"]["conv0"]["kernel"].is_deleted(), donate)
            self.assertEqual(m_got.keys(), m_ref.keys())
            self.assertEqual("sparsity" in m_got, prune)
            for k in m_ref:
                np.testing.assert_allclose(m_got[k], m_ref[k], rtol=1e-5, err_msg=k)
            # Not bit for bit: XLA fuses the scanned body differently (float32 rounding);
            # measured <= 3e-5 of a leaf's scale after 6 steps.
            _assert_trees_close(_fingerprint(*got), _fingerprint(*ref), rtol=1e-4)
        self.assertEqual(int(optax.tree_utils.tree_get(got[1], "count")), len(batches) * 2)
        # Training happened; a frozen backbone is untouched, bit for bit.
        moved = got[0].new["params"]["conv0"]["kernel"] - init[0].new["params"]["conv0"]["kernel"]
        self.assertGreater(float(jnp.abs(moved).max()), 0.0)
        chex.assert_trees_all_equal(got[0].old, init[0].old)

    def test_unequal_batches_refused(self):
        batches = [np.arange(8, dtype=np.int32), np.arange(16, dtype=np.int32)]
        with self.assertRaisesRegex(ValueError, "one size but a smaller last one"):
            train.run_epoch_scanned(
                _no_step, None, None, None, None, batches, jax.random.key(0), train.make_mesh()
            )


class PaddedBatchTest(chex.TestCase):
    @parameterized.named_parameters(("plain", False), ("pruned", True))
    def test_padded_batch_equals_unpadded(self, prune):
        """8 real rows padded to 16 with -1 == the 8-row batch: params, BN stats, metrics.

        Augmentation is off (its draws depend on the batch shape); the padding rows must
        stay out of the BatchNorm statistics and the loss.
        """
        x, y = _data(N, 4)
        tx = train.make_optimizer(lr=0.05, milestones=[], steps_per_epoch=1, weight_decay=5e-4)
        kw = dict(aux_weight=1.0, mean=MEAN, std=STD, prune_lambda=0.5)
        step = train.make_train_step(tx, **kw, aug=dict(pad=0, flip=False, brightness=0.0))
        state = _state(prune, step=1)
        real = np.arange(8, dtype=np.int32) * 3
        padded, sizes = train.pad_batches([np.arange(16, dtype=np.int32), real])
        self.assertEqual(sizes, [16, 8])
        np.testing.assert_array_equal(padded[1], np.concatenate([real, -np.ones(8, np.int32)]))
        outs = []
        for idx in (real, padded[1]):
            st, opt = jax.tree.map(jnp.copy, (state, tx.init(model.trainable(state))))
            st, opt, m = step(st, opt, x, y, jnp.asarray(idx), jax.random.key(1), 3.0)
            outs.append((_fingerprint(st, opt), jax.device_get(m)))
        for k in outs[0][1]:
            np.testing.assert_allclose(outs[1][1][k], outs[0][1][k], rtol=1e-5, err_msg=k)
        # Float reduction order only: 1e-5 of a leaf's scale was exceeded (1.03x) by one Adam
        # trace entry of 2,304 on an AMD EPYC CPU; a masking error moves leaves by O(scale).
        _assert_trees_close(outs[1][0], outs[0][0], rtol=3e-5)


class StackedOldFeaturesTest(chex.TestCase):
    @parameterized.named_parameters(
        ("equal_widths", False),  # one group of 3, vmapped
        ("mixed_widths", True),  # backbones 0 and 2 vmapped, the pruned 1 on its own
    )
    def test_vmapped_equals_loop(self, mixed):
        """Old features of stacked + vmapped groups == one apply per backbone, in order."""
        full = resnet.full_inner_widths(BW)
        rng = np.random.default_rng(0)
        e = tuple(jnp.asarray(rng.normal(size=w), jnp.float32) for w in full)
        olds, widths = [], []
        for i in range(3):
            v, w = _random_backbone(10 + i), full
            if mixed and i == 1:
                v, w = pruning.materialise(v, e)
            olds.append(v)
            widths.append(tuple(w))
        self.assertEqual(len(set(widths)), 1 + mixed)
        state = _state(False).replace(old=tuple(olds), old_inner_widths=tuple(widths))
        x = jax.random.normal(jax.random.key(5), (6, IMG, IMG, 3))
        want = _loop_old_features(state, x)
        for mode in model.OLD_BACKBONES:
            got = jax.jit(functools.partial(model.old_features, mode=mode))(state, x)
            chex.assert_shape(got, (6, 3 * 4 * BW))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=mode)

    def test_default_is_loop_and_bad_mode_refused(self):
        """The default runs one apply per backbone (no vmap in the jaxpr); typos raise."""
        olds = tuple(_random_backbone(20 + i) for i in range(2))
        widths = (tuple(resnet.full_inner_widths(BW)),) * 2
        state = _state(False).replace(old=olds, old_inner_widths=widths)
        x = jnp.zeros((2, IMG, IMG, 3))

        def batched_convs(mode):
            jaxpr = str(jax.make_jaxpr(functools.partial(model.old_features, mode=mode))(state, x))
            return jaxpr.count("feature_group_count=2")

        self.assertEqual(batched_convs("loop"), 0)
        self.assertGreater(batched_convs("vmap"), 0)
        self.assertEqual(
            str(jax.make_jaxpr(model.old_features)(state, x)),
            str(jax.make_jaxpr(functools.partial(model.old_features, mode="loop"))(state, x)),
        )
        with self.assertRaises(ValueError):
            model.old_features(state, x, mode="grouped")


class BFloat16Test(chex.TestCase):
    def setUp(self):
        super().setUp()
        chex.clear_trace_counter()

    def test_bfloat16_compute_close_and_float32_state(self):
        """One bfloat16 step against the float32 step (the plain scan test's, compiled once)."""
        state = _state(False)
        x, y = _data(N, 4)
        idx = jnp.arange(BATCH, dtype=jnp.int32)
        key = jax.random.key(5)
        tx, step32, _ = _train_fns(False, False, 1)
        step16 = train.make_train_step(
            tx, aux_weight=1.0, mean=MEAN, std=STD, prune_lambda=0.5, compute_dtype=jnp.bfloat16
        )
        opt = tx.init(model.trainable(state))
        args = (x, y, idx, key, jnp.float32(1.0))
        new16, opt16, m16 = step16(state, opt, *args)
        new32, opt32, m32 = step32(state, opt, *args)
        # The convolutions really run in bfloat16.
        hlo = step16.lower(state, opt, *args).as_text()
        self.assertRegex(hlo, r"stablehlo.convolution.*bf16")
        # Loss finite; parameters, BN statistics and optimizer state stay float32.
        self.assertTrue(np.isfinite(float(m16["loss"])))
        chex.assert_trees_all_equal_dtypes(
            (model.trainable(new16), new16.new["batch_stats"], opt16),
            (model.trainable(state), state.new["batch_stats"], opt),
        )
        chex.assert_tree_all_finite((model.trainable(new16), new16.new["batch_stats"], opt16))
        # Close to float32 (bfloat16 keeps ~3 significant digits): the loss, the new running
        # BN statistics (measured 0.1% apart in norm), and the direction of the SGD update (through
        # 31 bf16 layers on random data; measured cosine 0.996 overall, 0.95 backbone).
        np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=0.01)
        b16, b32 = _flat(new16.new["batch_stats"]), _flat(new32.new["batch_stats"])
        self.assertLess(np.linalg.norm(b16 - b32) / np.linalg.norm(b32), 0.01)
        p0, p16, p32 = (model.trainable(s) for s in (state, new16, new32))
        self.assertGreater(_cosine(_flat(p16) - _flat(p0), _flat(p32) - _flat(p0)), 0.98)
        d16, d32 = (_flat(p["backbone"]) - _flat(p0["backbone"]) for p in (p16, p32))
        self.assertGreater(_cosine(d16, d32), 0.85)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class SpeedFlagsTest(chex.TestCase):
    def test_flags_recorded_and_resume_compatibility(self):
        from den_jax.der import config
        from experiments import cifar100_der as cli

        cfg, _ = cli.parse_args(["--preset", "smoke", "--out", "/tmp/unused"])
        # auto: the step loop on the CPU (scanned conv gradients are slow on XLA:CPU).
        self.assertEqual((cfg.compute_dtype, cfg.epoch_loop), ("float32", "step"))
        self.assertEqual(
            (config.resolve_epoch_loop("gpu"), config.resolve_epoch_loop("tpu")), ("scan", "scan")
        )
        cfg, _ = cli.parse_args(["--preset", "smoke", "--out", "/tmp/x", "--epoch-loop", "scan"])
        self.assertEqual(cfg.epoch_loop, "scan")
        cfg, _ = cli.parse_args(
            ["--preset", "smoke", "--out", "/tmp/x", "--compute-dtype", "bfloat16"]
            + ["--epoch-loop", "step"]
        )
        self.assertEqual((cfg.compute_dtype, cfg.epoch_loop), ("bfloat16", "step"))
        saved = cfg.to_dict()
        # A checkpoint written before the speed flags existed: float32, step loop.
        legacy = {k: v for k, v in saved.items() if k not in ("compute_dtype", "epoch_loop")}
        config.check_resume_config(legacy, cfg.replace(compute_dtype="float32"))
        config.check_resume_config(legacy, cfg.replace(compute_dtype="float32", epoch_loop="scan"))
        with self.assertRaisesRegex(ValueError, "compute_dtype"):
            config.check_resume_config(legacy, cfg)  # bfloat16 would change the numbers


if __name__ == "__main__":
    absltest.main()


class FeatureExtractionTest(chex.TestCase):
    def test_extract_equals_predict_all_one_trace(self):
        """Device-resident extraction == host predict_all; one compile for all batch calls."""
        from den_jax.der import evaluate, features

        state = _state(False)
        x, _ = _data(N, 4)
        want_l, want_f = evaluate.predict_all(
            evaluate.make_predict(MEAN, STD), state, np.asarray(x), batch_size=16
        )
        fn = evaluate.make_predict(MEAN, STD)
        idx = np.arange(N, dtype=np.int32)[::-1]
        got_l, got_f = features.extract(fn, state, x, idx, batch_size=16)  # 16 + 16 + 8 padded
        self.assertEqual(fn._cache_size(), 1)
        np.testing.assert_allclose(got_f, want_f[::-1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_l, want_l[::-1], rtol=1e-5, atol=1e-4)


class DeviceMetricsTest(chex.TestCase):
    def test_run_epoch_reads_metrics_once(self):
        """run_epoch hands on_batch device arrays (no per-batch float()) and averages them."""
        tx, step_fn, _ = _train_fns(False, False, 0)
        state = _state(False, step=0)
        opt_state = tx.init(model.trainable(state))
        x, y = _data(N, 2)
        batches = train.epoch_batches(np.random.default_rng(0), N, BATCH)
        seen = []
        _, _, m = train.run_epoch(
            step_fn,
            state,
            opt_state,
            x,
            y,
            batches,
            jax.random.key(3),
            train.make_mesh(),
            on_batch=seen.append,
        )
        self.assertEqual(len(seen), 3)
        self.assertTrue(all(isinstance(v, jax.Array) for d in seen for v in d.values()))
        want = sum(float(d["loss"]) * len(b) for d, b in zip(seen, batches)) / N
        self.assertAlmostEqual(m["loss"], want, places=5)
