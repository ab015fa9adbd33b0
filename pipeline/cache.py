"""The HDF5 feature cache: the format every stage writes and the trainer reads.

Layout of ``cache/<dataset>/<config-hash>/features.h5`` (schema 1)::

    /                      attrs: schema_version=1, dataset, created_utc, config (JSON), m2f_version
    /<split>/utt_id        (N,)  utf-8 str   rows sorted by dialogue, then position
    /<split>/dialogue_id   (N,)  utf-8 str
    /<split>/position      (N,)  int32
    /<split>/speaker       (N,)  utf-8 str
    /<split>/label         (N,)  utf-8 str   raw corpus label ("" where the corpus has none)
    /<split>/text          (N,)  utf-8 str
    /<split>/text_emb      (N, D_T) float32  zeros where has_text is False
    /<split>/audio_emb     (N, D_A) float32  zeros where has_audio is False
    /<split>/visual_emb    (N, D_V) float32  [face | scene]; face part zeros where has_face is False
    /<split>/has_text, has_audio, has_visual, has_face   (N,) bool

Crash safety. One process (the driver) owns the writer. Rows arrive in batches; each batch becomes a
small *shard* file, written under a temporary name and renamed into ``features.h5.shards/`` only
when complete, so a ``kill -9`` at any moment leaves only whole shards behind (and perhaps a
``*.tmp`` that is ignored and removed). :meth:`ShardedWriter.done_ids` lists what the shards hold, so
a rerun skips finished work. :meth:`ShardedWriter.finalize` merges the shards into the final file,
again through a temporary name and an atomic rename, then removes the shards; it first checks that
the disk has room for the merged file (:class:`DiskSpaceError`, shards kept), and a merge that died
half-way (full disk, segfault) leaves a ``features.h5.tmp`` that the next writer removes under its lock.

The writers are the last guard of the format: a batch holding a non-finite float (NaN, inf) is refused
(:class:`NonFiniteError`), and so is a string with a NUL character (HDF5 strings cannot hold one).
:func:`folder_lock` is the one flock helper: the writers, encoder training and text fine-tuning take it.

:class:`ShardedWriter` is generic (any named row arrays, including ragged ones given as lists of
arrays); :class:`FeatureWriter` adds the feature schema above. Read a finished file with plain h5py
or with :func:`read_split`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import h5py
import numpy as np

from pipeline import __version__
from pipeline.atomic import commit_tmp, tmp_path
from pipeline.names import SPLITS

SCHEMA_VERSION = 1
STR_FIELDS = ("utt_id", "dialogue_id", "speaker", "label", "text")
INT_FIELDS = ("position",)
EMB_FIELDS = ("text_emb", "audio_emb", "visual_emb")
FLAG_FIELDS = ("has_text", "has_audio", "has_visual", "has_face")
FEATURE_FIELDS = STR_FIELDS + INT_FIELDS + EMB_FIELDS + FLAG_FIELDS

_STR = h5py.string_dtype("utf-8")
_OFFSETS = "__offsets"  # suffix of the offsets dataset of a ragged field
_SHARD_RE = re.compile(r"^(?P<split>\w+)-(?P<n>\d{6})\.h5$")


def config_hash(config: Mapping) -> str:
    """12 hex digits identifying a configuration (JSON with sorted keys, sha256)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _is_ragged(value) -> bool:
    return isinstance(value, list | tuple) and len(value) > 0 and isinstance(value[0], np.ndarray)


def _write_rows(group: h5py.Group, rows: Mapping[str, object]) -> None:
    """Write row arrays into ``group``: str lists as utf-8, ragged lists as data + offsets."""
    for name, value in rows.items():
        if _is_ragged(value):
            lengths = np.array([len(v) for v in value], dtype=np.int64)
            data = np.concatenate(value, axis=0) if lengths.sum() else np.zeros(
                (0,) + value[0].shape[1:], dtype=value[0].dtype)
            group.create_dataset(name + _OFFSETS, data=np.concatenate([[0], np.cumsum(lengths)]))
            _create(group, name, data)
        else:
            arr = np.asarray(value)
            if arr.dtype.kind in ("U", "O"):
                group.create_dataset(name, data=[str(x) for x in arr], dtype=_STR)
            else:
                _create(group, name, arr)


