"""Named row arrays in HDF5 groups: the low-level storage under every sharded cache file.

A batch of rows is a mapping of field name to array with one entry per row; strings are stored as
utf-8, and a *ragged* field (rows of different lengths, given as a list of arrays, e.g. waveforms) as
one concatenated dataset plus a ``<name>__offsets`` dataset of row boundaries. :func:`write_rows`
writes a batch into a group once, :func:`append_rows` grows resizable datasets batch by batch (so a
merge holds one part in memory), :func:`read_group` reads a group back (all rows or some), and
:class:`RowReader` reads a finished file one row at a time (e.g. ``media.h5`` feeding a training loop).

Both read a field renamed since (:data:`RENAMED_FIELDS`) under its current name, so a cache written
before the rename stays usable, and a merge of old and new shards writes one column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

_STR = h5py.string_dtype("utf-8")
_OFFSETS = "__offsets"  # suffix of the offsets dataset of a ragged field

#: Fields renamed since files were first written with them: old name -> current name. ``media.h5``
#: rows flagged the visual modality ``has_video`` before m2f named it ``has_visual`` as features.h5 does.
RENAMED_FIELDS = {"has_video": "has_visual"}


def current_names(group: h5py.Group) -> dict[str, str]:
    """Current field name -> name stored in ``group``, for every field (offsets datasets left out).

    A field stored under an old name of :data:`RENAMED_FIELDS` is listed under its new one, unless the
    group also holds the new name (then both are listed as stored).
    """
    stored = [n for n in group if not n.endswith(_OFFSETS)]
    return {(RENAMED_FIELDS[n] if RENAMED_FIELDS.get(n, n) not in group else n): n for n in stored}


def is_ragged(value) -> bool:
    """True for a ragged field: a non-empty list or tuple of arrays (one array per row)."""
    return isinstance(value, list | tuple) and len(value) > 0 and isinstance(value[0], np.ndarray)


def write_rows(group: h5py.Group, rows: Mapping[str, Any]) -> None:
    """Write row arrays into ``group``: str lists as utf-8, ragged lists as data + offsets."""
    for name, value in rows.items():
        if is_ragged(value):
            lengths = np.array([len(v) for v in value], dtype=np.int64)
            data = (
                np.concatenate(value, axis=0)
                if lengths.sum()
                else np.zeros((0,) + value[0].shape[1:], dtype=value[0].dtype)
            )
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


def read_group(group: h5py.Group, index: np.ndarray | None = None) -> dict[str, Any]:
    """Read every field of ``group`` (optionally only rows ``index``); ragged fields as lists.

    Fields come back under their current names (:data:`RENAMED_FIELDS`).
    """
    out: dict[str, Any] = {}
    for key, name in current_names(group).items():
        ds = group[name]
        if name + _OFFSETS in group:
            off = group[name + _OFFSETS][()]
            rows = range(len(off) - 1) if index is None else index
            data = ds
            out[key] = [data[off[i] : off[i + 1]] for i in rows]
        elif h5py.check_string_dtype(ds.dtype):
            vals = ds.asstr()[()]
            out[key] = np.asarray(vals if index is None else vals[index], dtype=object)
        else:
            out[key] = ds[()] if index is None else ds[()][index]
    return out


def concat_rows(a, b):
    """Rows of ``b`` after those of ``a`` (two ragged lists, or two arrays along axis 0)."""
    if isinstance(a, list):
        return a + b
    return np.concatenate([a, b], axis=0)


def append_rows(group: h5py.Group, rows: Mapping[str, Any]) -> None:
    """Append row arrays to resizable datasets in ``group`` (created on first use)."""
    for name, value in rows.items():
        if isinstance(value, list):  # ragged: data + offsets
            lengths = np.array([len(v) for v in value], dtype=np.int64)
            data = np.concatenate(value, axis=0)
            if name + _OFFSETS in group:
                off = group[name + _OFFSETS]
                start = off[-1]
            else:
                off = group.create_dataset(
                    name + _OFFSETS, data=np.zeros(1, np.int64), maxshape=(None,), chunks=True
                )
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
    group.create_dataset(
        name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True, compression="lzf", **kw
    )


def _extend(ds: h5py.Dataset, arr: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(arr), axis=0)
    ds[n:] = arr


class RowReader:
    """Lazy, row-at-a-time access to one split of a finished sharded file (e.g. ``media.h5``).

    Only the requested row is read from disk, so a many-GB file can feed a training loop.
    Use as a context manager, or call :meth:`close`. Not shared across processes: open one per
    worker. Fields are named by their current names (:data:`RENAMED_FIELDS`).

    Examples
    --------
    >>> waves = [np.zeros(3, np.float32), np.ones(1, np.float32)]
    >>> with h5py.File("media.h5", "w") as f:
    ...     write_rows(f.create_group("train"), {"utt_id": ["a", "b"], "waveform": waves})
    >>> with RowReader("media.h5", "train") as r:
    ...     r.row(1, ["utt_id", "waveform"])
    {'utt_id': 'b', 'waveform': array([1.], dtype=float32)}
    """

    def __init__(self, path: str | Path, split: str):
        self.path = Path(path)
        self._f = h5py.File(self.path, "r")
        if split not in self._f:
            have = sorted(self._f)
            self._f.close()
            raise KeyError(f"{self.path} has no split {split!r}; it has {have}")
        self._g = self._f[split]
        self._stored = current_names(self._g)
        ragged = {key: name + _OFFSETS for key, name in self._stored.items() if name + _OFFSETS in self._g}
        self._offsets = {key: self._g[off][()] for key, off in ragged.items()}
        self.utt_ids = self._g["utt_id"].asstr()[()]

    def __len__(self) -> int:
        return len(self.utt_ids)

    def column(self, name: str) -> np.ndarray:
        """A whole non-ragged column (e.g. ``label``)."""
        ds = self._g[self._stored.get(name, name)]
        return np.asarray(ds.asstr()[()], dtype=object) if h5py.check_string_dtype(ds.dtype) else ds[()]

    def row(self, i: int, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Fields of row ``i`` (all fields when ``names`` is None)."""
        names = names or list(self._stored)
        out: dict[str, Any] = {}
        for n in names:
            ds = self._g[self._stored.get(n, n)]
            if n in self._offsets:
                off = self._offsets[n]
                out[n] = ds[off[i] : off[i + 1]]
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
