"""Metrics shared by the encoder probe, text fine-tuning and the dialogue trainer (one definition)."""

from __future__ import annotations

from collections.abc import Sequence

from numpy.typing import ArrayLike


def weighted_f1(y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence | int | None = None) -> float:
    """Support-weighted F1 over ``labels`` (an int n means ``range(n)``), 0 where a class is never predicted.

    The paper's headline metric; equal to scikit-learn's ``f1_score(average="weighted")``.
    """
    from sklearn.metrics import f1_score

    if isinstance(labels, int):
        labels = list(range(labels))
    return float(
        f1_score(
            y_true,
            y_pred,
            labels=None if labels is None else list(labels),
            average="weighted",
            zero_division=0,
        )
    )