def _create(group: h5py.Group, name: str, arr: np.ndarray) -> None:
    if arr.size == 0:
        group.create_dataset(name, data=arr)
    else:
        group.create_dataset(name, data=arr, chunks=True, compression="lzf")


def _read_group(group: h5py.Group, index: np.ndarray | None = None) -> dict[str, object]:
    """Read every field of ``group`` (optionally only rows ``index``); ragged fields as lists."""
    out: dict[str, object] = {}
    for name, ds in group.items():
        if name.endswith(_OFFSETS):
            continue
        if name + _OFFSETS in group:
            off = group[name + _OFFSETS][()]
            rows = range(len(off) - 1) if index is None else index
            data = ds
            out[name] = [data[off[i]:off[i + 1]] for i in rows]
        elif h5py.check_string_dtype(ds.dtype):
            vals = ds.asstr()[()]
            out[name] = np.asarray(vals if index is None else vals[index], dtype=object)
        else:
            out[name] = ds[()] if index is None else ds[()][index]
    return out


def _concat(a, b):
    if isinstance(a, list):
        return a + b
    return np.concatenate([a, b], axis=0)


class CacheError(RuntimeError):
    """A cache file or folder cannot be written now; the message says why and what to do."""


class CacheLockedError(CacheError):
    """Another live process holds the lock of the same file or folder."""


class DiskSpaceError(CacheError):
    """Not enough free space to merge the shards; they are kept for a rerun."""


class NonFiniteError(ValueError):
    """A batch holds a NaN or an infinity; the cache never stores one."""


def _lock_holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def acquire_lock(lock_path: str | Path, doing: str, kept: str = "") -> TextIO:
    """Take an exclusive ``flock`` on ``lock_path`` (created with its folder) and write this pid into it.

    Returns the open lock file: closing it releases the lock (so does the end of the process, even
    by ``kill -9``). Prefer :func:`folder_lock` unless the lock outlives one ``with`` block.

    Parameters
    ----------
    lock_path : path-like
        The lock file.
    doing : str
        What the holder does, for the error, e.g. ``"writing cache/meld/x/features.h5"``.
    kept : str
        What a stopped holder keeps, for the error, e.g. ``" (its finished batches are kept)"``.

    Raises
    ------
    CacheLockedError
        Another live process holds it; the message names its pid.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(lock_path, "a+")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise CacheLockedError(
            f"another m2f process is {doing}: locked by another run (pid {_lock_holder(lock_path)}, lock "
            f"{lock_path}); let it finish or stop it{kept}, then run this command again") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


@contextmanager
def folder_lock(folder: str | Path, name: str, doing: str) -> Iterator[Path]:
    """Hold ``<folder>/<name>`` (see :func:`acquire_lock`) for the ``with`` block; yields the folder.

    Two runs that would write the same folder with the same temporary names (two extracts of one
    corpus training its encoders, or fine-tuning its text model) cannot overlap: the second gets
    :class:`CacheLockedError` naming the first one's pid.

    Examples
    --------
    >>> with folder_lock("cache/meld/encoders/ab12", ".train.lock", "training"):  # doctest: +SKIP
    ...     ...
    """
    folder = Path(folder)
    lock = acquire_lock(folder / name, doing)
    try:
        yield folder
    finally:
        lock.close()


def _human_size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1e3:.0f} kB"


def _first_bad_row(value, n: int) -> tuple[int, type[ValueError], str] | None:
    """``(row, error class, what)`` of a column's first non-finite float or NUL-holding string, or None."""
    non_finite = (NonFiniteError, "is not finite (NaN or inf)")
    if _is_ragged(value):
        for i, v in enumerate(value):
            if v.dtype.kind in "fc" and not np.isfinite(v).all():
                return (i, *non_finite)
        return None
    arr = np.asarray(value)
    if arr.dtype.kind in "fc":
        finite = np.isfinite(arr.reshape(n, -1)).all(axis=1)
        if not finite.all():
            return (int(np.argmin(finite)), *non_finite)
    elif arr.dtype.kind in "UO":
        for i, x in enumerate(arr):
            if isinstance(x, str) and "\x00" in x:
                return i, ValueError, "holds a NUL character (\\x00), which HDF5 strings cannot store"
    return None


