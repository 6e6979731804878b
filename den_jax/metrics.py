"""Continual-learning metrics as pure functions of an accuracy matrix (NumPy only).

Every metric is computed from one matrix ``R`` of shape ``[T, T]`` where
``R[i, j]`` is the accuracy (or any score in [0, 1]) on task ``j``'s test set after
training task ``i``. Entries above the diagonal (``j > i``: a task not yet trained)
are ``NaN`` or unused, except by :func:`forward_transfer`, which reads ``R[j-1, j]``.
Metric definitions disagree across libraries, so each docstring states its formula
and source.

References:
  * GEM: Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017, §4 (ACC, BWT, FWT).
  * RWalk: Chaudhry et al., "Riemannian Walk for Incremental Learning", ECCV 2018,
    Eq. 7-8 (forgetting).
  * DEN: Yoon et al., "Lifelong Learning with Dynamically Expandable Networks",
    ICLR 2018, §4 (mean per-task AUROC; capacity as % of DNN-STL).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy",
    "average_accuracy",
    "backward_transfer",
    "capacity_ratio",
    "check_accuracy_matrix",
    "forgetting",
    "forward_transfer",
    "mean_auroc",
    "roc_auc",
]


def check_accuracy_matrix(matrix) -> np.ndarray:
    """Validates an accuracy matrix and returns it as ``float64 [T, T]``.

    Args:
      matrix: ``[T, T]`` array-like (nested lists allowed; ``None`` means NaN).

    Returns:
      The matrix as a float64 array.

    Raises:
      ValueError: if it is not square 2-D, is empty, or has a NaN on or below the
        diagonal (every trained task must have been evaluated).
    """
    try:
        r = np.array(
            [[np.nan if v is None else v for v in row] for row in matrix]
            if not isinstance(matrix, np.ndarray)
            else matrix,
            dtype=np.float64,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"accuracy matrix must be a square [T, T] array of numbers: {err}"
        ) from err
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square [T, T] with T >= 1, got shape {r.shape}")
    lower = np.tril(np.ones_like(r, dtype=bool))
    if np.isnan(r[lower]).any():
        i, j = np.argwhere(np.isnan(r) & lower)[0]
        raise ValueError(
            f"accuracy matrix has NaN at R[{i}][{j}] on/below the diagonal; every task j <= i "
            "must be evaluated after training task i"
        )
    return r


def accuracy(logits, labels) -> float:
    """Top-1 accuracy: the fraction of rows whose argmax equals the label.

    Args:
      logits: ``[N, C]`` scores.
      labels: ``[N]`` integer labels in ``[0, C)``.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"accuracy expects logits [N, C] and labels [N], got {logits.shape} and {labels.shape}"
        )
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def average_accuracy(matrix, after_task: int | None = None) -> float:
    """Average accuracy over the tasks seen so far (GEM's ACC).

    ``ACC_i = 1/(i+1) * sum_{j <= i} R[i, j]``; by default ``i = T - 1`` (the final row).

    Args:
      matrix: accuracy matrix ``[T, T]``.
      after_task: row ``i`` to average (default: the last).
    """
    r = check_accuracy_matrix(matrix)
    t = r.shape[0]
    i = t - 1 if after_task is None else int(after_task)
    if not 0 <= i < t:
        raise ValueError(f"after_task must be in [0, {t - 1}], got {after_task}")
    return float(np.mean(r[i, : i + 1]))


def forgetting(matrix) -> float:
    """Average forgetting after the last task (Chaudhry et al. 2018, Eq. 7-8).

    ``F = 1/(T-1) * sum_{j < T-1} ( max_{j <= i < T-1} R[i, j] - R[T-1, j] )``.
    Positive means accuracy was lost; 0.0 when ``T == 1``.
    """
    r = check_accuracy_matrix(matrix)
    t = r.shape[0]
    if t == 1:
        return 0.0
    drops = [np.max(r[j : t - 1, j]) - r[t - 1, j] for j in range(t - 1)]
    return float(np.mean(drops))


