"""Custom corpus: your own videos described by one CSV file.

Format (UTF-8, a BOM from Excel is fine; header row required; column order free; extra columns
ignored)::

    dialogue_id,utterance_index,speaker,text,label,clip,start,end,split
    call1,0,Ann,"Hi, how are you?",joy,videos/call1.mp4,0.0,2.4,train
    call1,1,Bob,Fine.,neutral,videos/call1.mp4,2.6,3.5,train
    call2,0,Ann,Where is it?,,clips/c2_0.mp4,,,test

Columns
-------
``dialogue_id`` (required)
    Any non-empty text without ``/`` or whitespace; rows of one dialogue may be anywhere in the file.
``utterance_index`` (required)
    Integer >= 0 giving the order inside the dialogue; gaps are fine (``position`` is the rank),
    duplicates inside a dialogue are an error.
``speaker``, ``text`` (required, non-empty)
``label`` (optional column; an empty cell = no label)
    Any string, kept raw. When :func:`prepare_custom` is given ``labels``, a label outside that set
    is an error.
``clip`` (required column; an empty cell = no video for that utterance)
    Path **relative to the CSV's folder**. Absolute paths and paths that climb out of that folder
    with ``..`` are errors (put the videos under the CSV's folder, or symlink them there), so a CSV
    can be moved together with its videos and never points elsewhere on a machine.
``start``, ``end`` (optional, seconds)
    The utterance's span inside a longer ``clip``; give both or neither; finite, ``>= 0``,
    ``end`` > ``start``.
``split`` (optional column)
    ``train``, ``dev`` or ``test``; when the column exists every row needs one, and all rows of a
    dialogue must agree. **Without the column**, each dialogue goes to train/dev/test (80/10/10)
    by a hash of its ``dialogue_id`` (:func:`hash_split`): stable when dialogues are added or
    reordered, no seed to remember.

Column names must be distinct; a NUL character anywhere, or a field over 128 KiB (an unclosed quote),
is an error. Missing or zero-byte clips are reported (an empty ``clip`` cell as ``not-given``), not
fatal. Every other problem raises :class:`~pipeline.corpora.base.CorpusError` naming the file, line and fix.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection
from pathlib import Path, PurePosixPath, PureWindowsPath

from pipeline.corpora.base import (
    FOUND,
    MISSING,
    NOT_GIVEN,
    ZERO_BYTE,
    CorpusError,
    PrepareReport,
    read_csv_rows,
)
from pipeline.manifest import SPLITS, Utterance

REQUIRED = ("dialogue_id", "utterance_index", "speaker", "text", "clip")
OPTIONAL = ("label", "start", "end", "split")


def hash_split(dialogue_id: str) -> str:
    """train/dev/test for a dialogue from the first 8 hex digits of sha1(dialogue_id): 80/10/10.

    >>> hash_split("call1") in ("train", "dev", "test")
    True
    """
    bucket = int(hashlib.sha1(dialogue_id.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else ("dev" if bucket == 8 else "test")


def find_custom_csv(root: str | Path) -> Path:
    """``root`` itself if it is a file, else the single ``*.csv`` directly inside the folder."""
    root = Path(root)
    if root.is_file():
        return root
    if not root.is_dir():
        raise CorpusError(f"custom corpus {root} does not exist. Pass --root your CSV file or its folder.")
    csvs = sorted(p for p in root.glob("*.csv") if not p.name.startswith("."))
    if len(csvs) != 1:
        found = ", ".join(p.name for p in csvs) or "none"
        raise CorpusError(
            f"{root}: expected exactly one .csv describing the corpus (columns "
            f"{', '.join(REQUIRED + OPTIONAL)}), found {found}. Pass --root the CSV file itself."
        )
    return csvs[0]


def resolve_clip(csv_path: Path, value: str, where: str) -> Path:
    """The clip path under the CSV's folder; errors for absolute paths and ``..`` escapes."""
    posix = value.replace("\\", "/")
    if (
        PurePosixPath(posix).is_absolute()  # also "\\etc\\passwd": no drive, but /etc/passwd once read
        or PureWindowsPath(value).is_absolute()
        or PureWindowsPath(value).drive
    ):
        raise CorpusError(
            f"{where}: clip {value!r} is an absolute path; write it relative to the CSV's folder "
            f"{csv_path.parent} (move or symlink the videos there)."
        )
    rel = os.path.normpath(posix)
    if rel == ".." or rel.startswith("../") or rel == ".":
        raise CorpusError(
            f"{where}: clip {value!r} points outside the CSV's folder {csv_path.parent}; "
            "keep videos under that folder (or symlink them there)."
        )
    return csv_path.parent / rel


def _float_or_none(value: str, column: str, where: str) -> float | None:
    if not value.strip():
        return None
    try:
        x = float(value)
    except ValueError:
        raise CorpusError(f"{where}: {column} {value!r} is not a number of seconds.") from None
    if not math.isfinite(x):
        raise CorpusError(
            f"{where}: {column} {value!r} is not a finite number of seconds; give the time in "
            "seconds inside the clip, e.g. 2.5."
        )
    if x < 0:
        raise CorpusError(f"{where}: {column} {value!r} must be >= 0 seconds.")
    return x


