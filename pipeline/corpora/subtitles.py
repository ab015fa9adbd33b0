"""Subtitle cues as utterances: what ``m2f predict VIDEO --subtitles talk.srt|talk.vtt`` reads.

Parsing is pysubs2's (SRT, WebVTT and the other formats it knows); this module only decides what a cue
means for emotion recognition: one cue = one utterance with its text, start and end (seconds), in time
order, and a speaker taken from

* a WebVTT voice tag, ``<v Ann>Hello</v>`` or ``<v.loud Bob Smith>Hi`` (speaker ``Bob Smith``), else
* a leading ``NAME:`` (one to three capitalised words, e.g. ``ANN: Hello`` or ``Dr. Who: Hi``), else
* :data:`UNKNOWN_SPEAKER`.

Other markup (``<i>``, ``<b>``, ``{\\an8}``) is dropped and line breaks inside a cue become spaces.
Cues left without text (pure markup, sound-only cues such as ``[music]`` are kept as text) are skipped.

Examples
--------
>>> from pathlib import Path
>>> vtt = "WEBVTT\\n\\n00:00.000 --> 00:01.500\\n<v Ann>Hello there, how are you?\\n"
>>> _ = Path("talk.vtt").write_text(vtt)
>>> cues = read_subtitles("talk.vtt")
>>> cues[0]
Cue(start=0.0, end=1.5, speaker='Ann', text='Hello there, how are you?')
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pipeline.shown import shown

#: Speaker of a cue that names none.
UNKNOWN_SPEAKER = "unknown"

_VOICE = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]+)>", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
#: One to three capitalised words and a colon: ``ANN:``, ``Dr. Who:``, ``Bob Smith:`` (not ``At 10:`` nor
#: ``Here's the thing:``).
_NAME_PREFIX = re.compile(r"^\s*([A-Z][^\W\d_]*\.?(?:[ \-'][A-Z][^\W\d_]*\.?){0,2})\s*:\s+(?=\S)")


class SubtitleError(ValueError):
    """A subtitle file that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class Cue:
    """One subtitle cue as an utterance (times in seconds)."""

    start: float
    end: float
    speaker: str
    text: str


def split_speaker(text: str) -> tuple[str | None, str]:
    """``(speaker, text)`` from a cue's raw text: the voice tag, else a leading ``NAME:``, else None.

    >>> split_speaker("<v Ann>Hi there</v>")
    ('Ann', 'Hi there')
    >>> split_speaker("BOB: Fine.")
    ('BOB', 'Fine.')
    >>> split_speaker("At 10: we leave")
    (None, 'At 10: we leave')
    """
    voice = _VOICE.search(text)
    if voice:
        return voice.group(1).strip(), _clean(_VOICE.sub("", text))
    cleaned = _clean(text)
    prefix = _NAME_PREFIX.match(cleaned)
    if prefix:
        return prefix.group(1).strip(), cleaned[prefix.end() :].strip()
    return None, cleaned


def _clean(text: str) -> str:
    """Text without HTML-like tags, SSA override blocks and line breaks."""
    text = _HTML_TAG.sub("", text)
    text = re.sub(r"\{\\[^}]*\}", "", text)
    text = text.replace("\\N", " ").replace("\\n", " ").replace("\n", " ")
    return re.sub(r"\s+", " ", text).strip()


def read_subtitles(path: str | Path) -> list[Cue]:
    """The cues of an SRT / WebVTT (any pysubs2 format) file, in time order (see the module docs).

    Raises
    ------
    SubtitleError
        A missing or unreadable file, or one without a single cue with text.
    """
    import pysubs2

    path = Path(path)
    if not path.is_file():
        raise SubtitleError(
            f"{shown(path)}: no such subtitle file; pass an .srt or .vtt file with --subtitles"
        )
    try:
        # unknown tags (the WebVTT voice tag among them) are kept so the speaker can be read from them
        subs = pysubs2.load(str(path), encoding="utf-8", keep_unknown_html_tags=True)
    except Exception as e:  # noqa: BLE001 - any parse failure (a JSON file named .srt: TypeError)
        raise SubtitleError(
            f"{shown(path)}: not a subtitle file pysubs2 can read ({type(e).__name__}: "
            f"{shown(e)}); give an .srt or .vtt file saved as UTF-8"
        ) from None
    cues: list[Cue] = []
    for event in sorted((e for e in subs if not e.is_comment), key=lambda e: (e.start, e.end)):
        speaker, text = split_speaker(event.text)
        if not text:
            continue
        bad = next(
            (c for c in (speaker or "") + text if unicodedata.category(c) == "Cc" and c not in "\n\t"), None
        )
        if bad is not None:
            raise SubtitleError(
                f"{shown(path)}: cue {len(cues) + 1} (at {event.start / 1000.0:.3f} s) holds "
                f"the control character {bad!r}; remove it from the subtitle file"
            )
        start, end = event.start / 1000.0, event.end / 1000.0
        if end <= start:
            end = start + 0.001  # a zero-length cue still names an utterance; keep a 1 ms span
        cues.append(Cue(start=start, end=end, speaker=speaker or UNKNOWN_SPEAKER, text=text))
    if not cues:
        raise SubtitleError(f"{shown(path)}: no cue with text; each cue becomes one utterance to classify")
    return cues


def write_srt(path: str | Path, cues: list[Cue]) -> Path:
    """Write ``cues`` as SRT with a leading ``NAME:`` per cue (the inverse of :func:`read_subtitles`)."""
    import pysubs2

    subs = pysubs2.SSAFile()
    for c in cues:
        text = c.text if c.speaker == UNKNOWN_SPEAKER else f"{c.speaker}: {c.text}"
        subs.append(pysubs2.SSAEvent(start=round(c.start * 1000), end=round(c.end * 1000), text=text))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subs.save(str(path), format_="srt")
    return path
