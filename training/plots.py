"""PNG plots of evaluations and training runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix with counts, true classes on the rows."""
    plt = _pyplot()
    k = len(labels)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = [max(sum(r), 1) for r in matrix]
    norm = [[v / rows[i] for v in r] for i, r in enumerate(matrix)]
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if matrix[i][j]:
                    ax.text(j, i, matrix[i][j], ha="center", va="center", fontsize=6,
                            color="white" if norm[i][j] > 0.5 else "black")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss and validation metric per epoch; None if there is no history."""
    if not history:
        return None
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss")
    metric = next(k for k in ("val_top1", "val_map50_95", "val_map50") if k in history[0])
    ax2.plot(epochs, [h[metric] for h in history], marker="o", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
