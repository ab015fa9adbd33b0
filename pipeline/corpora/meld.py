"""MELD reader: the three annotation CSVs and (optionally) the clip folders of ``MELD.Raw``.

Decisions (see ``docs/CORPORA.md`` section 2):

* The CSVs ``{train,dev,test}_sent_emo.csv`` and the clip folders ``train_splits``,
  ``dev_splits_complete`` and ``output_repeated_splits_test`` are located **by name** anywhere under
  ``root`` (up to 4 levels deep; the shallowest copy wins, two copies at the same depth are an error).
  So ``root`` may hold the CSVs directly, ``MELD.Raw/``, or Kaggle's ``train/train_splits/``.
* **The CSVs alone are enough**: a split without a clip folder gets ``clip=None`` everywhere
  (status ``no-folder``) and text still works.
* CSVs are read as UTF-8 (a BOM is tolerated) with ``newline=''``. The old C1 copies (U+0080-U+009F
  code points that were cp1252 bytes, and U+00A0) are mapped to the characters they stand for, so
  old and new CSVs give the same text (:func:`normalize_text`).
* Timestamps parse with ``^(\\d{1,2}):(\\d{2}):(\\d{2}),(\\d{1,3})$``. The digits after the comma are
  a **decimal fraction of a second**: ``,28`` is 0.28 s, ``,280`` is 0.28 s, ``,5`` is 0.5 s (3 real
  values have 2 digits; this reading keeps every utterance's end after its start).
  ``start``/``end`` are episode times, kept for reference; MELD clips are already cut.
* Dialogue order is the CSV's first-appearance order; inside a dialogue utterances are sorted by
  Utterance_ID and ``position`` is the rank (Utterance_ID has gaps, which are kept). ``Sr No.`` is
  never used (it has duplicates).
* A malformed row (wrong field count, non-integer id, unknown emotion or sentiment, bad timestamp,
  empty text, duplicate Dialogue_ID/Utterance_ID) is **an error** naming the file, line and fix:
  annotation files are small and a silently skipped row would shift every count.
* Clips: ``dia{D}_utt{U}.mp4``; a ``final_videos_testdia{D}_utt{U}.mp4`` twin is preferred when present
  (it matches the annotation). Missing clips (status ``missing``) and zero-byte clips (``zero-byte``,
  clip None) are reported, never fatal. Clips no row refers to are counted as ignored extras.
  Corrupt non-empty clips are not detected here (that needs decoding); extraction reports them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.corpora.base import (
    FOUND,
    MISSING,
    NO_FOLDER,
    ZERO_BYTE,
    CorpusError,
    PrepareReport,
    find_by_name,
    is_junk,
    list_root,
    pick_shallowest,
    read_csv_rows,
)
from pipeline.manifest import SPLITS, Utterance

CSV_NAMES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
TWIN_PREFIX = "final_videos_test"

EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SENTIMENTS = ("negative", "neutral", "positive")
REQUIRED_COLUMNS = (
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "StartTime",
    "EndTime",
)

TIME_RE = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2}),(\d{1,3})$")
CLIP_RE = re.compile(r"^(?:final_videos_test)?dia(\d+)_utt(\d+)\.mp4$")

# cp1252 bytes that were read as latin-1 (C1 controls) -> what they stand for; NBSP -> space.
_C1_MAP = {
    i: bytes([i]).decode("cp1252") for i in range(0x80, 0xA0) if i not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}
_C1_MAP[0xA0] = " "


def normalize_text(text: str) -> str:
    """Map C1 code points (old MELD CSVs) and NBSP to the characters they stand for.

    >>> normalize_text("He\\x92s here\\x85")
    'He’s here…'
    """
    return text.translate(_C1_MAP)


def parse_time(value: str) -> float:
    """``HH:MM:SS,fff`` (1-2 hour digits, 1-3 fraction digits) -> seconds; ``,28`` means 0.28 s.

    >>> parse_time("0:06:47,28")
    407.28
    """
    m = TIME_RE.match(value.strip())
    if not m:
        raise ValueError(f"timestamp {value!r} is not H:MM:SS,fff")
    h, mi, s, frac = m.groups()
    return round(int(h) * 3600 + int(mi) * 60 + int(s) + int(frac) / 10 ** len(frac), 3)


@dataclass(frozen=True)
class MeldRow:
    """One validated annotation row (before grouping into dialogues)."""

    line: int
    dialogue_id: int
    utterance_id: int
    speaker: str
    text: str
    emotion: str
    sentiment: str
    start: float
    end: float


@dataclass(frozen=True)
class MeldLayout:
    """Where the CSVs and clip folders of a MELD tree are."""

    csvs: dict[str, Path]
    clip_dirs: dict[str, Path | None]


def locate_meld(root: str | Path) -> MeldLayout:
    """Find the split CSVs and clip folders under ``root`` by name.

    Raises
    ------
    CorpusError
        ``root`` does not exist, or holds none of the CSVs (the message lists what was expected
        and what is there), or holds two copies at the same depth.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(
            f"MELD root {root} is not a folder. Pass --root the folder that holds "
            f"{', '.join(CSV_NAMES.values())} (directly or in MELD.Raw/)."
        )
    csv_hits = find_by_name(root, CSV_NAMES.values(), want_dir=False, prune=CLIP_DIRS.values())
    dir_hits = find_by_name(root, CLIP_DIRS.values(), want_dir=True, prune=CLIP_DIRS.values())
    csvs = {s: p for s in SPLITS if (p := pick_shallowest(csv_hits[CSV_NAMES[s]], CSV_NAMES[s]))}
    if not csvs:
        raise CorpusError(
            f"no MELD annotation CSV under {root} (searched {4} levels deep). Expected "
            f"{', '.join(CSV_NAMES.values())} and optionally clip folders {', '.join(CLIP_DIRS.values())} "
            f"(e.g. the extracted MELD.Raw/). Found at the top: {list_root(root)}"
        )
    clip_dirs = {s: pick_shallowest(dir_hits[CLIP_DIRS[s]], CLIP_DIRS[s] + " folders") for s in csvs}
    return MeldLayout(csvs=csvs, clip_dirs=clip_dirs)


