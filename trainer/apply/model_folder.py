"""A model folder from a stranger: verified once, then loaded only from a private copy of the verified bytes.

A folder written by ``m2f export`` is meant to be passed around, so :func:`private_copy` treats it as
hostile input (docs/DESIGN.md, "Model folders from strangers"):

- every entry is a regular file or folder: no symlinks (``rglob`` would not enter a symlinked folder, so
  it would escape the checksums), no devices or pipes;
- ``checksums.json`` is a flat ``{name: sha256}`` mapping of relative POSIX names (no absolute path,
  backslash, ``.`` or ``..`` part), listing exactly the files present;
- every name is on an allow-list (:func:`allowed_name`): safetensors weights, JSON settings, the model
  card, tokenizer files; never a pickle-format file, never a ``*.py``;
- sizes are capped (:data:`MAX_FILE_BYTES`, :data:`MAX_JSON_BYTES`, :data:`MAX_FILES`);
- the text model's ``config.json`` / ``tokenizer_config.json`` hold no ``auto_map`` (code to import), and
  every shard a ``*.safetensors.index.json`` names is an allowed ``.safetensors`` file of the folder;
- each file is copied into a private temporary folder (mode 0700) *while* its sha256 is computed, and the
  digest compared with ``checksums.json``: what is loaded afterwards is exactly what was checked, even if
  the original folder changes later.

``checksums.json`` proves integrity (nothing changed since export), not origin: anyone can write a
folder with matching checksums. :func:`checksums_digest` is the sha256 of ``checksums.json`` itself,
printed on the model card and by ``m2f predict``, for a user to compare with what the publisher states.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from pipeline.shown import shown

CHECKSUMS = "checksums.json"
META = "m2f_model.json"
DIALOGUE_WEIGHTS = "dialog.safetensors"
ENCODER_DIR = "encoders"
TEXT_DIR = "text_model"
#: Suffixes of pickle-based formats: never part of an exported folder.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
#: Files of a text model folder that transformers reads and that hold no code nor pickles.
TEXT_MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "m2f_text.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "sentencepiece.bpe.model",
        "spiece.model",
    }
)
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
TOP_FILES = frozenset({CHECKSUMS, META, DIALOGUE_WEIGHTS, "label_map.json", "README.md"})
ENCODER_FILES = frozenset(f"{k}.{s}" for k in ("audio", "face", "scene") for s in ("safetensors", "json"))
#: Caps: one file, one JSON (or text) file, the number of files, and the whole folder.
MAX_FILE_BYTES = 8 << 30
MAX_JSON_BYTES = 64 << 20
MAX_FILES = 256
MAX_TOTAL_BYTES = 16 << 30
#: Caps on a text model's ``config.json`` sizes (roberta-large: 1024 wide, 24 layers, 50265 tokens).
TEXT_CONFIG_CAPS = {
    "hidden_size": 8192,
    "num_hidden_layers": 96,
    "num_attention_heads": 128,
    "intermediate_size": 65536,
    "vocab_size": 1 << 20,
    "max_position_embeddings": 1 << 16,
}
#: Keys of a transformers config that import code from the folder (refused).
CODE_KEYS = ("auto_map", "custom_pipelines")


class ModelFolderError(ValueError):
    """An exported model folder or a run that cannot be used; the message says what to do."""


def text_model_file(name: str) -> bool:
    """True for a file name allowed in an exported text model folder."""
    return name in TEXT_MODEL_FILES or bool(SHARD_NAME.fullmatch(name))


def allowed_name(name: str) -> bool:
    """True for a relative POSIX name an exported model folder may hold."""
    parts = name.split("/")
    if len(parts) == 1:
        return name in TOP_FILES
    if len(parts) == 2 and parts[0] == ENCODER_DIR:
        return parts[1] in ENCODER_FILES
    return len(parts) == 2 and parts[0] == TEXT_DIR and text_model_file(parts[1])


def safe_relative(name: object) -> bool:
    """True for a relative POSIX name without backslash, drive, empty, ``.`` or ``..`` parts."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name or ":" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(p not in ("", ".", "..") for p in name.split("/"))


