"""PNG pictures: training curves from a run's metrics log."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> Path | None:
    """Loss and accuracy (training, and validation with its 95% interval) against episodes (or epochs)."""
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        return None
    axis = "epoch" if "epoch" in train[0] else "episode"  # pretraining runs count epochs
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r[axis] for r in train], [r["loss"] for r in train], label="train loss")
    left.set_xlabel(axis)
    left.set_ylabel("loss")
    left.set_title("training loss")
    right.plot([r[axis] for r in train], [r["accuracy"] for r in train], label="train (running)")
    if val:
        intervals = [float("nan") if r.get("ci95") is None else r["ci95"] for r in val]  # null: one episode
        right.errorbar([r[axis] for r in val], [r["accuracy"] for r in val], yerr=intervals,
                       marker="o", capsize=3, label="validation ± 95% CI")
    right.set_xlabel(axis)
    right.set_ylabel("accuracy (%)")
    right.set_title("accuracy")
    right.legend()
    fig.tight_layout()
    atomic_write(out_path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return Path(out_path)


MAX_CONFUSION_CLASSES = 64


def plot_confusion(report: dict, out_path: str | os.PathLike, title: str = "") -> Path | None:
    """Row-normalized confusion matrix (true class by row) as a PNG; None when there are too many
    classes to draw legibly (more than ``MAX_CONFUSION_CLASSES``; the JSON still holds the matrix)."""
    import numpy as np

    names = report["class_names"]
    if len(names) > MAX_CONFUSION_CLASSES:
        return None
    matrix = np.asarray(report["confusion"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    plt = pyplot()
    side = max(5.0, 0.28 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (fraction of each true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(out_path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return Path(out_path)
