"""The quality figure of a trained extractor: a linear (or k-NN) probe's dev weighted F1.

The probe is fitted on embeddings of (a subset of) the train split and scored on dev; the same
probe on the untrained encoder sits beside it in the checkpoint, so a reader sees what training bought.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.encoders.network import Encoder, embed_waveforms
from pipeline.encoders.samples import MediaSamples, load_batch
from pipeline.metrics import weighted_f1

PROBES = ("logreg", "knn")


def probe_weighted_f1(
    train_x: np.ndarray,
    train_y: np.ndarray,
    dev_x: np.ndarray,
    dev_y: np.ndarray,
    kind: str = "logreg",
    seed: int = 0,
) -> float:
    """Fit a probe on ``(train_x, train_y)``; weighted F1 on ``(dev_x, dev_y)``.

    Parameters
    ----------
    train_x, dev_x : np.ndarray
        ``(N, d)`` embeddings.
    train_y, dev_y : np.ndarray
        ``(N,)`` integer labels.
    kind : {"logreg", "knn"}
        Standardised logistic regression (C = 1, lbfgs) or 5-NN with cosine distance.
    seed : int
        Random state of the solver.

    Returns
    -------
    float
        Weighted F1 in [0, 1]; 0.0 when the train part has a single class.
    """
    if kind not in PROBES:
        raise ValueError(f"unknown probe {kind!r}; expected one of {PROBES}")
    if len(np.unique(train_y)) < 2 or len(dev_y) == 0:
        return 0.0
    if kind == "logreg":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    else:
        model = KNeighborsClassifier(n_neighbors=min(5, len(train_y)), metric="cosine")
    model.fit(train_x, train_y)
    return weighted_f1(dev_y, model.predict(dev_x))


@torch.no_grad()
def embed_samples(
    encoder: Encoder,
    samples: MediaSamples,
    indices: Sequence[int],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embeddings ``(N, d)`` float32 of samples ``indices`` in their evaluation view (no augmentation).

    Audio goes through :func:`pipeline.encoders.network.embed_waveforms`, the function extraction uses,
    so the model is selected on exactly the vectors extraction will write.
    """
    was_training = encoder.training
    encoder.eval()
    rng = np.random.default_rng(0)  # unused in the evaluation view; the readers want one
    if samples.modality == "audio":
        waves = [samples.raw(int(i), False, rng) for i in indices]
        out = embed_waveforms(encoder, waves, batch_size, device)
        encoder.train(was_training)
        return out
    use_amp = torch.device(device).type == "cuda"
    parts = []
    for s in range(0, len(indices), batch_size):
        x, _ = load_batch(samples, indices[s : s + batch_size], encoder.contract, train=False, rng=rng)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            parts.append(encoder(x.to(device)).float().cpu().numpy())
    encoder.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, encoder.config.embed_dim), np.float32)


def subset(labels: np.ndarray, max_n: int | None, seed: int) -> np.ndarray:
    """At most ``max_n`` sample indices, stratified by label (all when ``max_n`` is None or larger)."""
    n = len(labels)
    if max_n is None or n <= max_n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        ix = np.flatnonzero(labels == c)
        take = max(1, int(round(max_n * len(ix) / n)))
        picked.append(rng.choice(ix, size=min(take, len(ix)), replace=False))
    return np.sort(np.concatenate(picked))
