"""Proximal operators on hand-computed cases and their invariants."""

import chex
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from den_jax.den import prox_group_lasso_columns, prox_l1, soft_threshold


class ProxTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_soft_threshold_hand_computed(self):
        x = jnp.asarray([-2.0, -0.5, -0.1, 0.0, 0.1, 0.3, 1.0])
        out = self.variant(soft_threshold)(x, 0.3)
        np.testing.assert_allclose(out, [-1.7, -0.2, 0.0, 0.0, 0.0, 0.0, 0.7], atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_prox_l1_tree_and_mask(self):
        tree = {"w": jnp.asarray([[0.5, -0.05], [0.2, -1.0]]), "b": jnp.asarray([0.05, -0.05])}
        out = self.variant(prox_l1)(tree, 0.1)
        np.testing.assert_allclose(out["w"], [[0.4, 0.0], [0.1, -0.9]], atol=1e-7)
        np.testing.assert_allclose(out["b"], [0.0, 0.0])
        mask = {"w": jnp.asarray([[1.0, 0.0], [0.0, 1.0]]), "b": None}
        out = self.variant(lambda t, th: prox_l1(t, th, mask=mask))(tree, 0.1)
        np.testing.assert_allclose(out["w"], [[0.4, -0.05], [0.2, -0.9]], atol=1e-7)
        np.testing.assert_array_equal(out["b"], tree["b"])

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("all", None), ("some", [1.0, 0.0, 1.0]))
    def test_group_lasso_columns_hand_computed(self, columns):
        # columns: norms 5 (3-4), 0.5, 1.
        w = jnp.asarray([[3.0, 0.3, 0.0], [4.0, 0.4, 1.0]])
        cols = None if columns is None else jnp.asarray(columns)
        out = self.variant(prox_group_lasso_columns)(w, 1.0, cols)
        # col 0: scale 1 - 1/5 = 0.8; col 1: norm 0.5 <= 1 -> 0; col 2: norm 1 <= 1 -> 0.
        expected = np.asarray([[2.4, 0.0, 0.0], [3.2, 0.0, 0.0]])
        if columns is not None:
            expected[:, 1] = [0.3, 0.4]  # column 1 is not a group: unchanged
        np.testing.assert_allclose(out, expected, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float32, (4, 3), elements=st.floats(-3, 3, width=32)),
    st.floats(0, 2, width=32),
)
def test_group_lasso_shrinks_norm_by_threshold(w, t):
    out = np.asarray(prox_group_lasso_columns(jnp.asarray(w), t))
    norms_in, norms_out = np.linalg.norm(w, axis=0), np.linalg.norm(out, axis=0)
    np.testing.assert_allclose(norms_out, np.maximum(norms_in - t, 0.0), atol=1e-4)
    # Directions are kept for surviving columns.
    for j in np.flatnonzero(norms_out > 1e-3):
        np.testing.assert_allclose(out[:, j] / norms_out[j], w[:, j] / norms_in[j], atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float32, (7,), elements=st.floats(-3, 3, width=32)),
    st.floats(0, 2, width=32),
)
def test_soft_threshold_is_prox_of_l1(x, t):
    out = np.asarray(soft_threshold(jnp.asarray(x), t))
    # The prox minimises 0.5 (z - x)^2 + t |z|: check optimality against perturbations.
    obj = lambda z: 0.5 * (z - x) ** 2 + t * np.abs(z)
    for eps in (-1e-2, 1e-2):
        assert np.all(obj(out) <= obj(out + eps) + 1e-5)
    assert np.all(np.abs(out) <= np.abs(x) + 1e-7)
