"""Evaluation of a DER state: predictions, accuracies and continual-learning metrics.

All metrics are pure functions of predictions or of the accuracy matrix
``R[t, j]`` = top-1 accuracy after step t on the classes of step j. Two families,
under distinct names in ``results.json``:

* ours: average incremental accuracy = mean over steps of the top-1 on all seen
  classes (PyCIL and the paper report the same); ``forgetting`` after step t =
  mean over j < t of ``max_{j<=k<t} R[k, j] - R[t, j]`` (Chaudhry et al. 2018, by
  step; :func:`den_jax.metrics.forgetting` on :func:`square_matrix`);
  :func:`grouped_accuracy` (one group per step on small streams).
* PyCIL's, reproduced with their quirks: :func:`pycil_grouped_accuracy`
  (``utils/toolkit.py`` ``accuracy``) and :func:`pycil_forgetting` (``trainer.py``).

NME (nearest mean of exemplars, PyCIL ``models/base.py``): :func:`class_means` and
:func:`nme_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.der import augment, model, pruning

__all__ = [
    "average_incremental_accuracy",
    "class_means",
    "evaluate_state",
    "grouped_accuracy",
    "make_predict",
    "nme_scores",
    "outputs_metrics",
    "predict_all",
    "pycil_forgetting",
    "pycil_grouped_accuracy",
    "square_matrix",
    "task_accuracies",
    "topk_accuracy",
]


def make_predict(mean: Sequence[float], std: Sequence[float], old_backbones: str = "loop"):
    """Jitted eval forward: ``(state, uint8 images) -> (logits, features)``.

    Every backbone uses BatchNorm running statistics; test transform = normalise
    only. With pruning embeddings the new backbone runs with the binarised
    masks, i.e. exactly as its materialised (pruned) copy. ``old_backbones``:
    how the frozen backbones run (:func:`den_jax.der.model.old_features`).
    """

    @jax.jit
    def predict(state: model.DERState, x_u8: jax.Array):
        x = augment.normalize(x_u8, mean, std)
        masks = None if state.mask_e is None else pruning.binary_masks(state.mask_e)
        logits, _, feats, _ = model.forward(
            state, x, train=False, masks=masks, old_backbones=old_backbones
        )
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


def pycil_grouped_accuracy(
    pred: np.ndarray, labels: np.ndarray, nb_old: int, increment: int = 10
) -> dict[str, float]:
    """PyCIL's ``utils/toolkit.accuracy`` exactly, quirks included.

    ``total`` = round(100 mean(pred == y), 2); for ``c`` in ``range(0, max(y), increment)``
    the group ``"cc-(c+increment-1)"`` = round(100 mean over ``c <= y < c + increment``, 2);
    ``old`` = the same over ``y < nb_old``; ``new`` over ``y >= nb_old``.

    Quirks (PyCIL's, kept): (1) the groups run over ``range(0, max(y), increment)``, so
    when the largest label is a multiple of ``increment`` (e.g. 11 classes, top label 10)
    the last group is dropped; (2) ``old`` is 0 (not absent) at the first step, when no
    label is below ``nb_old``; (3) groups are blocks of ``increment`` classes whatever the
    step sizes are (PyCIL calls it with the default 10).

    Args:
      pred: top-1 predictions ``[N]``.
      labels: labels ``[N]`` (positions in the class order).
      nb_old: classes seen before this step.
      increment: group size (PyCIL's default 10).

    Returns:
      dict with ``total``, the group keys, ``old`` and ``new`` (percent, 2 decimals).
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    r = lambda sel: float(np.around(np.sum(pred[sel] == labels[sel]) * 100 / np.sum(sel), 2))
    out = {"total": r(np.ones(len(labels), bool))}
    for c in range(0, int(np.max(labels)), increment):
        out[f"{c:02d}-{c + increment - 1:02d}"] = r((labels >= c) & (labels < c + increment))
    old = labels < nb_old
    out["old"] = 0.0 if not old.any() else r(old)
    out["new"] = r(~old)
    return out


def pycil_forgetting(grouped_rows: Sequence[dict]) -> float:
    """PyCIL ``trainer.py``'s forgetting from the grouped accuracies of every step.

    Row t = the values of the keys containing ``"-"`` of step t's
    :func:`pycil_grouped_accuracy`, sorted by key; the rows are zero-padded into a
    ``[T, T]`` table ``A`` and transposed (``A[g, t]`` = group g after step t). Then
    ``F = mean_{g < T-1} ( max_{0<=t<T} A[g, t] - A[g, T-1] )``.

    Quirks (PyCIL's, kept): the max runs over every step *including the last* (so each
    term is >= 0) and over the zero padding; the rows are 10-class groups, not steps
    (they coincide for B0-10); a row with more than T groups does not fit the table
    (PyCIL's numpy assignment fails; here: ValueError); T = 1 gives nan (mean of nothing).

    Args:
      grouped_rows: :func:`pycil_grouped_accuracy` dicts, one per step so far.

    Returns:
      The forgetting in percent points.
    """
    t = len(grouped_rows)
    table = np.zeros((t, t))
    for i, g in enumerate(grouped_rows):
        vals = [g[k] for k in sorted(k for k in g if "-" in k)]
        if len(vals) > t:
            raise ValueError(f"step {i} has {len(vals)} groups, more than the {t} steps")
        table[i, : len(vals)] = vals
    table = table.T
    if t == 1:
        return float("nan")
    return float(np.mean((np.max(table, axis=1) - table[:, t - 1])[: t - 1]))


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """PyCIL's exemplar means: ``normalise(mean_i normalise(f_i))`` per class.

    Every feature is L2-normalised (``f / (||f|| + 1e-8)``), averaged over the class's
    exemplars, and the mean normalised again (PyCIL ``_construct_exemplar`` /
    ``_reduce_exemplar``; test transform only, no flipped copies). Classes without
    exemplars get a zero row.

    Args:
      features: ``[N, D]`` features of the exemplars (the final model, eval mode).
      labels: ``[N]`` their labels.
      num_classes: rows of the result.

    Returns:
      float64 ``[num_classes, D]``.
    """
    f = np.asarray(features, np.float64)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
    out = np.zeros((num_classes, f.shape[1]))
    for c in range(num_classes):
        sel = labels == c
        if sel.any():
            m = f[sel].mean(0)
            out[c] = m / np.linalg.norm(m)
    return out


def nme_scores(features: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Negative squared distances of normalised features to the class means (PyCIL NME).

    ``-|| f / (||f|| + 1e-8) - mu_c ||^2`` (PyCIL ``_eval_ncm``: ``cdist(..., "sqeuclidean")``,
    ranked by the smallest distance), so :func:`topk_accuracy` on the result is the NME
    top-k accuracy.
    """
    f = np.asarray(features, np.float64)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
    d = np.sum(f**2, 1)[:, None] - 2 * f @ means.T + np.sum(means**2, 1)[None, :]
    return -d


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
    means: np.ndarray | None = None,
) -> dict:
    """All per-step metrics on the test images of the seen classes.

    Args:
      predict: from :func:`make_predict`.
      state: DER state.
      images, labels: test set restricted to seen classes (labels = order positions).
      boundaries: cumulative class counts of the steps so far.
      means: exemplar class means ``[seen, D]`` (:func:`class_means`) for NME, or None.

    Returns:
      ``{"top1", "top5", "grouped", "task_acc", "pycil_grouped"}``, plus with ``means``
      ``"nme_top1"``, ``"nme_top5"``, ``"nme_task_acc"``, ``"nme_pycil_grouped"``.
    """
    logits, feats = predict_all(predict, state, images)
    return outputs_metrics(logits, feats, labels, state.num_old, boundaries, means)


def outputs_metrics(
    logits: np.ndarray,
    feats: np.ndarray,
    labels: np.ndarray,
    num_old: int,
    boundaries: Sequence[int],
    means: np.ndarray | None = None,
) -> dict:
    """The metrics of :func:`evaluate_state` from already computed outputs.

    Args:
      logits, feats: the model's logits ``[N, num_total]`` and features ``[N, D]``.
      labels: ``[N]`` order positions; num_old: classes seen before this step.
      boundaries, means: as in :func:`evaluate_state`.

    Returns:
      The dict of :func:`evaluate_state`.
    """
    pred = np.argmax(logits, axis=1)
    out = {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "grouped": grouped_accuracy(pred, labels, num_old),
        "task_acc": task_accuracies(pred, labels, boundaries),
        "pycil_grouped": pycil_grouped_accuracy(pred, labels, num_old),
    }
    if means is not None:
        scores = nme_scores(feats, means)
        nme_pred = np.argmax(scores, axis=1)
        out["nme_top1"] = topk_accuracy(scores, labels, 1)
        out["nme_top5"] = topk_accuracy(scores, labels, 5)
        out["nme_task_acc"] = task_accuracies(nme_pred, labels, boundaries)
        out["nme_pycil_grouped"] = pycil_grouped_accuracy(nme_pred, labels, num_old)
    return out
