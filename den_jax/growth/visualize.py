"""Plots of a growing run (matplotlib, Agg backend, PNG files).

* :func:`plot_history`: loss (and validation metrics) per epoch, growth events marked.
* :func:`plot_architecture`: hidden-layer widths and parameter count over epochs.
* :func:`plot_layer_importance`: per-unit importance of every hidden layer.

Each function writes one PNG and returns its path; none keeps global state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from den_jax.growth.history import History


def _pyplot():
    import matplotlib  # noqa: PLC0415 (lazy: the library itself never needs matplotlib)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _mark_events(ax, history: History) -> None:
    seen = set()
    for e in history.events:
        if e.epoch in seen:
            continue
        seen.add(e.epoch)
        colour = "tab:red" if e.kind == "depth" else "tab:green"
        ax.axvline(e.epoch + 0.5, color=colour, lw=0.8, ls="--", alpha=0.7)


def plot_history(history: History, path: str, *, title: str = "training history") -> str:
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


def plot_architecture(history: History, path: str, *, title: str = "architecture") -> str:
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