def read_meld_csv(path: str | Path) -> list[MeldRow]:
    """Read and validate one MELD annotation CSV.

    Raises
    ------
    CorpusError
        Not UTF-8, a missing column, or a malformed row; the message names file, line and fix.
    """
    path = Path(path)
    header, records = read_csv_rows(
        path, "MELD CSVs are UTF-8; re-download them or re-save the file as UTF-8."
    )
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CorpusError(
            f"{path}:1: missing column(s) {', '.join(missing)}; the header is "
            f"{','.join(header)!r}. A MELD CSV starts with "
            "'Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,...'."
        )
    rows = [_parse_row(path, line, r, len(header)) for line, r in records]
    seen: dict[tuple[int, int], int] = {}
    for r in rows:
        key = (r.dialogue_id, r.utterance_id)
        if key in seen:
            raise CorpusError(
                f"{path}:{r.line}: Dialogue_ID {key[0]} / Utterance_ID {key[1]} already on "
                f"line {seen[key]}; remove or renumber the duplicate row."
            )
        seen[key] = r.line
    return rows


def _parse_row(path: Path, line: int, r: dict, n_columns: int) -> MeldRow:
    where = f"{path}:{line}"
    if None in r or any(v is None for v in r.values()):
        n = sum(v is not None for k, v in r.items() if k is not None) + len(r.get(None) or [])
        raise CorpusError(
            f"{where}: {n} fields, expected {n_columns}. Quote fields that contain commas "
            "and double any quote inside them."
        )
    try:
        dia, utt = int(r["Dialogue_ID"]), int(r["Utterance_ID"])
        if dia < 0 or utt < 0:
            raise ValueError("negative id")
    except ValueError:
        raise CorpusError(
            f"{where}: Dialogue_ID {r['Dialogue_ID']!r} / Utterance_ID {r['Utterance_ID']!r} "
            "must be non-negative integers."
        ) from None
    emotion, sentiment = r["Emotion"].strip().lower(), r["Sentiment"].strip().lower()
    if emotion not in EMOTIONS:
        raise CorpusError(f"{where}: unknown Emotion {r['Emotion']!r}; MELD uses {', '.join(EMOTIONS)}.")
    if sentiment not in SENTIMENTS:
        raise CorpusError(
            f"{where}: unknown Sentiment {r['Sentiment']!r}; MELD uses {', '.join(SENTIMENTS)}."
        )
    text = normalize_text(r["Utterance"])
    if not text.strip():
        raise CorpusError(f"{where}: empty Utterance text; fill it in or delete the row.")
    try:
        start, end = parse_time(r["StartTime"]), parse_time(r["EndTime"])
    except ValueError as e:
        raise CorpusError(f"{where}: {e}; write times as H:MM:SS,mmm, e.g. 00:20:57,256.") from None
    return MeldRow(
        line=line,
        dialogue_id=dia,
        utterance_id=utt,
        speaker=normalize_text(r["Speaker"]).strip(),
        text=text,
        emotion=emotion,
        sentiment=sentiment,
        start=start,
        end=end,
    )


