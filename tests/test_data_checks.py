"""den_jax.data.checks: non-finite inputs, bad labels and unseen test classes are refused."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from den_jax.data.checks import check_finite, check_labels, check_split_classes, check_targets

WHAT = "task 'mnist_3' train split"


def test_finite_passes_and_integers_always_pass():
    check_finite(np.ones((3, 2), np.float32), what=WHAT)
    check_finite(jnp.zeros((2, 2)), what=WHAT)
    check_finite(np.arange(4), what=WHAT)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_named_with_row_and_column(bad):
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = bad
    x[3, 0] = bad
    with pytest.raises(ValueError, match=r"task 'mnist_3' train split.*row 2, column 1.*2 of 12"):
        check_finite(x, what=WHAT)


def test_non_numeric_refused():
    with pytest.raises(ValueError, match="numeric"):
        check_finite(np.array(["a", "b"]), what=WHAT)


def test_labels_in_range_pass():
    check_labels(np.array([0, 1, 2, 1], np.int32), 3, what=WHAT)
    check_labels(jnp.array([0, 1]), 2, what=WHAT)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, 99, 2]), r"label 99 at index 2 is outside \[0, 10\)"),
        (np.array([0, -1, 2]), r"label -1 at index 1 is outside \[0, 10\)"),
        (np.array([0.0, 1.5]), "integer dtype, got float64"),
        (np.array([True, False]), "integer dtype, got bool"),
        (np.zeros((2, 2), np.int32), r"shape \[N\]"),
    ],
)
def test_bad_labels_named(labels, message):
    with pytest.raises(ValueError, match=message) as err:
        check_labels(labels, 10, what=WHAT)
    assert WHAT in str(err.value)


def test_targets_labels_or_finite_matrix():
    check_targets(np.array([0, 1]), 2, what=WHAT)
    check_targets(np.full((2, 3), 0.5, np.float32), 3, what=WHAT)
    with pytest.raises(ValueError, match=r"targets \[N, 3\]"):
        check_targets(np.zeros((2, 4), np.float32), 3, what=WHAT)
    with pytest.raises(ValueError, match="non-finite"):
        check_targets(np.array([[np.nan, 1.0]]), 2, what=WHAT)
    with pytest.raises(ValueError, match="label 5 at index 0"):
        check_targets(np.array([5]), 2, what=WHAT)


def test_split_classes(caplog):
    check_split_classes(np.array([0, 1, 2]), np.array([2, 0, 1]), what="task 't'")
    with pytest.raises(ValueError, match=r"task 't'.*test labels \[7\].*test index 1"):
        check_split_classes(np.array([0, 1, 2]), np.array([0, 7, 7]), what="task 't'")
    with pytest.raises(ValueError, match="at least two classes"):
        check_split_classes(np.array([0, 1]), np.array([1, 1]), what="task 't'")
    with pytest.raises(ValueError, match="0 samples"):
        check_split_classes(np.array([0, 1]), np.array([], np.int32), what="task 't'")
    with caplog.at_level(logging.WARNING):
        check_split_classes(np.array([0, 1, 2]), np.array([0, 1]), what="task 't'")
    assert "absent from the test split" in caplog.text
