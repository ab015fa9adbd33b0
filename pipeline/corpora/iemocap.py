"""IEMOCAP reader: ``IEMOCAP_full_release/Session1..5`` -> utterances with dialogue video and turn audio.

Decisions (see ``docs/CORPORA.md`` section 3):

* ``root`` may be ``IEMOCAP_full_release``, its parent, or a copy nested as
  ``IEMOCAP_full_release/IEMOCAP_full_release``: the ``Session1``..``Session5`` folders are found by
  name (up to 4 levels deep, shallowest wins). Hidden and ``._`` AppleDouble entries are ignored.
* Labels come from the **top-level** ``dialog/EmoEvaluation/<dialogue>.txt`` files only (not the
  ``Categorical/``, ``Attribute/`` or ``Self-evaluation/`` sub-folders): the consensus code of each
  ``[start - end]\\t<utt>\\t<code>\\t[V, A, D]`` line. **All raw codes are kept**, ``xxx`` included;
  the trainer's class map decides what counts.
* Text and **dialogue order** come from ``dialog/transcriptions/<dialogue>.txt`` (``<utt> [s-e]: text``).
  Bracketed tags such as ``[LAUGHTER]`` are removed and whitespace collapsed; when a turn is only a
  tag, the tag text is kept so the utterance keeps a non-empty text. Transcription lines without a
  label (``_MXX0``-style ids, unlabelled turns) are skipped; labelled turns with no transcription line
  are skipped too, and both are counted in the report's notes.
* Speaker = ``Ses0N`` + the F/M letter of the utterance's **last** group (``Ses01F_impro01_M000`` ->
  ``Ses01M``), not the dialogue's letter. ``side`` = ``left`` when that letter equals the dialogue's
  letter (the MoCap wearer sits left), else ``right`` (docs/CORPORA.md 3.4).
* ``clip`` = ``dialog/avi/DivX/<dialogue>.avi`` with ``start``/``end`` from EmoEvaluation (seconds in
  the dialogue video); ``audio`` = ``sentences/wav/<dialogue>/<utt>.wav``. Missing or zero-byte media are
  reported (``clip_status``/``audio_status``), never fatal.
* Splits: Session 5 = test. Dev = :func:`choose_dev_dialogues`: ``min(20, max(1, round(n / 6)))``
  dialogues of the ``n`` Session 1-4 dialogues (20 of 120 on the full corpus; 1 when a miniature copy has
  2-8), drawn with ``random.Random(2022)`` from the sorted names. The list is recorded in the report
  (``sources["dev dialogues"]``) and in every record's ``split``. The rest of Sessions 1-4 = train.
"""

from __future__ import annotations

import os
import random
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
)
from pipeline.manifest import SPLITS, Utterance

SESSIONS = (1, 2, 3, 4, 5)
TEST_SESSION = 5
DEV_SEED = 2022
DEV_DIALOGUES = 20

SUMMARY_RE = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\w+)\s+\[[^\]]*\]\s*$")
TRANSCRIPT_RE = re.compile(r"^(\S+)\s+\[([\d.]+)-([\d.]+)\]:\s*(.*?)\s*$")
UTT_RE = re.compile(r"^(Ses(\d{2})([FM])_\S+)_([FM])(\d{3})$")
TAG_RE = re.compile(r"\[\w+\]")


@dataclass(frozen=True)
class EmoLine:
    """The consensus line of one EmoEvaluation block."""

    utt_id: str
    start: float
    end: float
    label: str


