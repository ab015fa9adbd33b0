"""Text fine-tuning, files and state: the ``m2f_text.json`` meta file, the atomic write of a model folder,
the random-generator state of a resumable run, and reading a fine-tuned folder's meta back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

#: Written into ``m2f_text.json``; :class:`TextEmbedder` does not need it, readers may check it.
META_FILE = "m2f_text.json"


def _save_model_folder(model, tokenizer, folder: Path, meta: dict) -> None:
    """Write model + tokenizer + meta into ``folder`` via a temporary sibling and a rename."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def rng_states(device_type: str) -> dict:
    """The generators a resumed run must continue: the CPU one, and the CUDA one on ``cuda`` (dropout)."""
    import torch

    states = {"torch_rng": torch.get_rng_state()}
    if device_type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(state: dict, device_type: str) -> None:
    """Set what :func:`rng_states` saved; the CUDA state only on ``cuda`` with a GPU visible."""
    import torch

    torch.set_rng_state(state["torch_rng"].cpu())
    if device_type == "cuda" and "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"].cpu())


def read_finetune_meta(folder: str | os.PathLike) -> dict:
    """The ``m2f_text.json`` of a fine-tuned folder (config, history, dev/test weighted F1)."""
    path = Path(folder) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {folder} is not a folder written by finetune_text")
    return json.loads(path.read_text(encoding="utf-8"))
