"""den_jax.losses: one definition of each batch loss, with the official DEN reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from den_jax import losses

LOGITS = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 0.5, -0.3]])
LABELS = jnp.asarray([0, 2])


def test_softmax_ce_integer_labels_and_distributions():
    ref = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS).mean()
    np.testing.assert_allclose(losses.softmax_ce(LOGITS, LABELS), ref, rtol=1e-6)
    np.testing.assert_allclose(losses.softmax_ce(LOGITS, jax.nn.one_hot(LABELS, 3)), ref, rtol=1e-6)


def test_sigmoid_ce_is_the_mean_over_batch_and_classes():
    onehot = jax.nn.one_hot(LABELS, 3)
    per_entry = optax.sigmoid_binary_cross_entropy(LOGITS, onehot)
    value = losses.sigmoid_ce(LOGITS, LABELS)
    np.testing.assert_allclose(value, per_entry.mean(), rtol=1e-6)
    # Not the sum over classes (the reduction the baselines used before).
    assert abs(float(value) - float(per_entry.sum(-1).mean())) > 1e-3
    np.testing.assert_allclose(losses.sigmoid_ce(LOGITS, onehot), value, rtol=1e-6)


def test_regression_losses():
    out = jnp.asarray([[0.0], [3.0]])
    y = jnp.asarray([[1.0], [1.0]])
    np.testing.assert_allclose(losses.mse(out, y), (1.0 + 4.0) / 2)
    np.testing.assert_allclose(losses.huber(out, y), (0.5 + 1.5) / 2)
    np.testing.assert_allclose(losses.huber(out, y, delta=2.0), (0.5 + 2.0) / 2)


@pytest.mark.parametrize("name", ["mse", "huber"])
def test_regression_losses_refuse_broadcasting(name):
    out = jnp.zeros((4, 1))
    with pytest.raises(ValueError, match=r"same shape.*\[B, B\]"):
        losses.get_loss(name)(out[:, 0], jnp.zeros((4, 1)))


def test_classification_losses_check_label_shapes():
    with pytest.raises(ValueError, match="integer labels must have shape"):
        losses.softmax_ce(LOGITS, jnp.asarray([0, 1, 2]))
    with pytest.raises(ValueError, match="targets"):
        losses.sigmoid_ce(LOGITS, jnp.zeros((2, 4)))


def test_get_loss():
    assert losses.get_loss("sigmoid_ce") is losses.sigmoid_ce
    assert set(losses.LOSSES) == {"softmax_ce", "sigmoid_ce", "mse", "huber"}
    with pytest.raises(ValueError, match="unknown loss 'xent'"):
        losses.get_loss("xent")
