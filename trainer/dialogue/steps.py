"""The computation of training: one epoch, prediction, scoring, the optimiser, AMP and torch.compile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score

from pipeline.metrics import weighted_f1
from trainer.dialogue.data import IGNORE, DialogueSplit, batch_order

logger = logging.getLogger(__name__)


def autocast_for(device: str) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on the CPU (fp32)."""
    return (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    split: DialogueSplit,
    batch_size: int,
    generator: torch.Generator,
    device: str,
    fixed_length: bool = False,
    max_batches: int | None = None,
    bucket: int = 0,
) -> float:
    """One pass over ``split`` in shuffled dialogue batches; returns the mean loss per scored utterance.

    The loss is summed on the device and read once at the end (no per-step host sync).
    ``bucket`` groups dialogues of similar length into a batch (see :func:`batch_order`; 0 = off);
    ``fixed_length`` keeps every batch at the split's full length (static shapes for
    ``torch.compile``); ``max_batches`` stops early (benchmarks).
    """
    model.train()
    total = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    lengths = split.lengths if bucket else None
    batches = batch_order(split.n_dialogues, batch_size, generator, lengths, bucket)[:max_batches]
    on_device = torch.cat(batches).to(device).split([len(b) for b in batches])  # one transfer per epoch
    for index, index_dev in zip(batches, on_device, strict=True):
        length = None if fixed_length else int(split.lengths[index.numpy()].max())
        batch = split.batch(index_dev, length)
        with autocast_for(device):
            logits = model(
                batch["features"], batch["present"], batch["mask"], batch["speakers"], batch.get("residual")
            )
        labels = batch["labels"]
        loss_sum = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        n = (labels != IGNORE).sum()
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / n.clamp(min=1)).backward()
        optimizer.step()
        total += loss_sum.detach()
        count += n
    return float(total / count.clamp(min=1))


@torch.no_grad()
def predict_probs(model: torch.nn.Module, split: DialogueSplit, batch_size: int, device: str) -> np.ndarray:
    """Class probabilities ``(n_rows, n_classes)`` in file row order (padding removed)."""
    model.eval()
    out = None
    for index in batch_order(split.n_dialogues, batch_size, None, split.lengths):  # similar lengths together
        length = int(split.lengths[index.numpy()].max())
        on_device = index.to(device)
        batch = split.batch(on_device, length)
        with autocast_for(device):
            logits = model(
                batch["features"], batch["present"], batch["mask"], batch["speakers"], batch.get("residual")
            )
        if out is None:
            out = torch.zeros(split.n_dialogues, split.max_len, logits.shape[-1], device=device)
        out[on_device, :length] = torch.softmax(logits.float(), dim=-1)
    if out is None:
        raise ValueError("the split has no dialogues to predict")
    return out.reshape(-1, out.shape[-1]).cpu().numpy()[split.flat_index]


def score(split: DialogueSplit, probs: np.ndarray) -> dict[str, float]:
    """Weighted F1, accuracy and cross-entropy over the scored utterances of ``split``."""
    labels = split.labels.reshape(-1).cpu().numpy()[split.flat_index]
    keep = labels != IGNORE
    gold, p = labels[keep], probs[keep]
    pred = p.argmax(axis=1)
    loss = float(-np.log(np.clip(p[np.arange(len(gold)), gold], 1e-12, None)).mean()) if len(gold) else 0.0
    return {
        "weighted_f1": weighted_f1(gold, pred),
        "accuracy": float(accuracy_score(gold, pred)),
        "loss": loss,
    }


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, device: str
) -> torch.optim.Optimizer:
    """AdamW (the paper's optimiser); the fused CUDA kernel on a GPU."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=device == "cuda")


def compile_missing() -> str | None:
    """What ``torch.compile`` (inductor) lacks here to build its kernels: a C compiler or Python headers."""
    import shutil
    import sysconfig

    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        return "no C compiler (cc/gcc/clang) on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return f"no Python headers ({sysconfig.get_paths()['include']}/Python.h)"
    return None


def compiled_or_eager(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``, or ``model`` itself with a warning when compiling cannot work here."""
    missing = compile_missing()
    if missing:
        logger.warning("--compile: %s; training eagerly instead", missing)
        return model
    return cast(torch.nn.Module, torch.compile(model))  # an OptimizedModule, typed as any callable
