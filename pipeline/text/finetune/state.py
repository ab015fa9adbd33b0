"""Text fine-tuning, files and state: the ``m2f_text.json`` meta file, the atomic write of a model folder,
the random-generator state of a resumable run, and reading a fine-tuned folder's meta back.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

#: Written into ``m2f_text.json``; :class:`TextEmbedder` does not need it, readers may check it.
META_FILE = "m2f_text.json"


def _save_model_folder(model, tokenizer, folder: Path, meta: dict) -> None:
    """Write model + tokenizer + meta into ``folder`` via a temporary sibling and renames.

    The temporary folder is new, with a random name (``.<name>.<random>.tmp``, made by ``mkdtemp``:
    created exclusively, mode 0700), so nothing planted at a predictable name beside ``folder`` is
    written through or reused; the previous ``folder`` is moved aside under a random name too. What a
    killed run left beside it is removed first (the caller holds the fine-tuning folder's lock).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    name = glob.escape(folder.name)
    for stale in [
        *folder.parent.glob(f".{name}.*.tmp"),
        *folder.parent.glob(f".{name}.*.old"),
        folder.with_name(folder.name + ".tmp"),
        folder.with_name(folder.name + ".old"),
    ]:
        _remove(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        tmp.chmod(folder.parent.stat().st_mode & 0o777)  # as a folder made here would be, not 0700
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    except BaseException:
        _remove(tmp)
        raise
    old = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}.old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    _remove(old)


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder; nothing if absent."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


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
