"""The crash-safe cache writers: every stage writes its HDF5 file through them.

One process (the driver) owns a writer. Rows arrive in batches; each batch becomes a small *shard* file,
written under a temporary name and renamed into ``<file>.shards/`` only when complete, so a ``kill -9``
at any moment leaves only whole shards behind (and perhaps a ``*.tmp`` that is ignored and removed).
:meth:`ShardedWriter.done_ids` lists what the shards hold, so a rerun skips finished work, and
:meth:`ShardedWriter.finalize` merges the shards into the final file, again through a temporary name
and an atomic rename, then removes the shards; it first checks that the disk has room for the merged
file (:class:`DiskSpaceError`, shards kept), and a merge that died half-way (full disk, segfault)
leaves a ``<file>.tmp`` that the next writer removes under its lock (:mod:`pipeline.store.locks`). The
writers are the last guard of the format: a batch holding a non-finite float (NaN, inf) is refused
(:class:`NonFiniteError`), and so is a string with a NUL character (HDF5 strings cannot hold one).
:class:`ShardedWriter` is generic (any named row arrays, including ragged ones given as lists of
arrays, see :mod:`pipeline.store.h5rows`); :class:`FeatureWriter` adds the schema of
:mod:`pipeline.store.features`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import __version__
from pipeline.store.atomic import commit_tmp, stale_tmps, tmp_path
from pipeline.store.features import (
    EMB_FIELDS,
    FEATURE_FIELDS,
    FLAG_FIELDS,
    LOGITS_CLASSES,
    LOGITS_FIELD,
    SCHEMA_VERSION,
    STR_FIELDS,
)
from pipeline.store.h5rows import append_rows, concat_rows, is_ragged, read_group, write_rows
from pipeline.store.locks import CacheError, acquire_lock

_SHARD_RE = re.compile(r"^(?P<split>\w+)-(?P<n>\d{6})\.h5$")


def _shard_name(path: Path) -> re.Match[str]:
    """The match of a name :meth:`ShardedWriter.shards` returned (those all match ``_SHARD_RE``)."""
    m = _SHARD_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not a shard file name")
    return m


def config_hash(config: Mapping) -> str:
    """12 hex digits identifying a configuration (JSON with sorted keys, sha256)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class DiskSpaceError(CacheError):
    """Not enough free space to merge the shards; they are kept for a rerun."""


class NonFiniteError(ValueError):
    """A batch holds a NaN or an infinity; the cache never stores one."""


def _human_size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1e3:.0f} kB"


def _first_bad_row(value, n: int) -> tuple[int, type[ValueError], str] | None:
    """``(row, error class, what)`` of a column's first non-finite float or NUL-holding string, or None."""
    non_finite = (NonFiniteError, "is not finite (NaN or inf)")
    if is_ragged(value):
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
    at the same time gets :class:`pipeline.store.locks.CacheLockedError` instead of interleaving shards.

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
        self._lock = acquire_lock(
            self.shard_dir / ".lock", f"writing {self.path}", " (its finished batches are kept)"
        )
        # under the lock, nobody else is writing: a *.tmp is a half-written shard of a killed run, or the
        # half-merged final file of a merge that died (full disk, segfault), possibly GBs for media.h5
        for tmp in [*self.shard_dir.glob("*.tmp"), *stale_tmps(self.path)]:
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
    def append(self, split: str, rows: Mapping[str, Any]) -> Path | None:
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
                    "missing instead of writing such a value"
                )
        existing = self.shards()
        last = max((int(_shard_name(p)["n"]) for p in existing), default=-1)
        final = self.shard_dir / f"{split}-{last + 1:06d}.h5"
        tmp = tmp_path(final)
        with h5py.File(tmp, "w") as f:
            write_rows(f, rows)
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
        splits = {_shard_name(p)["split"] for p in self.shards()}
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
                f"(the finished shards in {self.shard_dir} are kept) and run this command again"
            )

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
                        raise ValueError(
                            f"{len(missing)} ids of split {split!r} were never written, e.g. {missing[:3]}"
                        )
                    idx = np.array([where[u] for u in order[split]], dtype=np.int64)
                    rows = {
                        k: ([v[i] for i in idx] if isinstance(v, list) else v[idx]) for k, v in rows.items()
                    }
                write_rows(out.create_group(split), rows)

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
                rows = read_group(group(f, p))
            index = np.flatnonzero(keep)
            rows = {n: ([v[i] for i in index] if isinstance(v, list) else v[index]) for n, v in rows.items()}
            append_rows(out, rows)

    def _collect(self, split: str) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                if split in f:
                    parts.append(read_group(f[split]))
        for p in self.shards(split):
            with h5py.File(p, "r") as f:
                parts.append(read_group(f))
        rows = parts[0]
        for part in parts[1:]:
            rows = {k: concat_rows(rows[k], part[k]) for k in rows}
        # keep the last row written for each id
        last = {u: i for i, u in enumerate(rows["utt_id"])}
        if len(last) < len(rows["utt_id"]):
            keep = np.array(sorted(last.values()), dtype=np.int64)
            rows = {k: ([v[i] for i in keep] if isinstance(v, list) else v[keep]) for k, v in rows.items()}
        return rows


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
    text_classes : sequence of str, optional
        The classes of the text model's head: every batch then carries ``text_logits`` ``(N, C)`` and
        the merged file names the classes in that dataset's ``classes`` attribute; without it no batch
        may carry them.
    """

    def __init__(
        self, path: str | Path, dataset: str, config: Mapping, text_classes: Sequence[str] | None = None
    ):
        self.text_classes = None if text_classes is None else tuple(text_classes)
        super().__init__(
            path,
            {
                "schema_version": SCHEMA_VERSION,
                "dataset": dataset,
                "config": json.dumps(config, sort_keys=True, default=str),
                "m2f_version": __version__,
            },
        )

    def append(self, split: str, rows: Mapping[str, Any]) -> Path | None:
        fields = FEATURE_FIELDS + ((LOGITS_FIELD,) if self.text_classes is not None else ())
        missing = [k for k in fields if k not in rows]
        extra = [k for k in rows if k not in fields]
        if missing or extra:
            raise ValueError(f"feature rows: missing fields {missing}, unknown fields {extra}")
        typed = dict(rows)
        if self.text_classes is not None:
            typed[LOGITS_FIELD] = np.asarray(rows[LOGITS_FIELD], dtype=np.float32)
            if typed[LOGITS_FIELD].shape != (len(rows["utt_id"]), len(self.text_classes)):
                raise ValueError(
                    f"{LOGITS_FIELD} must be (N, {len(self.text_classes)}) for the head's classes "
                    f"{list(self.text_classes)}, got shape {typed[LOGITS_FIELD].shape}"
                )
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

    def _merge(self, tmp: Path, splits: set[str], order: Mapping[str, Sequence[str]] | None) -> None:
        super()._merge(tmp, splits, order)
        if self.text_classes is None:
            return
        with h5py.File(tmp, "r+") as f:  # still the temporary file: the rename publishes it whole
            for split in f:
                if LOGITS_FIELD in f[split]:
                    f[split][LOGITS_FIELD].attrs.create(
                        LOGITS_CLASSES, list(self.text_classes), dtype=h5py.string_dtype("utf-8")
                    )
