"""Figures of ``m2f report``: the confusion matrix and the training curves (PNG, matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_confusion(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> None:
    """Confusion matrix PNG: colour = row-normalised recall, text = counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=float)
    norm = m / np.clip(m.sum(axis=1, keepdims=True), 1, None)
    size = 1.0 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of gold row")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(per_seed_metrics: dict[str, list[dict]], path: Path) -> None:
    """Training curves PNG: train/dev loss and dev weighted F1 per epoch, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    for seed, rows in per_seed_metrics.items():
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        # epoch 0 (--head-residual: the untrained model, scored on dev only) has no train loss
        train = [r for r in rows if r.get("train_loss") is not None]
        ax_loss.plot([r["epoch"] for r in train], [r["train_loss"] for r in train], label=f"{seed} train")
        ax_loss.plot(ep, [r["dev_loss"] for r in rows], "--", label=f"{seed} dev")
        (line,) = ax_f1.plot(ep, [100 * r["dev_weighted_f1"] for r in rows], label=seed)
        selected = [r for r in rows if r.get("best")]  # best.pt came from the last one (--select wf1, loss)
        if selected:
            best = selected[-1]
            ax_f1.plot([best["epoch"]], [100 * best["dev_weighted_f1"]], "o", color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_f1.set(xlabel="epoch", ylabel="dev weighted F1 (%)", title="dev weighted F1 (dot = selected epoch)")
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
