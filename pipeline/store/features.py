"""The ``features.h5`` format (schema 1): its fields, reading a split, and checking a whole file.

Layout of ``cache/<dataset>/<config-hash>/features.h5``, written by
:class:`pipeline.store.cache.FeatureWriter`::

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
    /<split>/text_logits   (N, C) float32  optional: the fine-tuned text model's head logits (same
                           forward pass as text_emb), zeros where has_text is False; its attribute
                           ``classes`` names the C head classes in order. Files written by a text model
                           without a head, or before m2f saved them, have none.

Read a finished file with plain h5py or with :func:`read_split`; :func:`validate_features` lists
every way a file breaks the schema, one line per problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.names import MODALITIES, SPLITS
from pipeline.store.h5rows import read_group

SCHEMA_VERSION = 1
STR_FIELDS = ("utt_id", "dialogue_id", "speaker", "label", "text")
INT_FIELDS = ("position",)
#: Modality name -> its (embedding, present flag) datasets: ``"visual"`` -> ``"visual_emb", "has_visual"``.
MODALITY_FIELDS = {m: (f"{m}_emb", f"has_{m}") for m in MODALITIES}
EMB_FIELDS = tuple(emb for emb, _ in MODALITY_FIELDS.values())
FLAG_FIELDS = (*(flag for _, flag in MODALITY_FIELDS.values()), "has_face")
FEATURE_FIELDS = STR_FIELDS + INT_FIELDS + EMB_FIELDS + FLAG_FIELDS
#: The optional field of a fine-tuned text model's head logits, and its attribute naming the classes.
LOGITS_FIELD, LOGITS_CLASSES = "text_logits", "classes"


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
    text_logits: np.ndarray | None = None
    text_logits_classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.utt_id)


def read_attrs(path: str | Path) -> dict[str, Any]:
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
        rows = read_group(f[split])
        classes = logits_classes(f[split])
    return SplitArrays(
        **{k: rows[k] for k in FEATURE_FIELDS},
        text_logits=rows.get(LOGITS_FIELD),
        text_logits_classes=classes,
    )


def logits_classes(group: h5py.Group) -> tuple[str, ...] | None:
    """The head classes of a split's ``text_logits`` (None when the split has none)."""
    if LOGITS_FIELD not in group:
        return None
    names = group[LOGITS_FIELD].attrs.get(LOGITS_CLASSES)
    if names is None:
        return None
    return tuple(x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(names).reshape(-1))


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
        problems = [
            f"{path}: missing file attribute {key!r}"
            for key in ("schema_version", "dataset", "created_utc", "config", "m2f_version")
            if key not in f.attrs
        ]
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
        problems.append(
            f"{at('position', row, ids)}: positions of dialogue {dia[row]!r} do not rise "
            f"({pos[row]} after {pos[row - 1]})"
        )
    if LOGITS_FIELD in g:
        problems += _logits_problems(g, n, at, ids)
    for emb, flag in MODALITY_FIELDS.values():
        e, h = g[emb][()], g[flag][()].astype(bool)
        finite = np.isfinite(e).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            problems.append(f"{at(emb, row, ids)}: not finite (NaN or inf; {int((~finite).sum())} row(s))")
        stray = np.flatnonzero(~h & (e != 0).any(axis=1))
        if len(stray):
            problems.append(f"{at(emb, int(stray[0]), ids)}: non-zero rows where {flag} is False")
    return problems


def _logits_problems(g, n: int, at, ids) -> list[str]:
    """Problems of a split's optional ``text_logits`` (see :func:`validate_features`)."""
    ds = g[LOGITS_FIELD]
    classes = logits_classes(g)
    if ds.ndim != 2 or ds.dtype.kind != "f" or ds.shape[0] != n:
        return [f"{at(LOGITS_FIELD)}: shape {ds.shape}, dtype {ds.dtype}; expected float ({n}, classes)"]
    if classes is None or len(classes) != ds.shape[1] or len(set(classes)) != len(classes):
        return [f"{at(LOGITS_FIELD)}: attribute {LOGITS_CLASSES!r} does not name its {ds.shape[1]} classes"]
    values = ds[()]
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        return [f"{at(LOGITS_FIELD, row, ids)}: not finite (NaN or inf)"]
    stray = np.flatnonzero(~g["has_text"][()].astype(bool) & (values != 0).any(axis=1))
    if len(stray):
        return [f"{at(LOGITS_FIELD, int(stray[0]), ids)}: non-zero rows where has_text is False"]
    return []
