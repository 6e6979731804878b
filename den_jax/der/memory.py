"""Rehearsal memory with herding selection (iCaRL, Rebuffi et al. 2017; as in DER/PyCIL).

The memory is a mapping ``class -> indices into the training set, in herding
order``; the raw uint8 images stay in the training array, so the memory is a
few integers (JSON-friendly for checkpoints). Shrinking keeps the first m
indices of each class (PyCIL ``models/base.py``, official ``tools/memory.py``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "from_json",
    "herding",
    "memory_indices",
    "per_class_quota",
    "shrink",
    "to_json",
    "update_memory",
]


def per_class_quota(memory_size: int, num_seen: int, fixed_per_class: int | None = None) -> int:
    """Exemplars per class.

    Args:
      memory_size: total budget (fixed-total mode: ``memory_size // num_seen``).
      num_seen: classes seen so far.
      fixed_per_class: if set, fixed-per-class mode (e.g. 20 for the official B50).
    """
    if fixed_per_class is not None:
        return int(fixed_per_class)
    if num_seen <= 0:
        raise ValueError(f"num_seen must be positive, got {num_seen}")
    return int(memory_size) // int(num_seen)


def herding(features: np.ndarray, m: int) -> np.ndarray:
    """Greedy herding on L2-normalised features.

    With f_i = x_i/||x_i|| and mu = mean_i f_i, step k picks
    argmin_i || mu - (sum_{j in S} f_j + f_i) / k ||, without replacement.

    Args:
      features: ``[n, d]`` features of one class.
      m: how many to select (capped at n).

    Returns:
      int64 indices into ``features``, in selection order.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [n, d], got shape {features.shape}")
    f = features.astype(np.float64)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
    mu = f.mean(axis=0)
    chosen: list[int] = []
    running = np.zeros_like(mu)
    available = np.ones(len(f), bool)
    for k in range(1, min(m, len(f)) + 1):
        dist = np.linalg.norm(mu[None] - (running[None] + f) / k, axis=1)
        dist[~available] = np.inf
        i = int(np.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += f[i]
    return np.asarray(chosen, np.int64)


def shrink(memory: dict[int, np.ndarray], m: int) -> dict[int, np.ndarray]:
    """Keeps the first ``m`` exemplars (herding order) of every class."""
    return {c: np.asarray(idx)[:m] for c, idx in memory.items()}


def update_memory(
    memory: dict[int, np.ndarray],
    new_classes: dict[int, np.ndarray],
    features_fn,
    m: int,
) -> dict[int, np.ndarray]:
    """Shrinks old classes to ``m`` and herds ``m`` exemplars for each new class.

    Args:
      memory: current memory (class -> training-set indices).
      new_classes: class -> training-set indices of all its samples.
      features_fn: ``indices -> [n, d]`` features (full network, eval mode,
        test transform).
      m: exemplars per class.

    Returns:
      The new memory (old classes first, then new ones).
    """
    out = shrink(memory, m)
    for c, idx in new_classes.items():
        idx = np.asarray(idx)
        order = herding(np.asarray(features_fn(idx)), m)
        out[int(c)] = idx[order]
    return out


def memory_indices(memory: dict[int, np.ndarray]) -> np.ndarray:
    """All exemplar indices, concatenated (int32)."""
    if not memory:
        return np.zeros((0,), np.int32)
    return np.concatenate([np.asarray(v) for v in memory.values()]).astype(np.int32)


def to_json(memory: dict[int, np.ndarray]) -> dict[str, list[int]]:
    """JSON form (string keys, as orbax ``JsonSave`` would make them anyway)."""
    return {str(c): [int(i) for i in v] for c, v in memory.items()}


def from_json(d: dict) -> dict[int, np.ndarray]:
    """Inverse of :func:`to_json`."""
    return {int(c): np.asarray(v, np.int64) for c, v in d.items()}