def read_text_lenient(path: Path) -> str:
    """UTF-8, falling back to latin-1 (some copies of the label files are not UTF-8)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_emo_evaluation(path: str | Path) -> list[EmoLine]:
    """Consensus lines of one ``EmoEvaluation/<dialogue>.txt`` (evaluator lines are skipped).

    Raises
    ------
    CorpusError
        A line that starts with ``[`` but is not a summary line (file and line named), or a
        duplicate utterance id.
    """
    path = Path(path)
    out: list[EmoLine] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_text_lenient(path).splitlines(), 1):
        if not line.startswith("["):
            continue
        m = SUMMARY_RE.match(line)
        if not m:
            raise CorpusError(
                f"{path}:{lineno}: not an EmoEvaluation summary line: {line!r}. Expected "
                "'[START - END]<TAB>UTT_ID<TAB>CODE<TAB>[V, A, D]'; restore the file from the "
                "IEMOCAP release."
            )
        start, end, utt, code = float(m[1]), float(m[2]), m[3], m[4]
        if utt in seen:
            raise CorpusError(f"{path}:{lineno}: {utt} already labelled on line {seen[utt]}.")
        seen[utt] = lineno
        out.append(EmoLine(utt_id=utt, start=start, end=end, label=code))
    return out


def parse_transcription(path: str | Path) -> list[tuple[str, str]]:
    """``(utt_id, raw text)`` per transcription line, in file order; other lines are skipped."""
    out = []
    for line in read_text_lenient(Path(path)).splitlines():
        m = TRANSCRIPT_RE.match(line.strip())
        if m:
            out.append((m[1], m[4]))
    return out


def clean_text(text: str) -> str:
    """Remove ``[LAUGHTER]``-style tags and collapse whitespace; keep the tag if nothing else is left.

    >>> clean_text("Yeah. [LAUGHTER]  okay")
    'Yeah. okay'
    >>> clean_text("[LAUGHTER]")
    '[LAUGHTER]'
    """
    cleaned = " ".join(TAG_RE.sub(" ", text).split())
    return cleaned or " ".join(text.split())


def speaker_and_side(utt_id: str) -> tuple[str, str]:
    """``("Ses01M", "right")`` for ``Ses01F_impro01_M000``: speaker letter from the last group.

    Raises
    ------
    ValueError
        ``utt_id`` is not ``Ses<NN><F|M>_<...>_<F|M><NNN>``.
    """
    m = UTT_RE.match(utt_id)
    if not m:
        raise ValueError(f"{utt_id!r} is not an IEMOCAP utterance id like Ses01F_impro01_M000")
    session, dialogue_letter, letter = m[2], m[3], m[4]
    return f"Ses{session}{letter}", "left" if letter == dialogue_letter else "right"


def choose_dev_dialogues(dialogues: list[str], *, n: int | None = None, seed: int = DEV_SEED) -> list[str]:
    """Draw the dev dialogues from Session 1-4 dialogue names (sorted result).

    ``n`` defaults to ``min(20, max(1, round(len(dialogues) / 6)))`` (0 when fewer than 2 dialogues).
    """
    pool = sorted(dialogues)
    if n is None:
        n = 0 if len(pool) < 2 else min(DEV_DIALOGUES, max(1, round(len(pool) / 6)))
    return sorted(random.Random(seed).sample(pool, n))


def locate_sessions(root: str | Path) -> dict[int, Path]:
    """``{session number: SessionN folder}`` found by name under ``root``.

    Raises
    ------
    CorpusError
        No session folder with ``dialog/EmoEvaluation`` in it; the message lists what is there.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(
            f"IEMOCAP root {root} is not a folder. Pass --root the IEMOCAP_full_release "
            "folder (the one holding Session1 ... Session5)."
        )
    names = [f"Session{s}" for s in SESSIONS]
    hits = find_by_name(root, names, want_dir=True, prune=names)
    sessions = {}
    for s in SESSIONS:
        cands = [p for p in hits[f"Session{s}"] if (p / "dialog" / "EmoEvaluation").is_dir()]
        if (p := pick_shallowest(cands, f"Session{s} folders")) is not None:
            sessions[s] = p
    if not sessions:
        raise CorpusError(
            f"no IEMOCAP session under {root}. Expected IEMOCAP_full_release/Session1..Session5, each with "
            "dialog/EmoEvaluation/<dialogue>.txt, dialog/transcriptions/, sentences/wav/ and "
            "dialog/avi/DivX/. "
            f"Found at the top: {list_root(root)}"
        )
    return sessions


def _media_status(path: Path, folder: Path) -> tuple[str | None, str]:
    if not folder.is_dir():
        return None, NO_FOLDER
    if not path.is_file():
        return None, MISSING
    if path.stat().st_size == 0:
        return None, ZERO_BYTE
    return os.path.abspath(path), FOUND


def read_dialogue(
    session_dir: Path, dialogue: str, session: int, split: str, report: PrepareReport
) -> list[Utterance]:
    """The utterances of one dialogue, in transcription order, with media paths and statuses."""
    emo_path = session_dir / "dialog" / "EmoEvaluation" / f"{dialogue}.txt"
    trn_path = session_dir / "dialog" / "transcriptions" / f"{dialogue}.txt"
    if not trn_path.is_file():
        raise CorpusError(
            f"{trn_path} is missing but {emo_path} exists: the transcription gives the text and "
            "dialogue order. Restore it from the IEMOCAP release."
        )
    labels = {e.utt_id: e for e in parse_emo_evaluation(emo_path)}
    transcript = parse_transcription(trn_path)
    avi_dir = session_dir / "dialog" / "avi" / "DivX"
    wav_dir = session_dir / "sentences" / "wav" / dialogue
    clip, clip_status = _media_status(avi_dir / f"{dialogue}.avi", avi_dir)
    out: list[Utterance] = []
    unlabelled = 0
    for utt_id, raw_text in transcript:
        e = labels.pop(utt_id, None)
        if e is None:
            unlabelled += 1
            continue
        try:
            speaker, side = speaker_and_side(utt_id)
        except ValueError as err:
            raise CorpusError(f"{emo_path}: {err}") from None
        audio, audio_status = _media_status(wav_dir / f"{utt_id}.wav", wav_dir.parent)
        u = Utterance(
            corpus="iemocap",
            split=split,
            dialogue_id=dialogue,
            position=len(out),
            utterance_id=utt_id,
            speaker=speaker,
            text=clean_text(raw_text),
            label=e.label,
            clip=clip,
            start=e.start,
            end=e.end,
            session=session,
            side=side,
            audio=audio,
        )
        report.clip_status[u.id] = clip_status
        report.audio_status[u.id] = audio_status
        out.append(u)
    if labels:
        report.notes.append(
            f"{dialogue}: {len(labels)} labelled turn(s) with no transcription line skipped: "
            f"{', '.join(sorted(labels))}"
        )
    if unlabelled:
        report.unlabelled_lines[dialogue] = unlabelled
    if wav_dir.is_dir():
        known = {u.utterance_id for u in out}
        extra = sorted(
            n for n in os.listdir(wav_dir) if n.endswith(".wav") and not is_junk(n) and n[:-4] not in known
        )
        report.ignored.setdefault(split, []).extend(extra)
    return out


def list_dialogues(session_dir: Path) -> list[str]:
    """Dialogue names of a session: top-level ``EmoEvaluation/*.txt`` files, junk skipped, sorted."""
    emo_dir = session_dir / "dialog" / "EmoEvaluation"
    return sorted(
        p.stem for p in emo_dir.iterdir() if p.is_file() and p.suffix == ".txt" and not is_junk(p.name)
    )


def prepare_iemocap(
    root: str | Path, *, report: PrepareReport | None = None, dev_seed: int = DEV_SEED
) -> list[Utterance]:
    """Read an IEMOCAP release into utterances (train: Sessions 1-4 minus dev; test: Session 5).

    Parameters
    ----------
    root : str or Path
        ``IEMOCAP_full_release`` or a folder above it.
    report : PrepareReport, optional
        Filled with clip/audio statuses, ignored wavs, the dev dialogues and notes.
    dev_seed : int
        Seed of the dev-dialogue draw (:func:`choose_dev_dialogues`).

    Returns
    -------
    list of Utterance
        Ordered by split (train, dev, test), session, dialogue name, transcription order.

    Raises
    ------
    CorpusError
        No session found, a malformed label line, or a missing transcription file.
    """
    sessions = locate_sessions(root)
    report = report if report is not None else PrepareReport(corpus="iemocap")
    report.root = Path(root)
    dialogues = {s: list_dialogues(d) for s, d in sessions.items()}
    dev = set(
        choose_dev_dialogues(
            [g for s, gs in dialogues.items() if s != TEST_SESSION for g in gs], seed=dev_seed
        )
    )
    report.sources["sessions"] = ", ".join(str(p) for p in sessions.values())
    report.sources["dev dialogues"] = (
        ", ".join(sorted(dev)) or "(none: fewer than 2 dialogues in Sessions 1-4)"
    )
    out: list[Utterance] = []
    for s, session_dir in sessions.items():
        for dialogue in dialogues[s]:
            split = "test" if s == TEST_SESSION else ("dev" if dialogue in dev else "train")
            out += read_dialogue(session_dir, dialogue, s, split, report)
    if report.unlabelled_lines:
        report.notes.append(
            f"{sum(report.unlabelled_lines.values())} transcription line(s) without a label skipped "
            f"(_XX ids, unlabelled turns) in {len(report.unlabelled_lines)} dialogue(s)"
        )
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(out, key=lambda u: order[u.split])  # stable: keeps session/dialogue/position order