def _scan_clip_dir(clip_dir: Path) -> dict[str, int]:
    """Clip file name -> size in bytes (``._`` junk and non-clip names skipped)."""
    out = {}
    with os.scandir(clip_dir) as it:
        for e in it:
            if not is_junk(e.name) and CLIP_RE.match(e.name) and e.is_file():
                out[e.name] = e.stat().st_size
    return out


def _clip_for(
    row: MeldRow, clip_dir: Path | None, files: dict[str, int]
) -> tuple[str | None, str, str | None]:
    """(absolute clip path or None, status, the file name used)."""
    if clip_dir is None:
        return None, NO_FOLDER, None
    plain = f"dia{row.dialogue_id}_utt{row.utterance_id}.mp4"
    name = TWIN_PREFIX + plain if TWIN_PREFIX + plain in files else plain
    if name not in files:
        return None, MISSING, None
    if files[name] == 0:
        return None, ZERO_BYTE, name
    return os.path.abspath(clip_dir / name), FOUND, name


def rows_to_utterances(
    rows: list[MeldRow], *, corpus: str, split: str, clips: dict[tuple[int, int], str | None]
) -> list[Utterance]:
    """Group rows into dialogues (first-appearance order), sort by Utterance_ID, assign positions."""
    by_dialogue: dict[int, list[MeldRow]] = {}
    for r in rows:
        by_dialogue.setdefault(r.dialogue_id, []).append(r)
    out = []
    for dia, drows in by_dialogue.items():
        for pos, r in enumerate(sorted(drows, key=lambda r: r.utterance_id)):
            out.append(
                Utterance(
                    corpus=corpus,
                    split=split,
                    dialogue_id=str(dia),
                    position=pos,
                    utterance_id=str(r.utterance_id),
                    speaker=r.speaker,
                    text=r.text,
                    label=r.emotion,
                    sentiment=r.sentiment,
                    clip=clips.get((dia, r.utterance_id)),
                    start=r.start,
                    end=r.end,
                )
            )
    return out


def prepare_meld(
    root: str | Path, *, corpus: str = "meld", report: PrepareReport | None = None
) -> list[Utterance]:
    """Read a MELD tree (CSVs, optionally clips) into utterances of every split found.

    Parameters
    ----------
    root : str or Path
        Folder holding the CSVs and clip folders at any depth up to 4 (see module docstring).
    corpus : str
        Corpus name written into the records (``sample`` for the bundled sample).
    report : PrepareReport, optional
        Filled with clip statuses, ignored extras and the files used.

    Returns
    -------
    list of Utterance
        Splits in train/dev/test order, dialogues in CSV order, utterances by position.

    Raises
    ------
    CorpusError
        No CSV found, or a malformed CSV (file, line and fix in the message).

    Examples
    --------
    Not run as a test: it needs the MELD corpus (``MELD.Raw``, 10 GB).

    >>> utts = prepare_meld("MELD.Raw")  # doctest: +SKIP
    >>> len(utts)  # doctest: +SKIP
    13708
    """
    layout = locate_meld(root)
    report = report if report is not None else PrepareReport(corpus=corpus)
    report.root = Path(root)
    out: list[Utterance] = []
    for split in SPLITS:
        if split not in layout.csvs:
            report.notes.append(f"{split}: no {CSV_NAMES[split]} under {root}; split skipped")
    for split, csv_path in layout.csvs.items():
        rows = read_meld_csv(csv_path)
        clip_dir = layout.clip_dirs.get(split)
        report.sources[f"{split} csv"] = str(csv_path)
        report.sources[f"{split} clips"] = str(clip_dir) if clip_dir else f"(no {CLIP_DIRS[split]}/ folder)"
        files = _scan_clip_dir(clip_dir) if clip_dir else {}
        clips, used, twins = {}, set(), 0
        utts_status = {}
        for r in rows:
            clip, status, name = _clip_for(r, clip_dir, files)
            clips[(r.dialogue_id, r.utterance_id)] = clip
            utts_status[(r.dialogue_id, r.utterance_id)] = status
            if name:
                used.add(name)
                if name.startswith(TWIN_PREFIX):
                    used.add(name[len(TWIN_PREFIX) :])
                    twins += 1
        utts = rows_to_utterances(rows, corpus=corpus, split=split, clips=clips)
        for u in utts:
            report.clip_status[u.id] = utts_status[(int(u.dialogue_id), int(u.utterance_id))]
        report.ignored[split] = sorted(n for n in files if n not in used)
        if twins:
            report.notes.append(f"{split}: {twins} {TWIN_PREFIX}* clips preferred over their plain twins")
        out += utts
    return out
