"""DER pruning (compensated mask gradient, FLOPs), PyCIL metrics, NME and the notebook preset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from den_jax.der import config, evaluate, pruning, resnet, step


def _sigmoid_prime64(e):
    e = np.asarray(e, np.float64)
    a = np.exp(-np.abs(e))
    return a / (1.0 + a) ** 2


@pytest.mark.parametrize("s", [1.0 / 400, 1.0, 50.0, 400.0])
def test_mask_gradient_equals_float64_reference(s):
    # s * e over [-100, 100] (e within the embeddings' range |e| <= EMB_CLIP);
    # reference g' = sigma'(e) * dL/dm in float64.
    se = np.linspace(-100.0, 100.0, 2001)
    se = se[np.abs(se / s) <= pruning.EMB_CLIP]
    e = (se / s).astype(np.float32)
    w = np.linspace(-2.0, 3.0, e.size).astype(np.float32)  # L = sum(w * m): dL/dm = w
    grad = jax.grad(lambda x: jnp.sum(w * pruning.mask(x, jnp.float32(s))))(jnp.asarray(e))
    ref = _sigmoid_prime64(e.astype(np.float64)) * w.astype(np.float64)
    grad = np.asarray(grad, np.float64)
    nz = ref != 0
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[nz], ref[nz], rtol=1e-5, atol=0)


def test_mask_gradient_bfloat16_and_forward():
    se = np.linspace(-100.0, 100.0, 401)
    s = 400.0
    e = jnp.asarray(se / s, jnp.bfloat16)
    g = jax.grad(lambda x: jnp.sum(pruning.mask(x, s).astype(jnp.float32)))(e)
    assert g.dtype == jnp.bfloat16
    ref = _sigmoid_prime64(np.asarray(e, np.float64))
    np.testing.assert_allclose(np.asarray(g, np.float64), ref, rtol=2**-8)  # one bf16 rounding
    m = pruning.mask(jnp.asarray(se / s, jnp.float32), s)
    np.testing.assert_allclose(np.asarray(m), 1 / (1 + np.exp(-se)), rtol=1e-5, atol=1e-30)


def test_mask_gradient_under_jit_scan_and_compensate_identity():
    e = (jnp.linspace(-0.2, 0.2, 8),)

    def loss(es, s):
        return jnp.sum(pruning.masks_from_embeddings(es, s)[0] ** 2)

    @jax.jit
    def scanned(es, s_values):
        def body(c, s):
            return c, jax.grad(loss)(es, s)[0]

        return jax.lax.scan(body, 0.0, s_values)[1]

    out = scanned(e, jnp.asarray([1.0, 400.0], jnp.float32))
    m = 1 / (1 + np.exp(-400.0 * np.asarray(e[0], np.float64)))
    ref = 2 * m * _sigmoid_prime64(e[0])
    np.testing.assert_allclose(np.asarray(out[1]), ref, rtol=1e-5)
    assert pruning.compensate_grads(e, e, 400.0)[0] is e[0]


def test_backbone_macs():
    assert pruning.backbone_macs(16) == 68_861_952  # research/der.md: 68.86 M MACs
    half = tuple(w // 2 for w in resnet.full_inner_widths(16))
    assert pruning.backbone_macs(16, half) < pruning.backbone_macs(16)
    # 28x28 grey images: 28 -> 14 -> 7 (SAME padding, ceil).
    assert pruning.backbone_macs(8, in_channels=1, image_size=28) > 0


def test_pycil_grouped_accuracy_quirks():
    y = np.array([0, 1, 2, 10, 10])
    p = np.array([0, 1, 0, 10, 3])
    g = evaluate.pycil_grouped_accuracy(p, y, nb_old=0)
    # top label 10 is a multiple of 10: range(0, 10, 10) = [0], group 10-19 is dropped.
    assert set(g) == {"total", "00-09", "old", "new"}
    assert g["total"] == 60.0 and g["00-09"] == 66.67
    assert g["old"] == 0.0  # no old classes at step 0: PyCIL reports 0
    assert g["new"] == 60.0
    g2 = evaluate.pycil_grouped_accuracy(np.array([0, 11, 12]), np.array([0, 11, 13]), nb_old=10)
    assert g2["10-19"] == 50.0 and g2["old"] == 100.0


def test_pycil_forgetting_hand_made():
    rows = [
        {"00-09": 90.0},
        {"00-09": 70.0, "10-19": 80.0},
        {"00-09": 75.0, "10-19": 40.0, "20-29": 60.0},
    ]
    rows = [dict(r, old=0.0, new=0.0, total=0.0) for r in rows]
    # table[g, t]: g0 = 90, 70, 75; g1 = 0, 80, 40. max includes the last step:
    # ((90 - 75) + (80 - 40)) / 2 = 27.5
    assert evaluate.pycil_forgetting(rows) == pytest.approx(27.5)
    assert np.isnan(evaluate.pycil_forgetting(rows[:1]))
    # Ours (Chaudhry, by step; the max excludes the last step) on the same numbers.
    from den_jax import metrics

    r = evaluate.square_matrix([[90.0], [70.0, 80.0], [75.0, 40.0, 60.0]])
    assert metrics.forgetting(r) == pytest.approx(27.5)
    # They differ when the last step is the best: PyCIL gives 0, ours a negative drop.
    up = [dict(old=0, new=0, total=0, **{"00-09": v}) for v in (50.0,)]
    up.append({"00-09": 60.0, "10-19": 10.0})
    assert evaluate.pycil_forgetting(up) == 0.0
    assert metrics.forgetting(evaluate.square_matrix([[50.0], [60.0, 10.0]])) == -10.0


def test_nme_pycil_definition():
    feats = np.array([[2.0, 0.0], [4.0, 0.2], [0.0, 3.0], [0.1, 1.0]])
    labels = np.array([0, 0, 1, 1])
    means = evaluate.class_means(feats, labels, 3)
    np.testing.assert_allclose(np.linalg.norm(means[:2], axis=1), 1.0)
    assert np.all(means[2] == 0)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    m0 = f[:2].mean(0)
    np.testing.assert_allclose(means[0], m0 / np.linalg.norm(m0))
    test = np.array([[10.0, 1.0], [0.5, 5.0], [1.0, 1.05]])
    scores = evaluate.nme_scores(test, means)
    # Scale-free: the same prediction for 10x the feature.
    np.testing.assert_allclose(evaluate.nme_scores(10 * test, means), scores, atol=1e-7)
    assert list(np.argmax(scores, 1)) == [0, 1, 1]
    d = ((test / np.linalg.norm(test, axis=1, keepdims=True))[:, None] - means[None]) ** 2
    np.testing.assert_allclose(-d.sum(-1), scores, atol=1e-12)


def test_notebook_preset_order_and_schedule():
    cfg = config.build_config("notebook", {"dataset": "cifar100"})
    order = step.class_order(cfg)
    assert list(order[:10]) == [43, 92, 14, 57, 89, 20, 34, 69, 21, 3]
    assert (cfg.init_classes, cfg.increment, cfg.num_classes) == (25, 25, 100)
    for t in (0, 1, 3):
        sch = config.step_schedule(cfg, t)
        assert sch["lr"] == 0.1 and sch["milestones"] == [60, 120, 170]
        assert sch["weight_decay"] == 5e-4
        assert sch["epochs"] == (201 if t == 0 else 171)
    assert cfg.memory == 2000
    # PyCIL's integer seed gives another order.
    assert list(step.class_order(config.PRESETS["b0_10"])[:3]) == [68, 56, 78]


def _pruned_step0(prune_lambda: float) -> dict:
    """One pruned DER step on tiny synthetic data; returns the step's parameter report."""
    from den_jax.data import images

    tr, te = images.synthetic_data(num_classes=2, per_class=32, size=8, channels=3, seed=0)
    cfg = config.PRESETS["smoke"].replace(
        num_classes=2, init_classes=2, increment=2, base_width=4, first_epochs=3,
        first_milestones=(), batch_size=16, memory=4, train_per_class=None, prune=True,
        prune_lambda=prune_lambda, epoch_loop="step",
    )  # fmt: skip
    data = step.make_stream(cfg, tr, te, mean=(0.5,) * 3, std=(0.25,) * 3)
    _, _, rep = step.learn_step(None, {}, data, cfg, step.step_key(cfg, 0), step=0)
    return rep["params"]


def test_sparsity_loss_prunes_channels_and_materialises_a_smaller_backbone():
    """The sparsity loss removes channels for real: a strong lambda_s keeps far fewer than 0."""
    weak = _pruned_step0(0.0)  # the task loss alone moves the masks too (mask_grad_scale 400)
    pruned = _pruned_step0(5.0)
    assert sum(pruned["kept_channels"]) < 0.5 * sum(pruned["full_channels"])
    assert sum(pruned["kept_channels"]) < 0.75 * sum(weak["kept_channels"])
    assert pruned["backbone_params_after"] < 0.6 * pruned["backbone_params_before"]
    assert pruned["macs"] < pruned["macs_unpruned"]
    assert pruned["backbones"][-1] == pruned["backbone_params_after"]
