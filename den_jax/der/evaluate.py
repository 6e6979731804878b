"""Evaluation of a DER state: predictions, accuracies and continual-learning metrics.

All metrics are pure functions of predictions or of the accuracy matrix
``R[t, j]`` = top-1 accuracy after step t on the classes of step j (PyCIL
``trainer.py`` definitions):

* average incremental accuracy = mean over steps of the top-1 on all seen classes;
* forgetting after step t = mean over j < t of ``max_{j<=k<t} R[k, j] - R[t, j]``:
  :func:`den_jax.metrics.forgetting` on :func:`square_matrix` of the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.der import augment, model, pruning

__all__ = [
    "average_incremental_accuracy",
    "evaluate_state",
    "grouped_accuracy",
    "make_predict",
    "predict_all",
    "square_matrix",
    "task_accuracies",
    "topk_accuracy",
]


def make_predict(mean: Sequence[float], std: Sequence[float]):
    """Jitted eval forward: ``(state, uint8 images) -> (logits, features)``.

    Every backbone uses BatchNorm running statistics; test transform = normalise
    only. With pruning embeddings the new backbone runs with the binarised
    masks, i.e. exactly as its materialised (pruned) copy.
    """

    @jax.jit
    def predict(state: model.DERState, x_u8: jax.Array):
        x = augment.normalize(x_u8, mean, std)
        masks = None if state.mask_e is None else pruning.binary_masks(state.mask_e)
        logits, _, feats, _ = model.forward(state, x, train=False, masks=masks)
        return logits, feats

    return predict


def predict_all(predict, state, images: np.ndarray, batch_size: int = 256):
    """Runs ``predict`` over ``images`` in batches; returns numpy (logits, features).

    Every batch is padded to ``batch_size`` (a single compiled shape).
    """
    if len(images) == 0:
        raise ValueError("predict_all needs at least one image")
    outs_l, outs_f = [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate(
                [chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)]
            )
        lg, ft = predict(state, jnp.asarray(chunk))
        outs_l.append(np.asarray(lg)[:n])
        outs_f.append(np.asarray(ft)[:n])
    return np.concatenate(outs_l), np.concatenate(outs_f)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percent of samples whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(100.0 * np.mean(np.any(top == labels[:, None], axis=1)))


def grouped_accuracy(
    pred: np.ndarray, labels: np.ndarray, num_old: int, group: int = 10
) -> dict[str, float]:
    """PyCIL ``_evaluate``: accuracy per block of ``group`` classes, plus old/new.

    Keys: ``"00-09"``, ``"10-19"``, ... (labels are positions in the class
    order), ``"old"`` (labels < num_old; absent at the first step) and ``"new"``.
    """
    out: dict[str, float] = {}
    for lo in range(0, int(labels.max()) + 1, group):
        sel = (labels >= lo) & (labels < lo + group)
        if sel.any():
            out[f"{lo:02d}-{lo + group - 1:02d}"] = float(100.0 * np.mean(pred[sel] == labels[sel]))
    old = labels < num_old
    if old.any():
        out["old"] = float(100.0 * np.mean(pred[old] == labels[old]))
    if (~old).any():
        out["new"] = float(100.0 * np.mean(pred[~old] == labels[~old]))
    return out


def task_accuracies(pred: np.ndarray, labels: np.ndarray, boundaries: Sequence[int]) -> list[float]:
    """Accuracy on the classes of every step so far: row t of the accuracy matrix.

    Args:
      boundaries: cumulative class counts ``[n_0, n_0 + n_1, ...]``.
    """
    out, lo = [], 0
    for hi in boundaries:
        sel = (labels >= lo) & (labels < hi)
        out.append(float(100.0 * np.mean(pred[sel] == labels[sel])) if sel.any() else float("nan"))
        lo = hi
    return out


def square_matrix(rows: Sequence[Sequence[float]]) -> list[list[float | None]]:
    """The ragged accuracy matrix (row t has t+1 entries) padded with None to ``[T, T]``.

    The padded form is what :func:`den_jax.metrics.forgetting` and the other
    ``den_jax.metrics`` functions read (None = not evaluated).
    """
    t = len(rows)
    return [list(r) + [None] * (t - len(r)) for r in rows]


def average_incremental_accuracy(curve: Sequence[float]) -> float:
    """Mean of the top-1 curve (first step included), as PyCIL and the paper report."""
    return float(np.mean(np.asarray(curve, np.float64)))


def evaluate_state(
    predict,
    state: model.DERState,
    images: np.ndarray,
    labels: np.ndarray,
    boundaries: Sequence[int],
) -> dict:
    """All per-step metrics on the test images of the seen classes.

    Args:
      predict: from :func:`make_predict`.
      state: DER state.
      images, labels: test set restricted to seen classes (labels = order positions).
      boundaries: cumulative class counts of the steps so far.

    Returns:
      ``{"top1", "top5", "grouped", "task_acc"}``.
    """
    logits, _ = predict_all(predict, state, images)
    pred = np.argmax(logits, axis=1)
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "grouped": grouped_accuracy(pred, labels, state.num_old),
        "task_acc": task_accuracies(pred, labels, boundaries),
    }