class ShardedWriter:
    """Append-only, crash-safe writer of row batches that one process owns.

    Parameters
    ----------
    path : path-like
        The final file, e.g. ``cache/meld/ab12cd34ef56/features.h5``. Shards live beside it in
        ``<path>.shards/``.
    attrs : mapping
        File attributes of the final file (JSON-encoded when not a str/number).

    Notes
    -----
    Every row carries ``utt_id``. A shard is one split's batch; appending the same id twice keeps
    the later row. The writer holds an exclusive ``flock`` on ``<path>.shards/.lock`` until
    :meth:`close` (or until its process dies, even by ``kill -9``): a second run writing the same file
    at the same time gets :class:`CacheLockedError` instead of interleaving shards.

    Raises
    ------
    NonFiniteError
        From :meth:`append`, for a batch with a NaN or infinity in any float field.
    DiskSpaceError
        From :meth:`finalize`, when the disk cannot hold the merged file.
    """

    def __init__(self, path: str | Path, attrs: Mapping[str, object] | None = None):
        self.path = Path(path)
        self.shard_dir = self.path.with_name(self.path.name + ".shards")
        self.attrs = dict(attrs or {})
        self._lock = acquire_lock(self.shard_dir / ".lock", f"writing {self.path}",
                                  " (its finished batches are kept)")
        # under the lock, nobody else is writing: a *.tmp is a half-written shard of a killed run, or the
        # half-merged final file of a merge that died (full disk, segfault), possibly GBs for media.h5
        for tmp in [*self.shard_dir.glob("*.tmp"), tmp_path(self.path)]:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the lock (also released when the process exits)."""
        if not self._lock.closed:
            self._lock.close()

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------
    def shards(self, split: str | None = None) -> list[Path]:
        """Complete shard files, in write order."""
        found = []
        for p in self.shard_dir.glob("*.h5"):
            m = _SHARD_RE.match(p.name)
            if m and (split is None or m["split"] == split):
                found.append((int(m["n"]), p))
        return [p for _, p in sorted(found)]

    def done_ids(self, split: str | None = None) -> set[str]:
        """Ids already written, in shards and (if it exists) in the finished file."""
        done: set[str] = set()
        for p in self.shards(split):
            with h5py.File(p, "r") as f:
                done.update(f["utt_id"].asstr()[()])
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                for s in f:
                    if split is None or s == split:
                        done.update(f[s]["utt_id"].asstr()[()])
        return done

    def is_complete(self) -> bool:
        """True when the final file exists and no shard is waiting to be merged."""
        return self.path.exists() and not self.shards()

    # -- writing -----------------------------------------------------------------------------
    def append(self, split: str, rows: Mapping[str, object]) -> Path | None:
        """Write one batch of rows of ``split`` as a new shard (atomically). Returns its path."""
        if "utt_id" not in rows:
            raise ValueError("rows need an 'utt_id' field")
        n = len(rows["utt_id"])
        if n == 0:
            return None
        for name, value in rows.items():
            if len(value) != n:
                raise ValueError(f"field {name!r} has {len(value)} rows, utt_id has {n}")
        for name, value in rows.items():
            bad = _first_bad_row(value, n)
            if bad is not None:
                row, error, what = bad
                utt = str(rows["utt_id"][row])
                raise error(
                    f"{name} of {utt!r} (split {split!r}, row {row} of the batch) {what}; "
                    f"nothing of this batch was written to {self.path}: mark the utterance's modality "
                    "missing instead of writing such a value")
        existing = self.shards()
        last = max((int(_SHARD_RE.match(p.name)["n"]) for p in existing), default=-1)
        final = self.shard_dir / f"{split}-{last + 1:06d}.h5"
        tmp = tmp_path(final)
        with h5py.File(tmp, "w") as f:
            _write_rows(f, rows)
        return commit_tmp(tmp, final)

    def finalize(self, order: Mapping[str, Sequence[str]] | None = None) -> Path:
        """Merge shards (and an existing final file) into the final file, atomically.

        Parameters
        ----------
        order : mapping split -> sequence of utt_id, optional
            Row order of each split in the final file (e.g. by dialogue then position). Rows not
            named in it are dropped; ids named but never written are an error; the split is merged in
            memory. Without it, rows keep write order and are copied one shard at a time (for
            large files such as ``media.h5``, read by id).
        """
        splits = {_SHARD_RE.match(p.name)["split"] for p in self.shards()}
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                splits |= set(f)
        self._check_free_space()
        tmp = tmp_path(self.path)
        try:
            self._merge(tmp, splits, order)
        except BaseException:  # full disk, Ctrl-C: no half-merged file is left behind
            tmp.unlink(missing_ok=True)
            raise
        commit_tmp(tmp, self.path)
        for p in self.shards():
            p.unlink()
        return self.path

    def _check_free_space(self) -> None:
        """Stop before merging when the disk cannot hold the merged file (about the shards' size)."""
        parts = self.shards() + ([self.path] if self.path.exists() else [])
        needed = sum(p.stat().st_size for p in parts)
        free = shutil.disk_usage(self.path.parent).free
        if needed > free:
            raise DiskSpaceError(
                f"not enough free space to merge {len(parts)} file(s) into {self.path}: it needs about "
                f"{_human_size(needed)}, {_human_size(free)} free on {self.path.parent}; free some space "
                f"(the finished shards in {self.shard_dir} are kept) and run this command again")

    def _merge(self, tmp: Path, splits: set[str], order: Mapping[str, Sequence[str]] | None) -> None:
        with h5py.File(tmp, "w") as out:
            for k, v in {**self.attrs, "created_utc": datetime.now(UTC).isoformat()}.items():
                out.attrs[k] = v if isinstance(v, str | int | float | np.number) else json.dumps(v)
            for split in sorted(splits):
                if order is None:
                    self._stream_split(split, out.create_group(split))
                    continue
                rows = self._collect(split)
                ids = list(rows["utt_id"])
                if order is not None and split in order:
                    where = {u: i for i, u in enumerate(ids)}
                    missing = [u for u in order[split] if u not in where]
                    if missing:
                        raise ValueError(f"{len(missing)} ids of split {split!r} were never written, "
                                         f"e.g. {missing[:3]}")
                    idx = np.array([where[u] for u in order[split]], dtype=np.int64)
                    rows = {k: ([v[i] for i in idx] if isinstance(v, list) else v[idx])
                            for k, v in rows.items()}
                _write_rows(out.create_group(split), rows)

    def _parts(self, split: str) -> list[Path]:
        parts = []
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                if split in f:
                    parts.append(self.path)
        return parts + self.shards(split)

    def _stream_split(self, split: str, out: h5py.Group) -> None:
        """Copy a split part by part into ``out`` (write order, last row per id kept).

        Memory stays at one part's worth, so a many-GB media file can be merged.
        """
        parts = self._parts(split)

        def group(f: h5py.File, p: Path) -> h5py.Group:
            return f[split] if p == self.path else f

        ids = []
        for p in parts:
            with h5py.File(p, "r") as f:
                ids.append(group(f, p)["utt_id"].asstr()[()])
        last = {u: (k, i) for k, part_ids in enumerate(ids) for i, u in enumerate(part_ids)}
        for k, p in enumerate(parts):
            keep = np.array([last[u] == (k, i) for i, u in enumerate(ids[k])], dtype=bool)
            if not keep.any():
                continue
            with h5py.File(p, "r") as f:
                rows = _read_group(group(f, p))
            index = np.flatnonzero(keep)
            rows = {n: ([v[i] for i in index] if isinstance(v, list) else v[index]) for n, v in rows.items()}
            _append_rows(out, rows)

    def _collect(self, split: str) -> dict[str, object]:
        parts: list[dict[str, object]] = []
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                if split in f:
                    parts.append(_read_group(f[split]))
        for p in self.shards(split):
            with h5py.File(p, "r") as f:
                parts.append(_read_group(f))
        rows = parts[0]
        for p in parts[1:]:
            rows = {k: _concat(rows[k], p[k]) for k in rows}
        # keep the last row written for each id
        last = {u: i for i, u in enumerate(rows["utt_id"])}
        if len(last) < len(rows["utt_id"]):
            keep = np.array(sorted(last.values()), dtype=np.int64)
            rows = {k: ([v[i] for i in keep] if isinstance(v, list) else v[keep]) for k, v in rows.items()}
        return rows


def _append_rows(group: h5py.Group, rows: Mapping[str, object]) -> None:
    """Append row arrays to resizable datasets in ``group`` (created on first use)."""
    for name, value in rows.items():
        if isinstance(value, list):  # ragged: data + offsets
            lengths = np.array([len(v) for v in value], dtype=np.int64)
            data = np.concatenate(value, axis=0)
            if name + _OFFSETS in group:
                off = group[name + _OFFSETS]
                start = off[-1]
            else:
                off = group.create_dataset(name + _OFFSETS, data=np.zeros(1, np.int64), maxshape=(None,),
                                           chunks=True)
                start = 0
            _extend(off, start + np.cumsum(lengths))
            _extend_or_create(group, name, data)
        else:
            arr = np.asarray(value)
            if arr.dtype.kind in ("U", "O"):
                arr = np.asarray([str(x) for x in arr], dtype=object)
            _extend_or_create(group, name, arr)


def _extend_or_create(group: h5py.Group, name: str, arr: np.ndarray) -> None:
    if name in group:
        _extend(group[name], arr)
        return
    kw = {"dtype": _STR} if arr.dtype == object else {}
    group.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True, compression="lzf",
                         **kw)