def _parse_row(csv_path: Path, line: int, row: dict, has_split: bool, labels: Collection[str] | None) -> dict:
    where = f"{csv_path}:{line}"
    if None in row or any(v is None for v in row.values()):
        raise CorpusError(f"{where}: wrong number of fields; quote fields that contain commas.")
    dia = row["dialogue_id"].strip()
    if not dia or "/" in dia or any(c.isspace() for c in dia):
        raise CorpusError(
            f"{where}: dialogue_id {row['dialogue_id']!r} must be non-empty, without '/' or spaces."
        )
    try:
        index = int(row["utterance_index"])
        if index < 0:
            raise ValueError
    except ValueError:
        raise CorpusError(
            f"{where}: utterance_index {row['utterance_index']!r} must be an integer >= 0."
        ) from None
    speaker, text = row["speaker"].strip(), row["text"].strip()
    if not speaker or not text:
        raise CorpusError(
            f"{where}: empty {'speaker' if not speaker else 'text'}; fill it in or delete the row."
        )
    label = (row.get("label") or "").strip() or None
    if label is not None and labels is not None and label not in labels:
        raise CorpusError(
            f"{where}: unknown label {label!r}; allowed: {', '.join(sorted(labels))} "
            "(or leave the cell empty for no label)."
        )
    start = _float_or_none(row.get("start") or "", "start", where)
    end = _float_or_none(row.get("end") or "", "end", where)
    if (start is None) != (end is None):
        raise CorpusError(f"{where}: give both start and end (seconds inside the clip) or neither.")
    if start is not None and end is not None and end <= start:
        raise CorpusError(f"{where}: end {end} must be after start {start}.")
    split = None
    if has_split:
        split = (row.get("split") or "").strip().lower()
        if split not in SPLITS:
            raise CorpusError(
                f"{where}: split {row.get('split')!r} must be one of {', '.join(SPLITS)} "
                "(or drop the split column to split dialogues by hash)."
            )
    clip_value = row["clip"].strip()
    clip = resolve_clip(csv_path, clip_value, where) if clip_value else None
    return {
        "line": line,
        "dialogue_id": dia,
        "index": index,
        "speaker": speaker,
        "text": text,
        "label": label,
        "start": start,
        "end": end,
        "split": split,
        "clip": clip,
    }


def read_custom_csv(csv_path: str | Path, *, labels: Collection[str] | None = None) -> list[dict]:
    """Parse and validate every row (dicts with the parsed values and their line numbers)."""
    csv_path = Path(csv_path)
    header, records = read_csv_rows(csv_path, "Save the CSV as UTF-8.")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CorpusError(
            f"{csv_path}:1: missing column(s) {', '.join(missing)}. A custom corpus CSV "
            f"needs {', '.join(REQUIRED)} and may add {', '.join(OPTIONAL)}."
        )
    has_split = "split" in header
    rows = [_parse_row(csv_path, line, r, has_split, labels) for line, r in records]
    if not rows:
        raise CorpusError(f"{csv_path}: no rows after the header.")
    return rows


def _check_dialogues(csv_path: Path, rows: list[dict]) -> None:
    seen: dict[tuple[str, int], int] = {}
    split_of: dict[str, tuple[str, int]] = {}
    for r in rows:
        key = (r["dialogue_id"], r["index"])
        if key in seen:
            raise CorpusError(
                f"{csv_path}:{r['line']}: dialogue {key[0]!r} utterance_index {key[1]} already on "
                f"line {seen[key]}; each utterance needs its own index."
            )
        seen[key] = r["line"]
        if r["split"] is not None:
            first = split_of.setdefault(r["dialogue_id"], (r["split"], r["line"]))
            if first[0] != r["split"]:
                raise CorpusError(
                    f"{csv_path}:{r['line']}: dialogue {r['dialogue_id']!r} is {r['split']!r} here "
                    f"but {first[0]!r} on line {first[1]}; a dialogue belongs to one split."
                )


def prepare_custom(
    root: str | Path, *, labels: Collection[str] | None = None, report: PrepareReport | None = None
) -> list[Utterance]:
    """Read a custom corpus CSV (see the module docstring for the format).

    Parameters
    ----------
    root : str or Path
        The CSV file, or a folder holding exactly one ``.csv``.
    labels : collection of str, optional
        Allowed label strings; None accepts any.
    report : PrepareReport, optional
        Filled with clip statuses.

    Returns
    -------
    list of Utterance
        ``corpus="custom"``, splits in train/dev/test order, dialogues in first-appearance order.
    """
    csv_path = find_custom_csv(root)
    rows = read_custom_csv(csv_path, labels=labels)
    _check_dialogues(csv_path, rows)
    report = report if report is not None else PrepareReport(corpus="custom")
    report.root = Path(root)
    report.sources["csv"] = str(csv_path)
    if rows[0]["split"] is None:
        report.notes.append("no split column: dialogues split 80/10/10 by a hash of dialogue_id")
    by_dialogue: dict[str, list[dict]] = {}
    for r in rows:
        by_dialogue.setdefault(r["dialogue_id"], []).append(r)
    out = []
    for dia, drows in by_dialogue.items():
        split = drows[0]["split"] or hash_split(dia)
        for pos, r in enumerate(sorted(drows, key=lambda r: r["index"])):
            clip, status = _clip_status(r["clip"])
            u = Utterance(
                corpus="custom",
                split=split,
                dialogue_id=dia,
                position=pos,
                utterance_id=str(r["index"]),
                speaker=r["speaker"],
                text=r["text"],
                label=r["label"],
                clip=clip,
                start=r["start"],
                end=r["end"],
            )
            report.clip_status[u.id] = status
            out.append(u)
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(out, key=lambda u: order[u.split])


def _clip_status(path: Path | None) -> tuple[str | None, str]:
    if path is None:
        return None, NOT_GIVEN
    if not path.is_file():
        return None, MISSING
    if path.stat().st_size == 0:
        return None, ZERO_BYTE
    return os.path.abspath(path), FOUND
