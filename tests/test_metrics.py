"""Metrics on hand-computed accuracy matrices, and AUROC cross-checked with sklearn."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from den_jax import metrics

NAN = float("nan")

# R[i][j]: accuracy on task j after training task i.
R3 = [
    [0.9, NAN, NAN],
    [0.8, 0.95, NAN],
    [0.7, 0.85, 0.99],
]


def test_average_accuracy_hand_computed():
    assert metrics.average_accuracy(R3) == pytest.approx((0.7 + 0.85 + 0.99) / 3)
    assert metrics.average_accuracy(R3, after_task=0) == pytest.approx(0.9)
    assert metrics.average_accuracy(R3, after_task=1) == pytest.approx((0.8 + 0.95) / 2)


def test_forgetting_hand_computed():
    # task 0: max(0.9, 0.8) - 0.7 = 0.2 ; task 1: max(0.95) - 0.85 = 0.1
    assert metrics.forgetting(R3) == pytest.approx(0.15)


def test_forgetting_uses_max_not_diagonal():
    r = [[0.5, NAN, NAN], [0.9, 0.8, NAN], [0.6, 0.8, 0.7]]
    # task 0: max(0.5, 0.9) - 0.6 = 0.3 ; task 1: 0.8 - 0.8 = 0
    assert metrics.forgetting(r) == pytest.approx(0.15)
    # BWT compares with the diagonal instead: (0.6-0.5 + 0.8-0.8)/2 = 0.05
    assert metrics.backward_transfer(r) == pytest.approx(0.05)


def test_backward_transfer_hand_computed():
    # (0.7 - 0.9 + 0.85 - 0.95) / 2 = -0.15
    assert metrics.backward_transfer(R3) == pytest.approx(-0.15)


def test_forward_transfer_hand_computed():
    r = [[0.9, 0.2, 0.3], [0.8, 0.95, 0.4], [0.7, 0.85, 0.99]]
    # (R[0,1] - b1 + R[1,2] - b2) / 2 = (0.2-0.1 + 0.4-0.1)/2 = 0.2
    assert metrics.forward_transfer(r, [0.1, 0.1, 0.1]) == pytest.approx(0.2)


def test_forward_transfer_needs_superdiagonal():
    with pytest.raises(ValueError, match=r"R\[0\]\[1\]"):
        metrics.forward_transfer(R3, [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="one value per task"):
        metrics.forward_transfer(R3, [0.1, 0.1])


def test_single_task():
    assert metrics.forgetting([[0.8]]) == 0.0
    assert metrics.backward_transfer([[0.8]]) == 0.0
    assert metrics.average_accuracy([[0.8]]) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0.1, 0.2]], "square"),
        ([], "square"),
        ([[NAN, NAN], [0.1, 0.2]], r"NaN at R\[0\]\[0\]"),
        ([["a"]], "numbers"),
    ],
)
def test_bad_matrices_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        metrics.forgetting(bad)


def test_none_above_diagonal_is_accepted():
    r = [[0.9, None], [0.8, 0.7]]
    assert metrics.average_accuracy(r) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="after_task"):
        metrics.average_accuracy(r, after_task=2)


def test_roc_auc_hand_computed():
    # positives {0.8, 0.4}, negatives {0.6, 0.2}: pairs won 3 of 4 -> 0.75
    assert metrics.roc_auc([0.8, 0.4, 0.6, 0.2], [1, 1, 0, 0]) == pytest.approx(0.75)
    # a tie counts one half
    assert metrics.roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert math.isnan(metrics.roc_auc([0.5, 0.1], [1, 1]))


def test_mean_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    scores = rng.normal(size=(200, 4)) + np.eye(4)[labels] * 1.5
    scores[:20, 0] = 0.0  # ties
    # Raw per-column AUC (sklearn's multi_class="ovr" would renormalise rows first).
    expected = np.mean([roc_auc_score(labels == c, scores[:, c]) for c in range(4)])
    assert metrics.mean_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=2, max_size=40),
    st.integers(0, 2**31 - 1),
)
def test_roc_auc_property_matches_sklearn(rounded_scores, seed):
    rng = np.random.default_rng(seed)
    s = np.asarray(rounded_scores, dtype=float)  # small integer scores: many ties
    y = rng.integers(0, 2, size=len(s)).astype(bool)
    if y.all() or not y.any():
        assert math.isnan(metrics.roc_auc(s, y))
    else:
        assert metrics.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_mean_auroc_skips_absent_classes_and_rejects_bad_input():
    scores = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.5, 0.0]])
    labels = np.array([0, 1, 0])  # class 2 absent: skipped
    assert metrics.mean_auroc(scores, labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        metrics.mean_auroc(scores, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match=r"scores \[N, C\]"):
        metrics.mean_auroc(scores[:, 0], labels)
    with pytest.raises(ValueError, match="two distinct classes"):
        metrics.mean_auroc(scores, np.array([0, 0, 0]))


def test_accuracy_and_capacity_ratio():
    assert metrics.accuracy(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), [0, 1, 1]) == (
        pytest.approx(2 / 3)
    )
    assert metrics.capacity_ratio(25, 100) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="baseline_params must be positive"):
        metrics.capacity_ratio(1, 0)
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy(np.zeros((3, 2)), [0, 1])