def _extend(ds: h5py.Dataset, arr: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(arr), axis=0)
    ds[n:] = arr


class FeatureWriter(ShardedWriter):
    """:class:`ShardedWriter` for ``features.h5``: checks the schema of every batch.

    Parameters
    ----------
    path : path-like
        Final ``features.h5``.
    dataset : str
        Corpus name, stored as a file attribute.
    config : mapping
        Every option that changes the numbers; stored as JSON.
    """

    def __init__(self, path: str | Path, dataset: str, config: Mapping):
        super().__init__(path, {
            "schema_version": SCHEMA_VERSION, "dataset": dataset,
            "config": json.dumps(config, sort_keys=True, default=str), "m2f_version": __version__,
        })

    def append(self, split: str, rows: Mapping[str, object]) -> Path | None:
        missing = [k for k in FEATURE_FIELDS if k not in rows]
        extra = [k for k in rows if k not in FEATURE_FIELDS]
        if missing or extra:
            raise ValueError(f"feature rows: missing fields {missing}, unknown fields {extra}")
        typed = dict(rows)
        for k in EMB_FIELDS:
            typed[k] = np.asarray(rows[k], dtype=np.float32)
            if typed[k].ndim != 2:
                raise ValueError(f"{k} must be 2-D (N, D), got shape {typed[k].shape}")
        for k in FLAG_FIELDS:
            typed[k] = np.asarray(rows[k], dtype=bool)
        typed["position"] = np.asarray(rows["position"], dtype=np.int32)
        for k in STR_FIELDS:
            typed[k] = np.asarray(["" if x is None else str(x) for x in rows[k]], dtype=object)
        return super().append(split, typed)


