"""Plots of continual-learning results (matplotlib, Agg backend; PNG files).

Each function takes plain Python / NumPy data (as stored in ``results.json``), writes one
PNG and returns its path. Nothing here is needed to train or evaluate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _matrix(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_matrices(
    matrices: Mapping[str, Sequence[Sequence[float | None]]],
    task_names: Sequence[str],
    path: str,
) -> str:
    """Heatmaps of ``R[i][j]`` (accuracy on task j after training task i), one per method."""
    if not matrices:
        raise ValueError("plot_accuracy_matrices needs at least one method")
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.4), squeeze=False)
    t = len(task_names)
    image = None
    for ax, (method, rows) in zip(axes[0], matrices.items()):
        r = _matrix(rows)
        image = ax.imshow(r, vmin=np.nanmin(r) if np.isfinite(r).any() else 0, vmax=1.0,
                          cmap="viridis")  # fmt: skip
        ax.set_title(method)
        ax.set_xlabel("evaluated task j")
        ax.set_ylabel("after training task i")
        ax.set_xticks(range(t))
        ax.set_yticks(range(t))
        if t <= 10:
            for i in range(r.shape[0]):
                for j in range(r.shape[1]):
                    if np.isfinite(r[i, j]):
                        ax.text(j, i, f"{100 * r[i, j]:.0f}", ha="center", va="center",
                                fontsize=6, color="w")  # fmt: skip
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    return _save(fig, path)


def plot_task_curves(
    matrices: Mapping[str, Sequence[Sequence[float | None]]],
    task_names: Sequence[str],
    path: str,
) -> str:
    """Per-task accuracy as later tasks are learned (one panel per method), plus the average."""
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.2), squeeze=False, sharey=True)
    for ax, (method, rows) in zip(axes[0], matrices.items()):
        r = _matrix(rows)
        steps = np.arange(1, r.shape[0] + 1)
        for j, name in enumerate(task_names[: r.shape[1]]):
            ax.plot(steps[j:], r[j:, j], marker=".", lw=1, label=name)
        avg = [np.nanmean(r[i, : i + 1]) for i in range(r.shape[0])]
        ax.plot(steps, avg, "k--", lw=2, label="average")
        ax.set_title(method)
        ax.set_xlabel("tasks learned")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=6, loc="lower left", ncol=2)
    return _save(fig, path)


def plot_network_size(
    sizes: Mapping[str, Sequence[int]],
    path: str,
    *,
    ylabel: str = "parameters",
) -> str:
    """Network size after each task, one line per method."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method, values in sizes.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=method)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
