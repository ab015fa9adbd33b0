"""Hostile model folders for the tests: copies of an exported folder, tampered the ways an attacker would.

Each crafted folder has a ``checksums.json`` rewritten to match (an attacker controls the whole folder), so
only m2f's other checks can refuse it. Copies are hard-linked (cheap): tamper only by replacing files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def copy_folder(folder: Path, dst: Path) -> Path:
    """A hard-linked copy of ``folder`` at ``dst``."""
    shutil.copytree(folder, dst, copy_function=os.link)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` by a new file holding ``data`` (never writes into a hard-linked file)."""
    path.unlink()
    path.write_bytes(data)


def rewrite_checksums(folder: Path, extra: dict[str, str] | None = None) -> Path:
    """``checksums.json`` of every file under ``folder`` (symlinks followed, as a naive tool would) plus
    ``extra`` names (absolute, ``..``) the attacker adds."""
    digests = {}
    for p in sorted(folder.rglob("*")):
        name = p.relative_to(folder).as_posix()
        if p.is_file() and name != "checksums.json":
            digests[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    digests.update(extra or {})
    (folder / "checksums.json").unlink(missing_ok=True)
    (folder / "checksums.json").write_text(json.dumps(digests), encoding="utf-8")
    return folder
