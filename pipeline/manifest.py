"""Typed records for a conversation corpus: utterances, dialogues, and their JSONL manifest.

Every corpus reader (``pipeline.corpora``) returns a list of :class:`Utterance`; everything
downstream (extraction, cache, trainer) keys on :attr:`Utterance.id`, a deterministic string such as
``meld/train/dia0_utt0``. Labels are kept **raw** (``"neutral"``, ``"exc"``, ``"xxx"``): which labels
count, and how they map to classes, is trainer configuration, never decided here.

Examples
--------
>>> u = Utterance(corpus="meld", split="dev", dialogue_id="0", position=0, utterance_id="0",
...               speaker="Phoebe", text="What?", label="surprise", sentiment="negative")
>>> u.id
'meld/dev/dia0_utt0'
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.names import SPLITS  # also imported from here by the corpus readers
from pipeline.store.atomic import commit_tmp, tmp_path

#: Keys of one JSONL manifest line, in order. Scripts rely on these names.
JSONL_KEYS = (
    "id",
    "corpus",
    "split",
    "dialogue_id",
    "position",
    "utterance_id",
    "speaker",
    "text",
    "label",
    "sentiment",
    "clip",
    "start",
    "end",
    "session",
    "side",
)


def make_utterance_id(corpus: str, split: str, dialogue_id: str, utterance_id: str) -> str:
    """Deterministic id ``<corpus>/<split>/dia<dialogue>_utt<utterance>``.

    IEMOCAP utterance ids already carry their dialogue (``Ses01F_impro01_F000``) and are used as is:
    ``iemocap/train/Ses01F_impro01_F000``.
    """
    if corpus == "iemocap":
        return f"{corpus}/{split}/{utterance_id}"
    return f"{corpus}/{split}/dia{dialogue_id}_utt{utterance_id}"


@dataclass(frozen=True)
class Utterance:
    """One utterance (turn) of a dialogue, as the corpus gives it.

    Parameters
    ----------
    corpus : str
        ``meld``, ``iemocap``, ``sample`` or ``custom``.
    split : str
        ``train``, ``dev`` or ``test``.
    dialogue_id : str
        The corpus's own dialogue id (MELD ``"0"``; IEMOCAP ``"Ses01F_impro01"``).
    position : int
        0-based order of the utterance inside its dialogue (list position, not the corpus id;
        MELD's Utterance_ID has gaps).
    utterance_id : str
        The corpus's own utterance id (MELD ``"4"``; IEMOCAP ``"Ses01F_impro01_F000"``).
    speaker : str
        Speaker name (MELD) or ``Ses01F``-style actor id (IEMOCAP: letter of the *utterance*).
    text : str
        Transcript, normalised to clean UTF-8.
    label : str or None
        Raw emotion label; ``None`` where the corpus has none (custom corpora may omit it).
    sentiment : str or None
        MELD's sentiment label; ``None`` elsewhere.
    clip : str or None
        Absolute path to the media: the utterance's own clip (MELD, sample, custom) or the dialogue's
        video (IEMOCAP); ``None`` where no usable file was found.
    start, end : float or None
        Span of the utterance in seconds *inside* ``clip`` where that is a longer video (IEMOCAP,
        custom); for MELD they are the episode times of the CSV, kept for reference only.
    session : int or None
        IEMOCAP session number (1-5).
    side : str or None
        IEMOCAP: ``"left"`` or ``"right"``, the half of the frame the speaker sits in.
    audio : str or None
        Absolute path to a separate audio file for the utterance (IEMOCAP ``sentences/wav``);
        ``None`` when the audio comes from ``clip``. Not part of the JSONL keys contract but stored.
    """

    corpus: str
    split: str
    dialogue_id: str
    position: int
    utterance_id: str
    speaker: str
    text: str
    label: str | None
    sentiment: str | None = None
    clip: str | None = None
    start: float | None = None
    end: float | None = None
    session: int | None = None
    side: str | None = None
    audio: str | None = None

    @property
    def id(self) -> str:
        """Deterministic string id, e.g. ``meld/train/dia0_utt0``."""
        return make_utterance_id(self.corpus, self.split, self.dialogue_id, self.utterance_id)

    def to_json(self) -> dict:
        """Dict with :data:`JSONL_KEYS` (plus ``audio`` when set)."""
        d = dataclasses.asdict(self)
        out = {"id": self.id}
        out.update({k: d[k] for k in JSONL_KEYS[1:]})
        if self.audio is not None:
            out["audio"] = self.audio
        return out

    @classmethod
    def from_json(cls, d: dict) -> Utterance:
        """Inverse of :meth:`to_json`; checks that the stored id matches the fields."""
        fields = {f.name for f in dataclasses.fields(cls)}
        u = cls(**{k: v for k, v in d.items() if k in fields})
        if "id" in d and d["id"] != u.id:
            raise ValueError(f"manifest id {d['id']!r} does not match its fields (expected {u.id!r})")
        return u


@dataclass(frozen=True)
class Dialogue:
    """The utterances of one dialogue, in order."""

    corpus: str
    split: str
    dialogue_id: str
    utterances: tuple[Utterance, ...]

    @property
    def id(self) -> str:
        """``<corpus>/<split>/<dialogue_id>``."""
        return f"{self.corpus}/{self.split}/{self.dialogue_id}"

    def __len__(self) -> int:
        return len(self.utterances)


def group_dialogues(utterances: Iterable[Utterance]) -> list[Dialogue]:
    """Group utterances into dialogues, keeping first-appearance order and sorting by position."""
    groups: dict[tuple[str, str, str], list[Utterance]] = {}
    for u in utterances:
        groups.setdefault((u.corpus, u.split, u.dialogue_id), []).append(u)
    return [
        Dialogue(c, s, d, tuple(sorted(us, key=lambda u: u.position))) for (c, s, d), us in groups.items()
    ]


def write_jsonl(utterances: Iterable[Utterance], path: str | Path) -> Path:
    """Write a manifest, one JSON object per line, atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for u in utterances:
            f.write(json.dumps(u.to_json(), ensure_ascii=False) + "\n")
    return commit_tmp(tmp, path)


def read_jsonl(path: str | Path) -> list[Utterance]:
    """Read a manifest written by :func:`write_jsonl`; errors name the file and line."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(Utterance.from_json(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a valid manifest line: {e}") from e
    return out


def iter_splits(utterances: Iterable[Utterance]) -> Iterator[tuple[str, list[Utterance]]]:
    """Yield ``(split, utterances)`` in :data:`SPLITS` order, skipping empty splits."""
    by_split: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_split.setdefault(u.split, []).append(u)
    for s in SPLITS:
        if s in by_split:
            yield s, by_split[s]


def validate(utterances: Iterable[Utterance]) -> list[str]:
    """Check a manifest; return problems as ``"<id>: <what>"`` strings (empty list = valid).

    Checks: known split, unique ids, positions ``0..n-1`` inside each dialogue, non-empty text and
    speaker, no NUL character in a string (HDF5 cannot store one), finite ``start <= end`` where both
    are given, IEMOCAP side in ``left``/``right``.
    """
    problems: list[str] = []
    seen: Counter[str] = Counter()
    positions: dict[tuple[str, str, str], list[int]] = {}
    for u in utterances:
        seen[u.id] += 1
        if u.split not in SPLITS:
            problems.append(f"{u.id}: unknown split {u.split!r} (expected one of {SPLITS})")
        if not u.text.strip():
            problems.append(f"{u.id}: empty text")
        if not u.speaker.strip():
            problems.append(f"{u.id}: empty speaker")
        nul = [
            k
            for k in ("dialogue_id", "utterance_id", "speaker", "text", "label", "sentiment")
            if "\x00" in (getattr(u, k) or "")
        ]
        if nul:
            problems.append(f"{u.id}: NUL character (\\x00) in {', '.join(nul)}; remove it from the corpus")
        times = [t for t in (u.start, u.end) if t is not None]
        if not all(math.isfinite(t) for t in times):
            problems.append(f"{u.id}: start {u.start} / end {u.end} is not a finite number of seconds")
        elif u.start is not None and u.end is not None and u.end < u.start:
            problems.append(f"{u.id}: end {u.end} before start {u.start}")
        if u.side is not None and u.side not in ("left", "right"):
            problems.append(f"{u.id}: side {u.side!r} is not 'left' or 'right'")
        positions.setdefault((u.corpus, u.split, u.dialogue_id), []).append(u.position)
    problems += [f"{i}: duplicate id ({n} times)" for i, n in seen.items() if n > 1]
    for (c, s, d), pos in positions.items():
        if sorted(pos) != list(range(len(pos))):
            problems.append(f"{c}/{s}/{d}: positions {sorted(pos)} are not 0..{len(pos) - 1}")
    return problems
