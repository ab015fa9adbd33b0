"""A miniature ``IEMOCAP_full_release`` tree in the real format: EmoEvaluation and transcription
files, per-utterance wavs and per-dialogue split-screen avi videos.

The tree carries the traps of real IEMOCAP copies (EmoEvaluation blocks out of temporal order, ``xxx``
labels, unlabelled ``_MXX0`` transcription lines, ``Categorical/`` files to ignore, AppleDouble junk,
a nested copy; the traps listed in ``docs/CORPORA.md`` section 7); :func:`make_iemocap_tree` says
exactly which trap sits where.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.testing.av_files import write_split_screen_video, write_wav
from pipeline.testing.signals import LABEL_TONE_HZ

#: Consensus codes cycled by the IEMOCAP generator (6-class ERC codes plus xxx and sur).
IEMOCAP_CODES = ("neu", "fru", "ang", "sad", "hap", "exc", "xxx", "sur")
_IEMOCAP_WORDS = {
    "neu": "Neutral",
    "fru": "Frustration",
    "ang": "Anger",
    "sad": "Sadness",
    "hap": "Happiness",
    "exc": "Excited",
    "xxx": "Other",
    "sur": "Surprise",
}
_IEMOCAP_TEXTS = (
    "Excuse me.",
    "Do you have your forms?",
    "Yeah. [LAUGHTER]",
    "I don't know.",
    "Okay, so what [BREATHING] do you want?",
    "That's not fair!",
)


def iemocap_dialogue_names(session: int, count: int) -> list[str]:
    """Dialogue names for a session: alternating F/M markers, impro/script, e.g. ``Ses01M_script01_1``."""
    names = []
    for j in range(count):
        letter = "F" if j % 2 == 0 else "M"
        kind = "impro" if (j // 2) % 2 == 0 else "script"
        num = j // 4 + 1
        suffix = "_1" if kind == "script" else ""
        names.append(f"Ses{session:02d}{letter}_{kind}{num:02d}{suffix}")
    return names


def iemocap_dialogue_turns(dialogue: str, n_utts: int, *, seed: int, offset: int) -> list[dict]:
    """The turns of one synthetic dialogue in temporal order.

    Speakers alternate F, M, F, M ... (ids ``<dialogue>_F000``, ``<dialogue>_M000``, ``<dialogue>_F001`` ...);
    each turn lasts 1.0 s with 0.5 s between turns, starting at 1.5 s; codes cycle through
    :data:`IEMOCAP_CODES` from ``offset + seed``.
    """
    turns, counts = [], {"F": 0, "M": 0}
    t = 1.5
    for i in range(n_utts):
        letter = "F" if i % 2 == 0 else "M"
        utt = f"{dialogue}_{letter}{counts[letter]:03d}"
        counts[letter] += 1
        code = IEMOCAP_CODES[(offset + seed + i) % len(IEMOCAP_CODES)]
        turns.append(
            {
                "utt_id": utt,
                "start": round(t, 4),
                "end": round(t + 1.0, 4),
                "label": code,
                "text": _IEMOCAP_TEXTS[(offset + i) % len(_IEMOCAP_TEXTS)],
                "letter": letter,
            }
        )
        t += 1.5
    return turns


def _emo_block(turn: dict) -> str:
    word = _IEMOCAP_WORDS[turn["label"]]
    summary = (
        f"[{turn['start']:.4f} - {turn['end']:.4f}]\t{turn['utt_id']}\t{turn['label']}\t"
        "[2.5000, 3.0000, 2.5000]"
    )
    lines = [
        summary,
        f"C-E2:\t{word};\t()",
        f"C-E3:\t{word}; Neutral;\t()",
        f"C-{turn['letter']}1:\t{word};\t(self)",
        "A-E3:\tval 3; act 2; dom  2;\t()",
        "A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated)",
    ]
    return "\n".join(lines)


def write_emo_evaluation(path: Path, turns: Sequence[dict]) -> Path:
    """EmoEvaluation/<dialogue>.txt: header, blank line, TAB blocks; **F turns first, then M**.

    The block order differs from temporal order on purpose: dialogue order must come from the
    transcription file.
    """
    ordered = [t for t in turns if t["letter"] == "F"] + [t for t in turns if t["letter"] == "M"]
    text = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
    text += "\n\n".join(_emo_block(t) for t in ordered) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_transcription(path: Path, dialogue: str, turns: Sequence[dict]) -> Path:
    """transcriptions/<dialogue>.txt in temporal order, with an extra unlabelled ``_MXX0`` line."""
    lines = []
    for i, t in enumerate(turns):
        lines.append(f"{t['utt_id']} [{t['start']:08.4f}-{t['end']:08.4f}]: {t['text']}")
        if i == 0:
            lines.append(f"{dialogue}_MXX0 [{t['end']:08.4f}-{t['end'] + 0.2:08.4f}]: Mm-hmm.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_iemocap_tree(
    root: str | Path,
    *,
    sessions: Sequence[int] = (1, 5),
    dialogues_per_session: int = 2,
    utterances_per_dialogue: int = 4,
    video: bool = True,
    wavs: bool = True,
    nested: bool = False,
    junk: bool = True,
    tone_for_label: bool = False,
    video_size: tuple[int, int] = (720, 480),
    fps: float = 30.0,
    seed: int = 0,
) -> Path:
    """Build a miniature ``IEMOCAP_full_release`` tree in the real format; return the ``--root`` folder.

    Per session ``N`` in ``sessions`` and dialogue (names from :func:`iemocap_dialogue_names`, turns from
    :func:`iemocap_dialogue_turns`, offset = running dialogue index * utterances_per_dialogue):

    * ``SessionN/dialog/EmoEvaluation/<dialogue>.txt`` (:func:`write_emo_evaluation`: blocks F-first,
      one ``xxx`` whenever the code cycle reaches it, TAB separators, ``dom  N;``);
    * ``SessionN/dialog/EmoEvaluation/Categorical/<dialogue>_e2_cat.txt`` (must be ignored);
    * ``SessionN/dialog/transcriptions/<dialogue>.txt`` (:func:`write_transcription`: a ``[LAUGHTER]``
      tag, an ``_MXX0`` line);
    * ``SessionN/sentences/wav/<dialogue>/<utt>.wav`` (16 kHz mono int16, 1 s; pitch per label with
      ``tone_for_label``) when ``wavs``;
    * ``SessionN/dialog/avi/DivX/<dialogue>.avi`` (``video_size`` at ``fps``, red left half, blue right
      half, a face in each) when ``video``;
    * with ``junk``: ``._<dialogue>.txt`` AppleDouble files next to EmoEvaluation and transcription
      files and a ``._<utt>.wav`` beside the first wav; ``._IEMOCAP_full_release`` next to the root.

    Parameters
    ----------
    nested : bool
        Put the corpus at ``IEMOCAP_full_release/IEMOCAP_full_release`` (seen in some copies).

    Returns
    -------
    Path
        ``root/IEMOCAP_full_release`` (the outer one when ``nested``).
    """
    root = Path(root)
    top = root / "IEMOCAP_full_release"
    base = top / "IEMOCAP_full_release" if nested else top
    base.mkdir(parents=True, exist_ok=True)
    (base / "README.txt").write_text("IEMOCAP (synthetic miniature for tests)\n", encoding="utf-8")
    if junk:
        (root / "._IEMOCAP_full_release").write_bytes(b"\x00\x05\x16\x07junk")
    offset = 0
    for session in sessions:
        sdir = base / f"Session{session}"
        for dialogue in iemocap_dialogue_names(session, dialogues_per_session):
            turns = iemocap_dialogue_turns(dialogue, utterances_per_dialogue, seed=seed, offset=offset)
            offset += utterances_per_dialogue
            _write_iemocap_dialogue(
                sdir,
                dialogue,
                turns,
                video=video,
                wavs=wavs,
                junk=junk,
                tone_for_label=tone_for_label,
                video_size=video_size,
                fps=fps,
                seed=seed,
            )
    return top


def _write_iemocap_dialogue(
    sdir: Path,
    dialogue: str,
    turns: Sequence[dict],
    *,
    video: bool,
    wavs: bool,
    junk: bool,
    tone_for_label: bool,
    video_size: tuple[int, int],
    fps: float,
    seed: int,
) -> None:
    emo = write_emo_evaluation(sdir / "dialog" / "EmoEvaluation" / f"{dialogue}.txt", turns)
    cat = sdir / "dialog" / "EmoEvaluation" / "Categorical" / f"{dialogue}_e2_cat.txt"
    cat.parent.mkdir(parents=True, exist_ok=True)
    cat.write_text("".join(f"{t['utt_id']} :Other;\n" for t in turns), encoding="utf-8")
    trn = write_transcription(sdir / "dialog" / "transcriptions" / f"{dialogue}.txt", dialogue, turns)
    if junk:
        for p in (emo, trn):
            p.with_name("._" + p.name).write_bytes(b"\x00\x05\x16\x07\x00\x02junk")
    if wavs:
        for i, t in enumerate(turns):
            hz = LABEL_TONE_HZ[t["label"]] if tone_for_label else 200.0 + 40.0 * (i % 7)
            wav = write_wav(
                sdir / "sentences" / "wav" / dialogue / f"{t['utt_id']}.wav",
                duration=t["end"] - t["start"],
                tone_hz=hz,
                seed=seed + i,
            )
            if junk and i == 0:
                wav.with_name("._" + wav.name).write_bytes(b"\x00\x05\x16\x07junk")
    if video:
        write_split_screen_video(
            sdir / "dialog" / "avi" / "DivX" / f"{dialogue}.avi",
            duration=turns[-1]["end"] + 0.5,
            fps=fps,
            size=video_size,
        )