def backward_transfer(matrix) -> float:
    """Backward transfer (GEM, Lopez-Paz & Ranzato 2017, §4).

    ``BWT = 1/(T-1) * sum_{j < T-1} ( R[T-1, j] - R[j, j] )``. Negative means
    forgetting; 0.0 when ``T == 1``.
    """
    r = check_accuracy_matrix(matrix)
    t = r.shape[0]
    if t == 1:
        return 0.0
    return float(np.mean([r[t - 1, j] - r[j, j] for j in range(t - 1)]))


def forward_transfer(matrix, baseline: Sequence[float]) -> float:
    """Forward transfer (GEM, Lopez-Paz & Ranzato 2017, §4).

    ``FWT = 1/(T-1) * sum_{j >= 1} ( R[j-1, j] - b[j] )`` where ``b[j]`` is the accuracy
    on task ``j`` of a model at random initialisation. Needs the super-diagonal
    ``R[j-1, j]`` (evaluate task ``j`` before training it); 0.0 when ``T == 1``.

    Args:
      matrix: accuracy matrix ``[T, T]`` with a finite super-diagonal.
      baseline: ``[T]`` accuracies at random initialisation.
    """
    r = check_accuracy_matrix(matrix)
    t = r.shape[0]
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (t,):
        raise ValueError(f"baseline must have one value per task, shape ({t},), got {b.shape}")
    if t == 1:
        return 0.0
    sup = np.array([r[j - 1, j] for j in range(1, t)])
    if np.isnan(sup).any():
        j = int(np.argmax(np.isnan(sup))) + 1
        raise ValueError(
            f"forward transfer needs R[{j - 1}][{j}] (task {j} evaluated before training it), "
            "got NaN"
        )
    return float(np.mean(sup - b[1:]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Boundaries of runs of equal values.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def roc_auc(scores, positives) -> float:
    """Area under the ROC curve of one binary problem (Mann-Whitney U statistic).

    ``AUC = (sum of ranks of positives - P(P+1)/2) / (P * N)`` with average ranks for
    ties (equal to the trapezoidal ROC area).

    Args:
      scores: ``[N]`` real scores (higher = more positive).
      positives: ``[N]`` booleans.

    Returns:
      The AUROC, or NaN if only one class is present.
    """
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(positives, dtype=bool)
    if s.ndim != 1 or p.shape != s.shape:
        raise ValueError(f"roc_auc expects scores [N] and positives [N], got {s.shape}, {p.shape}")
    n_pos = int(p.sum())
    n_neg = len(p) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_auroc(scores, labels) -> float:
    """Mean one-vs-rest AUROC over classes (the metric DEN reports, Yoon et al. 2018 §4).

    For each class ``c`` present with both positives and negatives in ``labels``, the AUROC
    of ``scores[:, c]`` for ``labels == c``; the mean over those classes. Scores may be
    logits, sigmoids or softmax probabilities (AUROC depends only on the order within a
    column, so any per-column monotone map gives the same value).

    Args:
      scores: ``[N, C]`` scores.
      labels: ``[N]`` integer labels in ``[0, C)``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(
            f"mean_auroc expects scores [N, C] and labels [N], got {s.shape}, {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in [0, {s.shape[1]}), got range [{y.min()}, {y.max()}]")
    aucs = [roc_auc(s[:, c], y == c) for c in range(s.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    if not aucs:
        raise ValueError("mean_auroc needs at least two distinct classes among the labels")
    return float(np.mean(aucs))


def capacity_ratio(params: float, baseline_params: float) -> float:
    """Capacity as a fraction of a baseline's (DEN reports % of DNN-STL's parameters).

    ``ratio = params / baseline_params``; multiply by 100 for a percentage.
    """
    if not baseline_params > 0:
        raise ValueError(f"baseline_params must be positive, got {baseline_params}")
    if params < 0:
        raise ValueError(f"params must be non-negative, got {params}")
    return float(params) / float(baseline_params)
