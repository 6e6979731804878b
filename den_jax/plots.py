"""All plots of the library (matplotlib, Agg backend; PNG files).

Continual learning (plain Python / NumPy data as stored in ``results.json``):

* :func:`plot_accuracy_matrices`: heatmaps of ``R[i][j]``, one per method.
* :func:`plot_task_curves`: per-task accuracy as later tasks are learned.
* :func:`plot_network_size`: network size after each task.
* :func:`plot_accuracy_vs_params`: average accuracy against parameters after each task.

A growing network (a :class:`den_jax.growth.History`, read through its ``epochs`` and
``events`` attributes, so this module does not import :mod:`den_jax.growth`):

* :func:`plot_history`: loss (and validation metrics) per epoch, growth events marked.
* :func:`plot_architecture`: hidden-layer widths and parameter count over epochs.
* :func:`plot_layer_importance`: per-unit importance of every hidden layer.

Each function writes one PNG and returns its path; none keeps global state. matplotlib is
imported on the first plot, so importing this module (or :mod:`den_jax.growth`, which
re-exports the growth plots) stays cheap. Nothing here is needed to train or evaluate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "plot_accuracy_matrices",
    "plot_accuracy_vs_params",
    "plot_architecture",
    "plot_history",
    "plot_layer_importance",
    "plot_network_size",
    "plot_task_curves",
]


def _pyplot():
    import matplotlib  # noqa: PLC0415 (lazy: training never needs matplotlib)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _matrix(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_accuracy_matrices(
    matrices: Mapping[str, Sequence[Sequence[float | None]]],
    task_names: Sequence[str],
    path: str,
) -> str:
    """Heatmaps of ``R[i][j]`` (accuracy on task j after training task i), one per method."""
    plt = _pyplot()
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
    plt = _pyplot()
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method, values in sizes.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=method)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- growth


def _mark_events(ax, history: Any) -> None:
    seen = set()
    for e in history.events:
        if e.epoch in seen:
            continue
        seen.add(e.epoch)
        colour = "tab:red" if e.kind == "depth" else "tab:green"
        ax.axvline(e.epoch + 0.5, color=colour, lw=0.8, ls="--", alpha=0.7)


def plot_history(history: Any, path: str, *, title: str = "training history") -> str:
    """Loss and (if logged) accuracy / validation metrics per epoch, growth events marked.

    Green dashed lines mark width growth, red ones depth growth (after that epoch).
    """
    if not history.epochs:
        raise ValueError("plot_history: the history has no epochs")
    plt = _pyplot()
    epochs = [e["epoch"] for e in history.epochs]
    acc_keys = [k for k in ("accuracy", "val_accuracy", "val_r2") if k in history.epochs[-1]]
    fig, axes = plt.subplots(1, 2 if acc_keys else 1, figsize=(8 if acc_keys else 4.5, 3), dpi=80)
    axes = np.atleast_1d(axes)
    for key in ("loss", "val_loss"):
        if key in history.epochs[-1]:
            axes[0].plot(epochs, [e.get(key, np.nan) for e in history.epochs], label=key)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    for key in acc_keys:
        axes[1].plot(epochs, [e.get(key, np.nan) for e in history.epochs], label=key)
    if acc_keys:
        axes[1].set_xlabel("epoch")
        axes[1].legend(fontsize=7)
    for ax in axes:
        _mark_events(ax, history)
    fig.suptitle(f"{title} ({len(history.events)} growth steps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_architecture(history: Any, path: str, *, title: str = "architecture") -> str:
    """Hidden-layer widths (one line per layer, from the epoch it exists) and parameters."""
    if not history.epochs:
        raise ValueError("plot_architecture: the history has no epochs")
    plt = _pyplot()
    epochs = np.asarray([e["epoch"] for e in history.epochs])
    n_layers = max(len(e["widths"]) for e in history.epochs)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    for layer in range(n_layers):
        w = [e["widths"][layer] if layer < len(e["widths"]) else np.nan for e in history.epochs]
        ax.step(epochs, w, where="post", label=f"layer {layer}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("units")
    ax.legend(fontsize=7)
    ax2.step(epochs, [e["params"] for e in history.epochs], where="post", color="k")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("parameters")
    for a in (ax, ax2):
        _mark_events(a, history)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_layer_importance(
    importance: Sequence[np.ndarray], path: str, *, title: str = "unit importance"
) -> str:
    """Bar chart of per-unit importance, one panel per hidden layer.

    Args:
      importance: per layer, an array ``[h_l]`` (e.g. from
        :func:`den_jax.growth.importance.unit_importance`).
      path: output PNG.
    """
    if not importance:
        raise ValueError("plot_layer_importance: no layers given")
    plt = _pyplot()
    n = len(importance)
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n, 2.6), dpi=80, squeeze=False)
    for layer, (ax, values) in enumerate(zip(axes[0], importance)):
        values = np.asarray(values)
        ax.bar(np.arange(values.size), values, width=0.9)
        ax.set_title(f"layer {layer} (mean {values.mean():.3g})", fontsize=8)
        ax.set_xlabel("unit", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ architecture methods


def plot_accuracy_vs_params(
    results: Mapping[str, Mapping[str, Any]],
    path: str,
    *,
    title: str = "average accuracy against parameters",
) -> str:
    """Average accuracy over the tasks seen against parameters, after each task, per method.

    Args:
      results: method name -> run result (``accuracy_matrix``, ``params_after_task``).
      path: PNG file to write.
      title: the axes' title.

    Returns:
      ``path``. One line per method; its points are the tasks (1, 2, ... annotated).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for method, res in results.items():
        r = _matrix(res["accuracy_matrix"])
        params = np.asarray(res["params_after_task"], dtype=np.float64)
        avg = [np.nanmean(r[i, : i + 1]) for i in range(r.shape[0])]
        (line,) = ax.plot(params, avg, marker="o", ms=3, label=method)
        for i in (0, len(avg) - 1):
            ax.annotate(str(i + 1), (params[i], avg[i]), fontsize=6, color=line.get_color(),
                        xytext=(2, 2), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parameters after the task")
    ax.set_ylabel("average accuracy over tasks seen")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
