"""What every corpus reader shares: the error type, the prepare report, CSV reading, finding files by name."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Clip / audio status of one utterance, as reported by the readers.
FOUND = "found"
MISSING = "missing"  # the media folder exists, the file does not
ZERO_BYTE = "zero-byte"  # the file exists but is empty: unreadable; the utterance gets clip=None
NO_FOLDER = "no-folder"  # no media folder for this split at all (e.g. MELD CSVs alone)
NOT_GIVEN = "not-given"  # the annotation names no media for this utterance (custom CSV, empty cell)
STATUSES = (FOUND, MISSING, ZERO_BYTE, NO_FOLDER, NOT_GIVEN)

#: The standard emotion classes per corpus, in the paper's order (the one place they are written).
#: Readers keep every raw label; trainers and encoder training use these class maps.
MELD_CLASSES = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
IEMOCAP_CLASSES = ("hap", "sad", "neu", "ang", "exc", "fru")  # the 6-class ERC setup
CLASS_MAPS: dict[str, tuple[str, ...]] = {
    "meld": MELD_CLASSES,
    "iemocap": IEMOCAP_CLASSES,
    "sample": MELD_CLASSES,  # MELD's layout and labels
}

#: How deep under ``--root`` the readers look for files and folders by name.
MAX_SEARCH_DEPTH = 4


class CorpusError(Exception):
    """A corpus cannot be read: the message names the file (and line) and says what to do."""


#: The csv module's limit on one field (128 KiB); a longer field is nearly always an unclosed quote.
CSV_FIELD_LIMIT = 131072


def read_csv_rows(path: Path, utf8_fix: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header (names stripped) and the rows of a UTF-8 CSV, each as ``(line, {column: value})``.

    Everything that would otherwise pass here and break a later stage is a :class:`CorpusError` naming
    the file and line: bytes that are not UTF-8, a column name given twice, a field over
    :data:`CSV_FIELD_LIMIT` characters (an unclosed quote), a NUL character (HDF5 strings cannot hold
    one). Rows keep :class:`csv.DictReader`'s shape (``None`` key for extra fields, ``None`` values for
    missing ones); the reader checks them.

    Parameters
    ----------
    path : Path
        The CSV (a UTF-8 BOM is fine).
    utf8_fix : str
        What to do about non-UTF-8 bytes, for the error message.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            start = 1
            try:
                header = [h.strip() for h in reader.fieldnames or []]
                _check_header(path, header)
                reader.fieldnames = header
                rows: list[tuple[int, dict]] = []
                while True:
                    start = reader.line_num + 1
                    row = next(reader, None)
                    if row is None:
                        return header, rows
                    _check_nul(path, reader.line_num, row)
                    rows.append((reader.line_num, row))
            except csv.Error as e:
                what = (
                    f"a field runs over {CSV_FIELD_LIMIT} characters, nearly always a double quote that "
                    "is never closed (the rest of the file became one field); close the quote, and "
                    "double any quote inside a quoted field"
                    if "field limit" in str(e)
                    else f"malformed CSV ({e}); check the quoting of this row"
                )
                raise CorpusError(f"{path}:{start}: {what}.") from None
    except UnicodeDecodeError:
        data = path.read_bytes()  # the reader's error counts bytes from its buffer, not from the file
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise CorpusError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start}). {utf8_fix}") from e
        raise


def _check_header(path: Path, header: list[str]) -> None:
    seen: set[str] = set()
    for name in header:
        if "\x00" in name:
            raise _nul_error(path, 1, "the header")
        if name in seen:
            raise CorpusError(
                f"{path}:1: column {name!r} appears twice in the header; rename or delete one of them."
            )
        seen.add(name)


def _check_nul(path: Path, line: int, row: dict) -> None:
    for column, value in row.items():
        values = value if isinstance(value, list) else [value]  # the None key holds the extra fields
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise _nul_error(path, line, f"column {column!r}" if column is not None else "an extra field")


def _nul_error(path: Path, line: int, where: str) -> CorpusError:
    return CorpusError(
        f"{path}:{line}: {where} holds a NUL character (\\x00), a sign of a damaged or binary file; "
        "remove it (e.g. tr -d '\\000' < in.csv > out.csv) and check the row."
    )


@dataclass
class PrepareReport:
    """What a reader saw besides the utterances it returns (filled in by the reader).

    Attributes
    ----------
    corpus : str
        ``meld``, ``iemocap``, ``sample`` or ``custom``.
    root : Path or None
        The folder (or file) that was read.
    clip_status : dict
        Utterance id -> one of :data:`STATUSES` for its video (``clip``).
    audio_status : dict
        Utterance id -> status of a separate audio file (IEMOCAP ``sentences/wav``); empty elsewhere.
    ignored : dict
        Split -> names of media files that no annotation row refers to (unlabelled extras).
    sources : dict
        What was used, e.g. ``{"train csv": ".../train_sent_emo.csv"}``.
    notes : list of str
        Decisions worth printing (dev dialogues drawn, twins preferred, skipped rows...).
    unlabelled_lines : dict
        IEMOCAP: dialogue -> number of transcription lines that have no label (skipped).
    """

    corpus: str
    root: Path | None = None
    clip_status: dict[str, str] = field(default_factory=dict)
    audio_status: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unlabelled_lines: dict[str, int] = field(default_factory=dict)


def is_junk(name: str) -> bool:
    """AppleDouble (``._x``) and other hidden files that real tarballs carry."""
    return name.startswith(".")


def find_by_name(
    root: Path,
    names: Iterable[str],
    *,
    want_dir: bool,
    max_depth: int = MAX_SEARCH_DEPTH,
    prune: Iterable[str] = (),
) -> dict[str, list[Path]]:
    """Find files (or folders) with the given base names under ``root``, breadth first.

    Hidden and ``._`` entries are skipped; folders named in ``prune`` (e.g. clip folders with
    thousands of files) are not descended into. Results per name are sorted by depth, then path.

    Parameters
    ----------
    root : Path
        Folder to search.
    names : iterable of str
        Base names to look for.
    want_dir : bool
        Match folders (True) or files (False).
    max_depth : int
        Folder levels below ``root`` to visit (0 = only ``root`` itself).
    prune : iterable of str
        Folder names not to descend into.
    """
    wanted, pruned = set(names), set(prune)
    found: dict[str, list[Path]] = {n: [] for n in wanted}
    root_depth = len(Path(root).parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        depth = len(Path(dirpath).parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d))
        for n in dirnames if want_dir else filenames:
            if n in wanted:
                found[n].append(Path(dirpath) / n)
        dirnames[:] = [d for d in dirnames if d not in pruned and depth < max_depth]
    for paths in found.values():
        paths.sort(key=lambda p: (len(p.parts), str(p)))
    return found


def pick_shallowest(paths: list[Path], what: str) -> Path | None:
    """The shallowest path; :class:`CorpusError` if two candidates tie at that depth."""
    if not paths:
        return None
    top = [p for p in paths if len(p.parts) == len(paths[0].parts)]
    if len(top) > 1:
        raise CorpusError(
            f"found several {what} at the same depth: {', '.join(map(str, top))}. "
            "Point --root at the one copy you want to use."
        )
    return paths[0]


def list_root(root: Path, limit: int = 15) -> str:
    """A short listing of ``root`` for error messages."""
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    except OSError as e:
        return f"(cannot list: {e})"
    if not entries:
        return "(empty)"
    more = f" ... and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more
