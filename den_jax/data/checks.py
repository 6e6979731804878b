"""Checks on data where it enters: finite inputs, integer labels in range, matching splits.

Each check raises ``ValueError`` naming ``what`` (a phrase like ``"task 'mnist_3' train
split"``), what is wrong, the first offending index and value, and what was expected.
They run on NumPy or JAX arrays (JAX arrays are copied to the host) and return nothing.

* :func:`check_finite`: no NaN or +-Inf (a NaN input trains on silently: the loss is
  NaN, DEN's validation-loss test never fires and NaN weights get checkpointed);
* :func:`check_labels`: integer labels ``[N]`` in ``[0, num_classes)`` (a stray label 99
  would otherwise make 100-class heads, a label >= C gives a NaN loss, -1 trains as
  another class and float labels are truncated);
* :func:`check_targets`: labels ``[N]`` (:func:`check_labels`) or finite targets
  ``[N, num_classes]`` (soft labels, regression targets);
* :func:`check_split_classes`: the test split holds only classes the training split has,
  and at least two of them (AUROC needs two).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["check_finite", "check_labels", "check_split_classes", "check_targets"]

_log = logging.getLogger(__name__)


def _index(flat: int, shape: tuple[int, ...]) -> str:
    idx = np.unravel_index(flat, shape) if shape else ()
    if len(idx) == 2:
        return f"row {int(idx[0])}, column {int(idx[1])}"
    if len(idx) == 1:
        return f"index {int(idx[0])}"
    return f"index {tuple(int(i) for i in idx)}"


def check_finite(x: Any, *, what: str) -> None:
    """Refuses NaN and +-Inf values.

    Args:
      x: numeric array (integer and boolean arrays always pass).
      what: what ``x`` is, for the error message.

    Raises:
      ValueError: naming ``what``, the first non-finite value and its index, and how
        many there are; or when ``x`` is not numeric.
    """
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{what}: expected a numeric array, got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.inexact):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        flat = int(np.argmax(bad.reshape(-1)))
        raise ValueError(
            f"{what}: non-finite value {a.reshape(-1)[flat]} at {_index(flat, a.shape)} "
            f"({int(bad.sum())} of {a.size} values are NaN or Inf); expected finite numbers"
        )


def check_labels(y: Any, num_classes: int, *, what: str) -> None:
    """Refuses labels that are not integers in ``[0, num_classes)``.

    Args:
      y: labels ``[N]``.
      num_classes: the number of classes (the head's output width).
      what: what ``y`` is, for the error message.

    Raises:
      ValueError: naming ``what`` and the first offending index and value (a float or
        boolean dtype, a negative label, a label >= ``num_classes``, a wrong shape).
    """
    a = np.asarray(y)
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"{what}: num_classes must be a positive integer, got {num_classes!r}")
    if a.ndim != 1:
        raise ValueError(f"{what}: labels must have shape [N], got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        first = f" (first value {a[0]!r} at index 0)" if a.size else ""
        raise ValueError(
            f"{what}: labels must have an integer dtype, got {a.dtype}{first}; expected "
            f"class ids in [0, {num_classes}) (float labels would be truncated)"
        )
    bad = (a < 0) | (a >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{what}: label {int(a[i])} at index {i} is outside [0, {num_classes}) "
            f"({int(bad.sum())} such labels; range found [{int(a.min())}, {int(a.max())}])"
        )


def check_targets(y: Any, num_classes: int, *, what: str) -> None:
    """Integer labels ``[N]`` or finite targets ``[N, num_classes]`` (soft labels, regression).

    Args:
      y: labels or targets.
      num_classes: the head's output width.
      what: what ``y`` is, for the error message.

    Raises:
      ValueError: as :func:`check_labels` for ``[N]``; for ``[N, C]`` a width other than
        ``num_classes`` or a non-finite value.
    """
    a = np.asarray(y)
    if a.ndim == 1:
        check_labels(a, num_classes, what=what)
        return
    if a.ndim != 2 or a.shape[1] != num_classes:
        raise ValueError(
            f"{what}: expected labels [N] or targets [N, {num_classes}], got shape {a.shape}"
        )
    check_finite(a, what=what)


def check_split_classes(y_train: Any, y_test: Any, *, what: str) -> None:
    """Refuses a test split with classes the training split never saw, or with < 2 classes.

    Training classes that are absent from the test split are logged (warning): their
    accuracy and AUROC terms are simply missing.

    Args:
      y_train: training labels ``[N]``.
      y_test: test labels ``[M]``.
      what: which task, for the error message.

    Raises:
      ValueError: naming ``what``, the unseen classes and the first test index holding one;
        or when the test split is empty or holds a single class.
    """
    tr, te = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    seen = np.unique(tr)
    unseen = ~np.isin(te, seen)
    if unseen.any():
        i = int(np.argmax(unseen))
        classes = sorted(set(np.unique(te[unseen]).tolist()))
        raise ValueError(
            f"{what}: test labels {classes} never occur in the training split (first at test "
            f"index {i}: label {te[i]}); training classes are {seen.tolist()}"
        )
    present = np.unique(te)
    if len(present) < 2:
        raise ValueError(
            f"{what}: the test split holds {len(te)} samples of {len(present)} class(es) "
            f"{present.tolist()}; expected at least two classes (accuracy and AUROC)"
        )
    missing = sorted(set(seen.tolist()) - set(present.tolist()))
    if missing:
        _log.warning("%s: training classes %s are absent from the test split", what, missing)