@dataclass
class SplitArrays:
    """One split of a features.h5 as in-memory arrays (row order as in the file)."""

    utt_id: np.ndarray
    dialogue_id: np.ndarray
    position: np.ndarray
    speaker: np.ndarray
    label: np.ndarray
    text: np.ndarray
    text_emb: np.ndarray
    audio_emb: np.ndarray
    visual_emb: np.ndarray
    has_text: np.ndarray
    has_audio: np.ndarray
    has_visual: np.ndarray
    has_face: np.ndarray

    def __len__(self) -> int:
        return len(self.utt_id)


def read_attrs(path: str | Path) -> dict[str, object]:
    """File attributes of a features.h5, with ``config`` decoded from JSON."""
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    if isinstance(attrs.get("config"), str):
        attrs["config"] = json.loads(attrs["config"])
    return attrs


def list_splits(path: str | Path) -> list[str]:
    """Splits present in a features.h5."""
    with h5py.File(path, "r") as f:
        return list(f)


def read_split(path: str | Path, split: str) -> SplitArrays:
    """Load one split of a features.h5 as arrays.

    Raises
    ------
    KeyError
        If the file has no such split (the message lists the ones it has).
    """
    with h5py.File(path, "r") as f:
        if split not in f:
            raise KeyError(f"{path} has no split {split!r}; it has {sorted(f)}")
        rows = _read_group(f[split])
    return SplitArrays(**{k: rows[k] for k in FEATURE_FIELDS})


