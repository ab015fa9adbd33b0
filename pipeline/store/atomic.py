"""Crash-safe writes and content identities: one copy of each, used by every module that writes.

A file is written under a temporary name in its own folder, flushed to disk, then renamed over the
target, so a reader (or a rerun after ``kill -9``) sees either the old file or the whole new one.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import secrets
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: str | Path) -> Path:
    """A new, empty temporary file beside ``path`` (``.<name>.<random>.tmp``) to write ``path`` into.

    It is created exclusively and without following links (``O_CREAT | O_EXCL | O_NOFOLLOW``) under a
    random name, so a file or symlink planted in a shared folder is never written through or reused.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: could not create a temporary file beside it")


def stale_tmps(path: str | Path) -> list[Path]:
    """Temporary files left beside ``path`` by a killed writer (and the old ``<name>.tmp``)."""
    path = Path(path)
    legacy = path.with_name(path.name + ".tmp")
    return ([legacy] if legacy.exists() or legacy.is_symlink() else []) + sorted(
        path.parent.glob(f".{glob.escape(path.name)}.*.tmp")
    )


def commit_tmp(tmp: str | Path, path: str | Path) -> Path:
    """fsync ``tmp`` and rename it over ``path`` (atomic on one file system)."""
    fsync_path(tmp)
    os.replace(tmp, path)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        return commit_tmp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text, atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, **dump_kw) -> Path:
    """JSON (``indent=1, sort_keys=True`` unless given), atomically."""
    dump_kw = {"indent": 1, "sort_keys": True, "ensure_ascii": False, "default": str, **dump_kw}
    return atomic_write_text(path, json.dumps(obj, **dump_kw))


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` atomically (load it back with ``torch.load(..., weights_only=True)``)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        torch.save(obj, tmp)
        return commit_tmp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def content_identity(path: str | Path, n_hex: int = 16) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, sorted), ``n_hex`` long.

    Used as the identity of weights (cache keys, worker-side model caches): it changes whenever the
    content changes, whatever the path.
    """
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(functools.partial(f.read, 1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:n_hex]
