"""DER unit tests: ResNet-32, state/expansion/loss, memory, bias correction, pruning."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from den_jax import metrics
from den_jax.data import splits
from den_jax.der import bias_correction, evaluate, memory, model, pruning, resnet, train

BW, IMG = 4, 8  # tiny ResNet-32 (4/8/16 channels) on 8x8 images
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _data(n, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def _train(state, x, y, aux_weight, steps=2):
    tx = train.make_optimizer(lr=0.1, milestones=[], steps_per_epoch=steps, weight_decay=5e-4)
    opt = tx.init(model.trainable(state))
    fn = train.make_train_step(tx, aux_weight=aux_weight, mean=MEAN, std=STD, prune_lambda=0.5)
    batches = train.epoch_batches(np.random.default_rng(0), x.shape[0], x.shape[0] // steps)
    state, _, metrics = train.run_epoch(
        fn, state, opt, x, y, batches, jax.random.key(1), train.make_mesh(), s_max=400.0
    )
    return state, metrics


class ResNetTest(chex.TestCase):
    def test_param_count_resnet32(self):
        shapes = jax.eval_shape(lambda: resnet.init_backbone(jax.random.key(0), 16, 3))
        self.assertEqual(resnet.count_backbone_params(shapes["params"]), 463_504)
        # BatchNorm is torch's: momentum 0.1 (flax 0.9), eps 1e-5.
        bn = resnet._bn(True, "bn")
        self.assertEqual((bn.momentum, bn.epsilon), (0.9, 1e-5))

    @chex.variants(with_jit=True, without_jit=True)
    def test_feature_shape(self):
        v = resnet.init_backbone(jax.random.key(0), BW, 3, IMG)
        x = jnp.ones((2, IMG, IMG, 3))
        f = self.variant(lambda v, x: resnet.ResNet32(BW).apply(v, x, train=False))(v, x)
        chex.assert_shape(f, (2, 4 * BW))
        chex.assert_tree_all_finite(f)


class DERModelTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.s0 = model.init_der_state(
            jax.random.key(0),
            base_width=BW,
            in_channels=3,
            image_size=IMG,
            num_first=2,
            num_total=6,
        )

    def test_aux_labels(self):
        y = jnp.array([0, 1, 2, 3, 4, 5])
        np.testing.assert_array_equal(model.aux_labels(y, 4), [0, 0, 0, 0, 1, 2])
        np.testing.assert_array_equal(model.aux_labels(y, 0), [1, 2, 3, 4, 5, 6])

    def test_classifier_inheritance_and_expand(self):
        s1 = model.expand(self.s0, jax.random.key(3), 2)
        f = 4 * BW
        chex.assert_shape(s1.fc["kernel"], (2 * f, 6))
        chex.assert_shape(s1.aux["kernel"], (f, 3))
        # Old block inherited exactly; new feature rows fresh, not zero.
        np.testing.assert_array_equal(s1.fc["kernel"][:f, :2], self.s0.fc["kernel"][:, :2])
        np.testing.assert_array_equal(s1.fc["bias"][:2], self.s0.fc["bias"][:2])
        self.assertGreater(float(jnp.abs(s1.fc["kernel"][f:, :2]).sum()), 0.0)
        self.assertFalse(np.array_equal(s1.fc["kernel"][:f, 2:4], self.s0.fc["kernel"][:, 2:4]))
        # New backbone initialised from the old one (BN statistics included).
        chex.assert_trees_all_equal(s1.new, self.s0.new)
        chex.assert_trees_all_equal(s1.old[0], self.s0.new)
        self.assertEqual((s1.num_old, s1.num_seen, s1.step), (2, 4, 1))
        with self.assertRaises(ValueError):
            model.expand(s1, jax.random.key(0), 5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_masks_unseen_and_loss(self):
        s1 = model.expand(self.s0, jax.random.key(3), 2)
        x = jax.random.normal(jax.random.key(0), (3, IMG, IMG, 3))
        fwd = self.variant(lambda s, x: model.forward(s, x, train=False))
        logits, aux, u, _ = fwd(s1, x)
        chex.assert_shape((logits, aux, u), ((3, 6), (3, 3), (3, 8 * BW)))
        np.testing.assert_array_equal(logits[:, 4:], model.NEG)
        # The old part of u is the old backbone's feature.
        old = resnet.ResNet32(BW).apply(s1.old[0], x, train=False)
        np.testing.assert_allclose(u[:, : 4 * BW], old, rtol=1e-5, atol=1e-6)
        y = jnp.array([0, 2, 3])
        loss, parts = model.der_loss(logits, aux, y, 2, 1.0)
        np.testing.assert_allclose(loss, parts["ce"] + parts["aux"], rtol=1e-6)

    def test_old_backbones_bit_identical_after_training(self):
        x, y = _data(32, 2)
        s0, _ = _train(self.s0, x, y, 0.0)
        s1 = model.expand(s0, jax.random.key(3), 2)
        frozen = jax.device_get(s1.old)
        x2, y2 = _data(32, 4, seed=1)
        s1b, m = _train(s1, x2, y2, 1.0)
        # Old backbone: params and BatchNorm statistics untouched, bit for bit.
        chex.assert_trees_all_equal(jax.device_get(s1b.old), frozen)
        # ... while the new backbone and its statistics did move.
        self.assertFalse(
            np.array_equal(
                s1b.new["batch_stats"]["bn0"]["mean"], s1.new["batch_stats"]["bn0"]["mean"]
            )
        )
        self.assertFalse(
            np.array_equal(
                s1b.new["params"]["conv0"]["kernel"], s1.new["params"]["conv0"]["kernel"]
            )
        )
        self.assertTrue(np.isfinite(m["loss"]))
        counts = model.param_counts(s1b)
        self.assertEqual(counts["all"] - counts["trainable"], counts["backbones"][0])


class MemoryAndBiasTest(chex.TestCase):
    def test_herding_hand_built(self):
        # Unit vectors at angles 0, 90, 180, 45 deg and a copy of the mean's direction.
        f = np.array([[1, 0], [0, 1], [-1, 0], [1, 1], [0.2, 0.8]], np.float64)
        # Normalised mean mu ~ (0.24, 0.52): the closest single point is (0.2, 0.8)/|.| (idx 4);
        # worked out by hand: k=1 picks 4; k=2 picks 3 ((f4+f3)/2 closest to mu); k=3 picks 2.
        order = memory.herding(f, 3)
        np.testing.assert_array_equal(order, [4, 3, 2])
        self.assertEqual(len(set(memory.herding(f, 5).tolist())), 5)  # no repeats

    def test_memory_quota_shrink_update(self):
        self.assertEqual(memory.per_class_quota(2000, 30), 66)
        self.assertEqual(memory.per_class_quota(2000, 30, fixed_per_class=20), 20)
        mem = {0: np.array([5, 3, 9, 1]), 1: np.array([7, 2, 8, 6])}
        np.testing.assert_array_equal(memory.shrink(mem, 2)[0], [5, 3])
        feats = {i: np.eye(4)[i % 4] + 1.0 for i in range(20)}
        out = memory.update_memory(
            mem, {2: np.arange(10, 14)}, lambda idx: np.stack([feats[i] for i in idx]), 2
        )
        self.assertEqual(sorted(out), [0, 1, 2])
        self.assertEqual(len(out[2]), 2)
        self.assertEqual(memory.from_json(memory.to_json(out)).keys(), out.keys())

    def test_weight_align_hand_computed(self):
        s = model.init_der_state(
            jax.random.key(0),
            base_width=1,
            in_channels=3,
            image_size=IMG,
            num_first=2,
            num_total=4,
        )
        kernel = jnp.zeros((4, 4)).at[:, 0].set(jnp.array([3.0, 4, 0, 0]))  # |w0| = 5
        kernel = kernel.at[:, 1].set(jnp.array([0.0, 0, 6, 8]))  # |w1| = 10
        kernel = kernel.at[:, 2].set(jnp.array([1.0, 0, 0, 0]))  # |w2| = 1
        kernel = kernel.at[:, 3].set(jnp.array([0.0, 2, 0, 0]))  # unseen column
        s = s.replace(
            fc={"kernel": kernel, "bias": jnp.array([0.0, 0, 0.5, 0])}, num_old=2, num_seen=3
        )
        s2, gamma = bias_correction.weight_align(s)
        self.assertAlmostEqual(gamma, 7.5)  # mean(5, 10) / mean(1)
        np.testing.assert_allclose(s2.fc["kernel"][:, 2], [7.5, 0, 0, 0])
        np.testing.assert_array_equal(s2.fc["kernel"][:, [0, 1, 3]], kernel[:, [0, 1, 3]])
        np.testing.assert_array_equal(s2.fc["bias"], s.fc["bias"])  # bias untouched

    def test_balanced_subset(self):
        labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
        sub = bias_correction.balanced_subset(labels, np.arange(18), np.random.default_rng(0))
        np.testing.assert_array_equal(np.bincount(labels[sub]), [3, 3, 3])


class SplitsAndMetricsTest(chex.TestCase):
    def test_default_class_order(self):
        order = splits.class_order(100)
        np.testing.assert_array_equal(order[:10], [68, 56, 78, 8, 23, 84, 90, 65, 74, 76])
        self.assertEqual(splits.step_sizes(100, 50, 10), [50, 10, 10, 10, 10, 10])
        y = splits.remap_labels(np.array([68, 56, 76]), order)
        np.testing.assert_array_equal(y, [0, 1, 9])
        with self.assertRaises(ValueError):
            splits.step_sizes(10, 0, 2)

    def test_metrics(self):
        r = [[90.0], [80.0, 70.0], [60.0, 75.0, 50.0]]
        sq = evaluate.square_matrix(r)
        self.assertEqual(sq[0], [90.0, None, None])
        self.assertAlmostEqual(metrics.forgetting(sq), ((90 - 60) + (70 - 75)) / 2)
        self.assertEqual(metrics.forgetting(evaluate.square_matrix(r[:1])), 0.0)
        logits = np.array([[3.0, 2, 1], [1, 3, 2]])
        self.assertEqual(evaluate.topk_accuracy(logits, np.array([1, 0]), 1), 0.0)
        self.assertEqual(evaluate.topk_accuracy(logits, np.array([1, 2]), 2), 100.0)
        g = evaluate.grouped_accuracy(np.array([0, 1, 1, 3]), np.array([0, 1, 2, 3]), 2, group=2)
        self.assertEqual(g, {"00-01": 100.0, "02-03": 50.0, "old": 100.0, "new": 50.0})


class PruningTest(chex.TestCase):
    @parameterized.parameters(0, 1)
    def test_materialised_equals_masked(self, seed):
        rng = np.random.default_rng(seed)
        v = resnet.init_backbone(jax.random.key(seed), BW, 3, IMG)
        # Non-trivial BN statistics so dropped channels really matter.
        v["batch_stats"] = jax.tree.map(
            lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32), v["batch_stats"]
        )
        e = tuple(
            jnp.asarray(rng.normal(size=w), jnp.float32) for w in resnet.full_inner_widths(BW)
        )
        e = (jnp.full_like(e[0], -1.0),) + e[1:]  # one block fully pruned
        small, widths = pruning.materialise(v, e)
        self.assertEqual(widths[0], 1)
        self.assertLess(
            resnet.count_backbone_params(small["params"]), resnet.count_backbone_params(v["params"])
        )
        x = jax.random.normal(jax.random.key(5), (4, IMG, IMG, 3))
        masked = resnet.ResNet32(BW).apply(v, x, masks=pruning.binary_masks(e))
        pruned = resnet.ResNet32(BW, widths).apply(small, x)
        np.testing.assert_allclose(pruned, masked, rtol=1e-5, atol=1e-5)

    def test_sparsity_and_anneal(self):
        ones = tuple(jnp.ones(w) for w in resnet.full_inner_widths(BW))
        self.assertAlmostEqual(float(pruning.sparsity_loss(ones, BW)), 1.0, places=6)
        half = tuple(jnp.full(w, 0.5) for w in resnet.full_inner_widths(BW))
        self.assertAlmostEqual(float(pruning.sparsity_loss(half, BW)), 0.5, places=6)
        self.assertAlmostEqual(pruning.anneal_s(0, 10, 400.0), 1 / 400)
        self.assertAlmostEqual(pruning.anneal_s(9, 10, 400.0), 400.0)
        # Compensation lives in the mask's VJP (sigma'(e) dL/dm); compensate_grads is the
        # identity. At s = 1 the compensated gradient is the plain one.
        g = pruning.compensate_grads((jnp.ones(3),), (jnp.array([0.0, 1.0, -2.0]),), 1.0)
        np.testing.assert_allclose(g[0], 1.0, rtol=1e-5)
        e = jnp.array([0.0, 1.0, -2.0])
        auto = jax.grad(lambda v: jnp.sum(jax.nn.sigmoid(v)))(e)
        comp = jax.grad(lambda v: jnp.sum(pruning.mask(v, 1.0)))(e)
        np.testing.assert_allclose(comp, auto, rtol=1e-6)

    def test_pruned_training_then_expand(self):
        s0 = model.init_der_state(
            jax.random.key(0),
            base_width=BW,
            in_channels=3,
            image_size=IMG,
            num_first=2,
            num_total=4,
            prune=True,
        )
        x, y = _data(32, 2)
        s0, m = _train(s0, x, y, 0.0)
        self.assertIn("sparsity", m)
        small, widths = pruning.materialise(s0.new, s0.mask_e)
        s1 = model.expand(s0, jax.random.key(1), 2, small, widths)
        self.assertEqual(s1.old_inner_widths, (widths,))
        logits, _, _, _ = model.forward(s1, jnp.ones((2, IMG, IMG, 3)), train=False)
        chex.assert_shape(logits, (2, 4))


if __name__ == "__main__":
    absltest.main()