def validate_features(path: str | Path) -> list[str]:
    """Check a features.h5 against schema 1; return a list of problems (empty = valid).

    Each problem is one line naming the file, and where it applies the split, the HDF5 dataset and the
    row (with its ``utt_id``): ``<file>: split 'dev', dataset 'text_emb', row 3 (utt_id 'x'): ...``.
    Checked: readable HDF5, file attributes, every field present with one row per ``utt_id``, 1-D
    string fields, 2-D float embeddings of one width across splits, unique ids, each dialogue one block
    with rising positions, zero embeddings where a modality is missing, and no NaN or infinity.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        reason = " ".join(str(e).split())
        return [f"{path}: not a readable HDF5 file ({reason})"]
    with f:
        problems = [f"{path}: missing file attribute {key!r}"
                    for key in ("schema_version", "dataset", "created_utc", "config", "m2f_version")
                    if key not in f.attrs]
        if f.attrs.get("schema_version") not in (SCHEMA_VERSION,):
            problems.append(f"{path}: schema_version {f.attrs.get('schema_version')!r} != {SCHEMA_VERSION}")
        widths: dict[str, tuple[int, str]] = {}  # from train first, so train is the reference
        for split in sorted(f, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
            problems += _split_problems(path, split, f[split], widths)
    return problems


def _split_problems(path: Path, split: str, g, widths: dict[str, tuple[int, str]]) -> list[str]:
    """Problems of one split group (see :func:`validate_features`); ``widths`` carries over splits."""

    def at(name: str | None = None, row: int | None = None, ids=None) -> str:
        where = f"{path}: split {split!r}" + (f", dataset {name!r}" if name else "")
        if row is not None:
            where += f", row {row}" + (f" (utt_id {str(ids[row])!r})" if ids is not None else "")
        return where

    if not isinstance(g, h5py.Group):
        return [f"{at()}: not a group of datasets"]
    missing = [k for k in FEATURE_FIELDS if k not in g]
    if missing:
        return [f"{at(missing[0])}: missing (the split lacks {', '.join(missing)})"]
    problems = []
    n = g["utt_id"].shape[0] if g["utt_id"].ndim else 0
    for k in FEATURE_FIELDS:
        if k in STR_FIELDS and not h5py.check_string_dtype(g[k].dtype):
            problems.append(f"{at(k)}: dtype {g[k].dtype} is not a string")
        elif k not in EMB_FIELDS and g[k].ndim != 1:
            problems.append(f"{at(k)}: shape {g[k].shape} is not one value per row")
        elif g[k].shape[0] != n:
            problems.append(f"{at(k)}: {g[k].shape[0]} rows, utt_id has {n}")
    for k in EMB_FIELDS:
        if g[k].ndim != 2 or g[k].dtype.kind != "f":
            shape, dtype = g[k].shape, g[k].dtype
            problems.append(f"{at(k)}: shape {shape}, dtype {dtype}; expected 2-D float (rows, width)")
            continue
        width, first = widths.setdefault(k, (g[k].shape[1], split))
        if width != g[k].shape[1]:
            problems.append(f"{at(k)}: width {g[k].shape[1]} != {width} in split {first!r}")
    if problems:  # row-level checks need whole, well-shaped columns
        return problems
    ids = g["utt_id"].asstr()[()]
    dia = g["dialogue_id"].asstr()[()]
    pos = g["position"][()]
    _, first_of = np.unique(ids, return_index=True)
    if len(first_of) != n:
        row = min(set(range(n)) - set(first_of.tolist()))
        problems.append(f"{at('utt_id', row, ids)}: duplicate id")
    # rows sorted by dialogue then position: each dialogue is one block with rising positions
    starts = np.concatenate([[0], np.flatnonzero(dia[1:] != dia[:-1]) + 1]) if n else np.zeros(0, int)
    _, first_block = np.unique(dia[starts], return_index=True)
    if len(first_block) != len(starts):
        row = int(starts[min(set(range(len(starts))) - set(first_block.tolist()))])
        problems.append(f"{at('dialogue_id', row, ids)}: dialogue {dia[row]!r} is not one contiguous block")
    falling = np.flatnonzero((dia[1:] == dia[:-1]) & (pos[1:] <= pos[:-1])) + 1
    if len(falling):
        row = int(falling[0])
        problems.append(f"{at('position', row, ids)}: positions of dialogue {dia[row]!r} do not rise "
                        f"({pos[row]} after {pos[row - 1]})")
    for emb, flag in (("text_emb", "has_text"), ("audio_emb", "has_audio"), ("visual_emb", "has_visual")):
        e, h = g[emb][()], g[flag][()].astype(bool)
        finite = np.isfinite(e).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            problems.append(f"{at(emb, row, ids)}: not finite (NaN or inf; {int((~finite).sum())} row(s))")
        stray = np.flatnonzero(~h & (e != 0).any(axis=1))
        if len(stray):
            problems.append(f"{at(emb, int(stray[0]), ids)}: non-zero rows where {flag} is False")
    return problems


class RowReader:
    """Lazy, row-at-a-time access to one split of a finished sharded file (e.g. ``media.h5``).

    Only the requested row is read from disk, so a many-GB file can feed a training loop.
    Use as a context manager, or call :meth:`close`. Not shared across processes: open one per
    worker.

    Examples
    --------
    >>> with RowReader("cache/sample/x/media.h5", "train") as r:   # doctest: +SKIP
    ...     first = r.row(0, ["utt_id", "waveform"])
    """

    def __init__(self, path: str | Path, split: str):
        self.path = Path(path)
        self._f = h5py.File(self.path, "r")
        if split not in self._f:
            have = sorted(self._f)
            self._f.close()
            raise KeyError(f"{self.path} has no split {split!r}; it has {have}")
        self._g = self._f[split]
        self._offsets = {n[: -len(_OFFSETS)]: self._g[n][()] for n in self._g if n.endswith(_OFFSETS)}
        self.utt_ids = self._g["utt_id"].asstr()[()]

    def __len__(self) -> int:
        return len(self.utt_ids)

    def column(self, name: str) -> np.ndarray:
        """A whole non-ragged column (e.g. ``label``)."""
        ds = self._g[name]
        return np.asarray(ds.asstr()[()], dtype=object) if h5py.check_string_dtype(ds.dtype) else ds[()]

    def row(self, i: int, names: Sequence[str] | None = None) -> dict[str, object]:
        """Fields of row ``i`` (all fields when ``names`` is None)."""
        names = names or [n for n in self._g if not n.endswith(_OFFSETS)]
        out: dict[str, object] = {}
        for n in names:
            ds = self._g[n]
            if n in self._offsets:
                off = self._offsets[n]
                out[n] = ds[off[i]:off[i + 1]]
            elif h5py.check_string_dtype(ds.dtype):
                out[n] = ds.asstr()[i]
            else:
                out[n] = ds[i]
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
