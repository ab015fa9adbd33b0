"""The files of one seed's run folder: JSON, status, metrics, predictions, checkpoints and resume state.

The folder layout is described in :mod:`trainer.dialogue.fit`. Every file is written through a temporary name
and an atomic rename.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pipeline.store.atomic import atomic_torch_save, atomic_write_text, commit_tmp, tmp_path
from trainer.dialogue.config import OLDER_RUN_VALUES, RESUME_FREE_KEYS
from trainer.dialogue.data import IGNORE, DialogueSplit
from trainer.dialogue.model import DialogueModel, DialogueModelConfig

CHECKPOINT_FORMAT = 1


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def environment_info(device: str) -> dict:
    """Versions and hardware, for ``environment.json``."""
    import h5py
    import sklearn

    from pipeline import __version__

    info = {
        "m2f": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "h5py": h5py.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch lines of ``metrics.jsonl`` (empty if absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def keep_metrics_until(run_dir: Path, epoch: int) -> None:
    """Drop metric lines written after the checkpoint being resumed from."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= epoch]
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def write_status(run_dir: Path, state: str, **fields) -> None:
    """``status.json``: what ``m2f report`` shows for a run that is still training."""
    write_json(
        run_dir / "status.json", {"state": state, "updated_utc": datetime.now(UTC).isoformat(), **fields}
    )


def write_predictions(
    path: Path, split: DialogueSplit, probs: np.ndarray, class_names: tuple[str, ...]
) -> None:
    """``utt_id, gold, predicted, p_<class>...`` for every scored utterance, file row order."""
    labels = split.labels.reshape(-1).cpu().numpy()[split.flat_index]
    keep = labels != IGNORE
    pred = probs.argmax(axis=1)
    tmp = tmp_path(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["utt_id", "gold", "predicted"] + [f"p_{c}" for c in class_names])
        for i in np.flatnonzero(keep):
            w.writerow(
                [split.utt_id[i], class_names[labels[i]], class_names[pred[i]]]
                + [f"{p:.6g}" for p in probs[i]]
            )
    commit_tmp(tmp, path)


# -- resume state and checkpoints -----------------------------------------------------------------
@dataclass
class LoopState:
    """Early-stopping state of one seed, saved in ``last.pt``.

    ``best_epoch`` is the last epoch that improved the score ``--select`` stops on (dev weighted F1 for
    ``wf1``, dev loss for ``loss`` and ``average``); ``best_f1`` and ``best_loss`` are that epoch's dev
    weighted F1 and dev loss. A ``last.pt`` written before ``best_loss`` existed resumes with its default.
    """

    epoch: int = 0  # epochs finished
    best_f1: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    best_loss: float = math.inf


def check_resumable(run_dir: Path, config: dict) -> None:
    """Refuse to resume a run folder whose ``config.json`` differs beyond :data:`RESUME_FREE_KEYS`.

    An option the folder's config predates counts with the value such runs had (:data:`OLDER_RUN_VALUES`).
    """
    path = run_dir / "config.json"
    if not path.exists():
        return
    old = {**OLDER_RUN_VALUES, **json.loads(path.read_text(encoding="utf-8"))}
    diff = sorted(
        k for k in set(old) | set(config) if k not in RESUME_FREE_KEYS and old.get(k) != config.get(k)
    )
    if diff:
        raise ValueError(
            f"{run_dir} holds a run with different options ({', '.join(diff)}); "
            "use another --out, or delete that folder to start over"
        )


def load_last(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: str
) -> LoopState:
    """Restore model, optimizer and RNG from ``last.pt``; returns the loop state to continue from."""
    ckpt = torch.load(run_dir / "last.pt", map_location=device, weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{run_dir / 'last.pt'}: checkpoint format {ckpt.get('format')!r} is not "
            f"{CHECKPOINT_FORMAT}; delete the run folder to start over"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng_cpu"].cpu())
    if device == "cuda" and "rng_cuda" in ckpt:
        torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
    return LoopState(**ckpt["loop"])


def save_last(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: LoopState, device: str
) -> None:
    """Write ``last.pt``: model, optimizer, RNG and loop state (the resume point)."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "loop": dataclasses.asdict(state),
    }
    if device == "cuda":
        ckpt["rng_cuda"] = torch.cuda.get_rng_state()
    atomic_torch_save(ckpt, run_dir / "last.pt")


def save_model(
    path: Path, model: DialogueModel, class_names: tuple[str, ...], epoch: int, **extra: object
) -> None:
    """Save weights + model config + class names (a ``weights_only`` checkpoint); ``extra`` keys beside."""
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "class_names": list(class_names),
            "epoch": epoch,
            **extra,
        },
        path,
    )


def load_model(path: str | Path, device: str = "cpu") -> tuple[DialogueModel, list[str]]:
    """Rebuild a :class:`DialogueModel` from ``best.pt`` (loaded with ``weights_only=True``)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = DialogueModel(DialogueModelConfig.from_dict(ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    return model, list(ckpt["class_names"])
