"""Class-incremental splits: class order and per-step class ranges.

Labels are remapped to *positions in the class order*, so the classes of step
t are the contiguous range ``[boundaries[t-1], boundaries[t])`` and the
padded classifier column c is always the c-th class of the order (PyCIL's
``DataManager`` does the same remapping).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PYCIL_SEED",
    "boundaries",
    "class_order",
    "indices_in_range",
    "remap_labels",
    "step_sizes",
]

PYCIL_SEED = 1993


def class_order(num_classes: int, seed: int | None = PYCIL_SEED) -> np.ndarray:
    """The class order of a stream.

    Args:
      num_classes: number of classes.
      seed: ``np.random.seed(seed); np.random.permutation(num_classes)`` as
        PyCIL does (1993 gives 68, 56, 78, 8, 23, ... for CIFAR-100); None keeps
        the natural order 0..n-1.

    Returns:
      int64 ``[num_classes]`` permutation.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if seed is None:
        return np.arange(num_classes, dtype=np.int64)
    return np.random.RandomState(seed).permutation(num_classes).astype(np.int64)


def step_sizes(num_classes: int, init: int, increment: int) -> list[int]:
    """Classes per step: ``init`` first, then ``increment`` until all are used.

    A last step smaller than ``increment`` gets the remainder (PyCIL does the same).
    """
    if not 0 < init <= num_classes or increment <= 0:
        raise ValueError(
            f"need 0 < init <= num_classes and increment > 0; got init={init}, "
            f"increment={increment}, num_classes={num_classes}"
        )
    sizes = [init]
    while sum(sizes) < num_classes:
        sizes.append(min(increment, num_classes - sum(sizes)))
    return sizes


def boundaries(sizes: list[int]) -> list[int]:
    """Cumulative class counts: ``[n0, n0+n1, ...]``."""
    return [int(x) for x in np.cumsum(sizes)]


def remap_labels(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Original label -> position in ``order`` (int32)."""
    order = np.asarray(order)
    if sorted(order.tolist()) != list(range(len(order))):
        raise ValueError(f"order must be a permutation of 0..{len(order) - 1}")
    inverse = np.empty(len(order), np.int64)
    inverse[order] = np.arange(len(order))
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(order)):
        raise ValueError(
            f"labels must lie in [0, {len(order)}), got [{labels.min()}, {labels.max()}]"
        )
    return inverse[labels].astype(np.int32)


def indices_in_range(labels: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Indices of samples whose (remapped) label lies in ``[lo, hi)``."""
    return np.flatnonzero((labels >= lo) & (labels < hi)).astype(np.int32)
