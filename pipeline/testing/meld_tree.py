"""A miniature MELD tree in the real format: annotation CSVs (current or pre-2020 bytes) and mp4 clips.

The tree carries the traps of real MELD copies (missing and zero-byte clips, clips without a row,
Utterance_ID gaps, one-digit hours, 2-digit milliseconds, ``final_videos_test`` twins, AppleDouble
junk; the traps listed in ``docs/CORPORA.md`` section 7); :func:`make_meld_tree` and
:func:`meld_rows` say exactly which trap sits where, so tests can assert manifests field by field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from pipeline.testing.av_files import write_clip
from pipeline.testing.signals import LABEL_FACE_POS, LABEL_TONE_HZ

#: MELD's seven emotion labels, in the order of the corpus README.
MELD_EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")

#: Sentiment that MELD pairs with each emotion (surprise alternates negative/positive in the corpus).
MELD_SENTIMENT = {
    "neutral": "neutral",
    "joy": "positive",
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
    "surprise": "negative",
}

MELD_HEADER = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)

#: Clip folder per MELD split, as in MELD.Raw.
MELD_CLIP_DIRS = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}

#: Unicode -> cp1252-read-as-latin-1 C1 code point, to write "old" (pre-2020) MELD CSVs.
_TO_C1 = {
    "\u2019": "\x92",
    "\u2018": "\x91",
    "\u201c": "\x93",
    "\u201d": "\x94",
    "\u2026": "\x85",
    "\u2014": "\x97",
    "\u2013": "\x96",
}

# Utterance texts cycled by the MELD generator: curly quotes, an ellipsis, a dash, a comma inside a
# quoted field, doubled inner quotes, and a double space, as in the real CSVs (docs/CORPORA.md 2.2).
_MELD_TEXTS = (
    "Oh my God, he\u2019s lost it. He\u2019s totally lost it.",
    "What?",
    'I\u2019m thinkin\u2019 she\u2019ll say, "Hey, you\u2019re not Bob."',
    "Well\u2026 no  way.",
    "Okay \u2014 fine, let\u2019s go.",
    "\u2018Yes\u2019 she said.",
    "You\u2019re \u201ckidding\u201d me!",
)
_MELD_SPEAKERS = ("Joey", "Rachel", "Richard\u2019s Date", "Monica", "Chandler and Joey")


def format_srt_time(seconds: float, *, one_digit_hour: bool = False, ms_digits: int = 3) -> str:
    """``HH:MM:SS,mmm`` as in MELD (``H:`` with ``one_digit_hour``; 2-digit ms as a fraction)."""
    total_ms = int(round(seconds * 1000))
    h, rem = divmod(total_ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    frac = f"{ms:03d}" if ms_digits == 3 else f"{ms // 10:02d}"
    return f"{h:d}:{m:02d}:{s:02d},{frac}" if one_digit_hour else f"{h:02d}:{m:02d}:{s:02d},{frac}"


def meld_rows(
    split: str, *, n_dialogues: int, utterances_per_dialogue: int, traps: bool, seed: int
) -> list[dict]:
    """The rows of one synthetic MELD CSV (dicts keyed by :data:`MELD_HEADER`), before encoding.

    Deterministic layout (with ``traps=True``):

    * dialogue ids are ``0..n_dialogues`` with **1 missing** in train (a missing Dialogue_ID);
    * dialogue 0 of every split has an **Utterance_ID gap**: ids ``0, 1, 3, 4, ...`` (2 missing);
    * train dia0 utt1's EndTime has **2-digit milliseconds** (``,28`` = 0.28 s);
    * odd utterances use a **one-digit hour** (``0:00:12,345``);
    * train ``Sr No.`` restarts at dialogue 3 (duplicate values: never a key).

    Labels cycle through :data:`MELD_EMOTIONS` starting at ``seed`` (all 7 present once a split has 7
    utterances); surprise alternates negative/positive sentiment.
    """
    dialogue_ids = list(range(n_dialogues + 1)) if (traps and split == "train") else list(range(n_dialogues))
    if traps and split == "train":
        dialogue_ids.remove(1)
    rows, k, sr_no = [], seed, 1
    for d_index, dia in enumerate(dialogue_ids):
        utt_ids = list(range(utterances_per_dialogue + 1))
        if traps and d_index == 0:
            utt_ids.remove(2)
        else:
            utt_ids = utt_ids[:-1]
        if traps and split == "train" and dia == 3:
            sr_no = 1
        t = 60.0 * (d_index + 1)
        for pos, utt in enumerate(utt_ids):
            label = MELD_EMOTIONS[k % len(MELD_EMOTIONS)]
            sentiment = MELD_SENTIMENT[label]
            if label == "surprise" and (k // len(MELD_EMOTIONS)) % 2:
                sentiment = "positive"
            start, end = t, t + 1.5 + 0.25 * (pos % 3)
            two_digit = traps and split == "train" and d_index == 0 and utt == 1
            if two_digit:
                end = float(int(end)) + 0.28
            rows.append(
                {
                    "Sr No.": str(sr_no),
                    "Utterance": _MELD_TEXTS[k % len(_MELD_TEXTS)],
                    "Speaker": _MELD_SPEAKERS[(pos + d_index) % len(_MELD_SPEAKERS)],
                    "Emotion": label,
                    "Sentiment": sentiment,
                    "Dialogue_ID": str(dia),
                    "Utterance_ID": str(utt),
                    "Season": str(1 + dia % 9),
                    "Episode": str(1 + dia % 20),
                    "StartTime": format_srt_time(start, one_digit_hour=traps and pos % 2 == 1),
                    "EndTime": format_srt_time(
                        end, one_digit_hour=traps and pos % 2 == 1, ms_digits=2 if two_digit else 3
                    ),
                }
            )
            t = end + 0.5
            k += 1
            sr_no += 1
    return rows


def write_meld_csv(path: str | Path, rows: Sequence[dict], *, old_encoding: bool = False) -> Path:
    """Write MELD CSV bytes: the real header, minimal quoting, timestamps always quoted.

    ``old_encoding=False`` gives the current files (UTF-8, CRLF, final CRLF); ``True`` gives the
    pre-2020 copies (LF, curly quotes/dashes as C1 code points U+0091-U+0097, docs/CORPORA.md 2.2).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n" if old_encoding else "\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(MELD_HEADER)
    for r in rows:
        w.writerow([r[c] for c in MELD_HEADER])
    text = buf.getvalue()
    # Timestamps contain a comma, so QUOTE_MINIMAL already quotes them, as the real files do.
    if old_encoding:
        text = text.translate({ord(k): v for k, v in _TO_C1.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def make_meld_tree(
    root: str | Path,
    *,
    n_dialogues: int = 3,
    utterances_per_dialogue: int = 4,
    splits: Sequence[str] = ("train", "dev", "test"),
    clips: bool = True,
    layout: str = "raw",
    old_encoding: bool = False,
    traps: bool = True,
    tone_for_label: bool = False,
    duration: float = 1.0,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
) -> Path:
    """Build a miniature MELD tree in the real format; return the folder to pass as ``--root``.

    Parameters
    ----------
    root : str or Path
        Folder to create the tree in (created if needed).
    n_dialogues, utterances_per_dialogue : int
        Size per split. ``n_dialogues * utterances_per_dialogue`` utterances per split.
    splits : sequence of str
        Which splits get a CSV (and clips).
    clips : bool
        Write the clip folders; False gives a CSV-only tree.
    layout : str
        ``"raw"``: ``root/MELD.Raw/{CSVs, train_splits/, ...}`` (as MELD.Raw.tar.gz extracts);
        ``"flat"``: CSVs and clip folders directly in ``root``;
        ``"kaggle"``: CSVs in ``root``, clips in ``root/<split>/<clip folder>/``.
    old_encoding : bool
        Write the old C1-character, LF CSVs instead of the current UTF-8 CRLF ones.
    traps : bool
        Include the traps (see :func:`meld_rows`) and, with clips:

        * train: the last utterance of the last dialogue has **no clip**; ``dia0_utt1.mp4`` is
          **zero bytes**; ``._dia0_utt0.mp4`` AppleDouble junk;
        * dev: an **extra clip with no CSV row**, ``dia0_utt2.mp4`` (the Utterance_ID gap);
          ``dia0_utt0.mp4`` has **6-channel (5.1)** audio;
        * test: ``final_videos_testdia0_utt0.mp4`` **next to its plain twin** ``dia0_utt0.mp4``
          (the twin has a 880 Hz tone so a test can tell them apart), and an extra
          ``final_videos_testdia99_utt0.mp4`` with no row.
    tone_for_label : bool
        Audio pitch (:data:`~pipeline.testing.signals.LABEL_TONE_HZ`) and face position
        (:data:`~pipeline.testing.signals.LABEL_FACE_POS`) depend on
        the emotion label: a learnable signal for training tests.
    duration : float
        Seconds per clip.
    size : (int, int)
        Clip frame size.
    seed : int
        Shifts the label cycle and seeds audio noise.

    Returns
    -------
    Path
        ``root`` (all layouts are found from there by name).
    """
    if layout not in ("raw", "flat", "kaggle"):
        raise ValueError(f"layout must be 'raw', 'flat' or 'kaggle', not {layout!r}")
    root = Path(root)
    base = root / "MELD.Raw" if layout == "raw" else root
    for split in splits:
        rows = meld_rows(
            split,
            n_dialogues=n_dialogues,
            utterances_per_dialogue=utterances_per_dialogue,
            traps=traps,
            seed=seed,
        )
        write_meld_csv(base / f"{split}_sent_emo.csv", rows, old_encoding=old_encoding)
        if clips:
            clip_dir = (root / split if layout == "kaggle" else base) / MELD_CLIP_DIRS[split]
            _write_meld_clips(
                clip_dir,
                split,
                rows,
                traps=traps,
                tone_for_label=tone_for_label,
                duration=duration,
                size=size,
                seed=seed,
            )
    return root


def _clip_signal(label: str, index: int, tone_for_label: bool) -> tuple[float, tuple[float, float]]:
    if tone_for_label:
        return LABEL_TONE_HZ[label], LABEL_FACE_POS[label]
    return 200.0 + 40.0 * (index % 7), (0.5, 0.5)


def _write_meld_clips(
    clip_dir: Path,
    split: str,
    rows: Sequence[dict],
    *,
    traps: bool,
    tone_for_label: bool,
    duration: float,
    size: tuple[int, int],
    seed: int,
) -> None:
    clip_dir.mkdir(parents=True, exist_ok=True)
    last = rows[-1]
    for i, r in enumerate(rows):
        name = f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4"
        first_dia = r["Dialogue_ID"] == rows[0]["Dialogue_ID"]
        if traps and split == "train" and r is last:
            continue  # missing clip
        if traps and split == "train" and first_dia and r["Utterance_ID"] == "1":
            (clip_dir / name).write_bytes(b"")  # zero-byte "corrupt" clip
            continue
        hz, pos = _clip_signal(r["Emotion"], i, tone_for_label)
        channels = 6 if (traps and split == "dev" and i == 0) else 2
        if traps and split == "test" and i == 0:
            write_clip(
                clip_dir / name, duration=duration, size=size, tone_hz=880.0, face_pos=pos, seed=seed + i
            )
            name = "final_videos_test" + name
        write_clip(
            clip_dir / name,
            duration=duration,
            size=size,
            tone_hz=hz,
            face_pos=pos,
            audio_channels=channels,
            seed=seed + i,
        )
    if traps:
        d0 = rows[0]["Dialogue_ID"]
        if split == "train":
            (clip_dir / f"._dia{d0}_utt0.mp4").write_bytes(b"\x00\x05\x16\x07junk")
        elif split == "dev":
            write_clip(clip_dir / f"dia{d0}_utt2.mp4", duration=duration, size=size, seed=seed)
        elif split == "test":
            write_clip(clip_dir / "final_videos_testdia99_utt0.mp4", duration=duration, size=size, seed=seed)