def sha256_of(path: Path) -> str:
    """Full sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every entry under ``folder`` except ``checksums.json``, sorted.

    Raises :class:`ModelFolderError` on a symlink or anything that is neither a file nor a folder (a
    symlinked folder would otherwise be skipped unhashed).
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise ModelFolderError(
                    f"{shown(path)}: a symlink in a model folder (it could point "
                    "anywhere); replace it by the file itself or export the model again"
                )
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise ModelFolderError(f"{shown(path)}: not a regular file; remove it from the model folder")
            if stat.S_ISREG(st.st_mode):
                found.append(path.relative_to(folder).as_posix())
            if len(found) > MAX_FILES:
                raise ModelFolderError(
                    f"{shown(folder)}: more than {MAX_FILES} files; not a model folder "
                    "written by `m2f export`"
                )
    return sorted(n for n in found if n != CHECKSUMS)


def write_checksums(folder: Path) -> Path:
    """``checksums.json``: ``{relative path: sha256}`` of every other file of ``folder``."""
    from pipeline.store.atomic import atomic_write_json

    digests = {name: sha256_of(folder / name) for name in folder_files(folder)}
    return atomic_write_json(folder / CHECKSUMS, digests)


def read_json_capped(path: Path, what: str = "export the model again", name: Path | None = None):
    """A JSON file (at most :data:`MAX_JSON_BYTES`) or a one-line :class:`ModelFolderError`.

    ``name``: the path to print in errors (default ``path``).
    """
    shown_path = shown(name or path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ModelFolderError(f"{shown_path}: missing; {what}") from None
    except OSError as e:
        raise ModelFolderError(f"{shown_path}: unreadable ({shown(e.strerror)}); {what}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ModelFolderError(f"{shown_path}: unreadable ({shown(e.strerror)}); {what}") from None
    if len(data) > MAX_JSON_BYTES:
        raise ModelFolderError(f"{shown_path}: larger than {MAX_JSON_BYTES >> 20} MiB; {what}")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ModelFolderError(f"{shown_path}: JSON nested too deeply; {what}") from None
    except ValueError as e:
        raise ModelFolderError(f"{shown_path}: unreadable JSON ({shown(e)}); {what}") from None


def read_checksums(folder: Path) -> dict[str, str]:
    """``checksums.json`` of ``folder``, checked to be a flat mapping of safe names to sha256 digests."""
    path = folder / CHECKSUMS
    if not path.exists() and not path.is_symlink():
        raise ModelFolderError(
            f"{shown(folder)}: no {CHECKSUMS}; not a folder written by `m2f export` (export the run again)"
        )
    listed = read_json_capped(path)
    if not isinstance(listed, dict) or len(listed) > MAX_FILES:
        raise ModelFolderError(f"{shown(path)}: not a file -> sha256 mapping; export the model again")
    for name, digest in listed.items():
        if not safe_relative(name):
            raise ModelFolderError(
                f"{shown(path)}: names {shown(name)}, not a plain relative path inside "
                "the folder (absolute, '..' or backslash); export the model again"
            )
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ModelFolderError(
                f"{shown(path)}: the entry of {shown(name)} is not a sha256 digest; export the model again"
            )
    return listed


def checksums_digest(folder: Path) -> str:
    """sha256 of ``checksums.json`` itself: what a user compares with the publisher's statement."""
    return sha256_of(Path(folder) / CHECKSUMS)


def _check_names(folder: Path, listed: dict[str, str]) -> None:
    present = folder_files(folder)
    for name in present:
        if Path(name).suffix.lower() in PICKLE_SUFFIXES:
            raise ModelFolderError(
                f"{shown(folder / name)}: pickle-format file in a model folder; m2f loads "
                "safetensors only, remove it or export the model again"
            )
        if name not in listed:
            raise ModelFolderError(
                f"{shown(folder / name)}: not listed in {CHECKSUMS} (a file was added); "
                "remove it or export the model again"
            )
    for name in listed:
        if name not in present:
            raise ModelFolderError(
                f"{shown(folder / name)}: listed in {CHECKSUMS} but missing; export the model again"
            )
        if name.endswith(".py"):
            raise ModelFolderError(
                f"{shown(folder / name)}: Python code in a model folder; m2f never runs "
                "code from a model folder, remove it or export the model again"
            )
        if not allowed_name(name):
            raise ModelFolderError(
                f"{shown(folder / name)}: not a file `m2f export` writes (allowed: "
                "safetensors weights, JSON settings, tokenizer files); remove it or "
                "export the model again"
            )


def _copy_hashed(src: Path, dst: Path, digest: str, budget: int) -> int:
    """Copy ``src`` (never through a symlink) to ``dst`` while hashing; returns the bytes copied."""
    cap = MAX_FILE_BYTES if src.suffix == ".safetensors" else MAX_JSON_BYTES
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    h, size = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as f, open(dst, "xb") as out:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ModelFolderError(f"{shown(src)}: not a regular file; export the model again")
        for block in iter(lambda: f.read(1 << 20), b""):
            size += len(block)
            if size > cap or size > budget:
                raise ModelFolderError(
                    f"{shown(src)}: larger than the {min(cap, budget) >> 20} MiB allowed "
                    "for it; not a model folder written by `m2f export`"
                )
            h.update(block)
            out.write(block)
    if h.hexdigest() != digest:
        raise ModelFolderError(
            f"{shown(src)}: sha256 does not match {CHECKSUMS} (changed or corrupted "
            "after export); export the model again"
        )
    return size


def _check_text_model(copy: Path, origin: Path) -> None:
    """No code to import, every index shard a listed ``.safetensors`` of the folder."""
    text = copy / TEXT_DIR
    if not text.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        if (text / name).is_file():
            config = read_json_capped(text / name)
            if not isinstance(config, dict):
                raise ModelFolderError(
                    f"{shown(origin / TEXT_DIR / name)}: not a JSON object; export the model again"
                )
            for key, cap in TEXT_CONFIG_CAPS.items():
                value = config.get(key, 0) if name == "config.json" else 0
                if type(value) is not int or not 0 <= value <= cap:
                    raise ModelFolderError(
                        f"{shown(origin / TEXT_DIR / name)}: {key} = "
                        f"{shown(value)!s:.40} is not an integer in 0..{cap}; export the "
                        "model again"
                    )
            for key in CODE_KEYS:
                if key in config:
                    raise ModelFolderError(
                        f"{shown(origin / TEXT_DIR / name)}: has {key!r} (code to import "
                        "from the folder); m2f never runs code from a model folder"
                    )
    for index in sorted(text.glob("*.index.json")):
        data = read_json_capped(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFolderError(
                f"{shown(origin / TEXT_DIR / index.name)}: no weight_map; export the model again"
            )
        for shard in set(weight_map.values()):
            if not (
                isinstance(shard, str)
                and "/" not in shard
                and text_model_file(shard)
                and shard.endswith(".safetensors")
                and (text / shard).is_file()
            ):
                raise ModelFolderError(
                    f"{shown(origin / TEXT_DIR / index.name)}: names shard "
                    f"{shown(shard)}, not a checked .safetensors file of the folder; "
                    "export the model again"
                )


def private_copy(folder: str | Path) -> Path:
    """Verify ``folder`` (see the module docs) and return a private copy of its verified bytes.

    The copy is a new temporary folder (mode 0700) that the caller removes (:class:`PrivateFolder`
    does). Raises :class:`ModelFolderError` (one line, names printed safely) on any failed check.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(
            f"{shown(folder)}: no such model folder; create one with `m2f export RUN --out DIR`"
        )
    listed = read_checksums(folder)
    _check_names(folder, listed)
    copy = Path(tempfile.mkdtemp(prefix="m2f-model-"))
    try:
        budget = MAX_TOTAL_BYTES
        for name in sorted(listed):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            budget -= _copy_hashed(folder / name, copy / name, listed[name], budget)
        shutil.copyfile(folder / CHECKSUMS, copy / CHECKSUMS, follow_symlinks=False)
        if read_checksums(copy) != listed:
            raise ModelFolderError(
                f"{shown(folder / CHECKSUMS)}: changed while the folder was verified; try again"
            )
        _check_text_model(copy, folder)
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    return copy


def verify_checksums(folder: Path) -> None:
    """Check ``folder`` as :func:`private_copy` does, keeping no copy."""
    shutil.rmtree(private_copy(folder), ignore_errors=True)


__all__ = [
    "CHECKSUMS",
    "ModelFolderError",
    "PICKLE_SUFFIXES",
    "allowed_name",
    "checksums_digest",
    "folder_files",
    "private_copy",
    "read_checksums",
    "read_json_capped",
    "safe_relative",
    "sha256_of",
    "text_model_file",
    "verify_checksums",
    "write_checksums",
]
