"""The bundled sample corpus: 4 dialogues, 25 utterances, all 7 MELD labels, real faces, in MELD's layout.

It lives in ``pipeline/corpora/sample_data/`` (CSVs + ``train_splits/``, ``dev_splits_complete/``,
``output_repeated_splits_test/``), is read by the MELD reader (``corpus="sample"``), and is rebuilt
bit-for-bit by::

    python -m pipeline.corpora.sample --rebuild     # rewrite sample_data/
    python -m pipeline.corpora.sample --check       # regenerate in a temp folder and compare md5

Each clip is 1.5 s of 160x120 H.264 at 24 fps with 48 kHz AAC (stereo; one 5.1 clip, as MELD has
both). The label is learnable from every modality: the text is an emotional sentence of that
label, the audio pitch is :data:`~pipeline.testing.signals.LABEL_TONE_HZ` [label], and the
astronaut's face sits at :data:`~pipeline.testing.signals.LABEL_FACE_POS` [label] (scale varied per
clip). The face is NASA's public-domain astronaut portrait (:func:`skimage.data.astronaut`).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.corpora.base import PrepareReport
from pipeline.manifest import Utterance
from pipeline.testing.av_files import write_clip
from pipeline.testing.meld_tree import MELD_CLIP_DIRS, MELD_SENTIMENT, format_srt_time, write_meld_csv
from pipeline.testing.signals import LABEL_FACE_POS, LABEL_TONE_HZ

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).with_name("sample_data")

#: (speaker, label, text) per utterance, per dialogue, per split.
SAMPLE_SCRIPT: dict[str, list[list[tuple[str, str, str]]]] = {
    "train": [
        [
            ("Monica", "neutral", "So, what are we doing tonight?"),
            ("Chandler", "joy", "I got the tickets! This is great!"),
            ("Monica", "surprise", "What? You actually got them?"),
            ("Chandler", "fear", "Wait, I think somebody\u2019s following us."),
            ("Monica", "anger", "Stop it, that\u2019s not funny!"),
            ("Chandler", "sadness", "I\u2019m sorry\u2026 I just wanted a nice night."),
            ("Monica", "disgust", "Ugh, this seat is sticky. Gross."),
        ],
        [
            ("Joey", "joy", "Pizza\u2019s here, yes!"),
            ("Rachel", "disgust", "Eww, anchovies? That\u2019s disgusting."),
            ("Joey", "sadness", "You never like my pizza."),
            ("Rachel", "anger", "Because you always order it without asking!"),
            ("Joey", "fear", "Is that a spider? Oh no, oh no."),
            ("Rachel", "surprise", "Wow, you jumped so high!"),
            ("Joey", "neutral", "Okay. Let\u2019s just eat."),
        ],
    ],
    "dev": [
        [
            ("Ross", "neutral", "I\u2019m going to the museum tomorrow."),
            ("Phoebe", "joy", "Oh, I love that place!"),
            ("Ross", "surprise", "Really? You\u2019ve been there?"),
            ("Phoebe", "sadness", "Once, with my grandmother. I miss her."),
            ("Ross", "anger", "And they closed the dinosaur wing, again!"),
        ],
    ],
    "test": [
        [
            ("Rachel", "neutral", "The coffee is ready."),
            ("Monica", "disgust", "This milk smells awful."),
            ("Rachel", "fear", "Did you hear that noise?"),
            ("Monica", "joy", "It\u2019s just Chandler! He\u2019s home early!"),
            ("Rachel", "surprise", "He brought flowers? No way!"),
            ("Monica", "anger", "He forgot the groceries, again!"),
        ],
    ],
}

CLIP_SECONDS = 1.5
CLIP_SIZE = (160, 120)


def sample_rows(split: str) -> list[dict]:
    """The MELD-format rows of one sample split (episode times 1 s apart, Season 1 Episode 1)."""
    rows, sr_no = [], 1
    for dia, turns in enumerate(SAMPLE_SCRIPT[split]):
        t = 30.0 + 60.0 * dia
        for utt, (speaker, label, text) in enumerate(turns):
            rows.append(
                {
                    "Sr No.": str(sr_no),
                    "Utterance": text,
                    "Speaker": speaker,
                    "Emotion": label,
                    "Sentiment": "positive" if label == "surprise" and "!" in text else MELD_SENTIMENT[label],
                    "Dialogue_ID": str(dia),
                    "Utterance_ID": str(utt),
                    "Season": "1",
                    "Episode": "1",
                    "StartTime": format_srt_time(t),
                    "EndTime": format_srt_time(t + CLIP_SECONDS),
                }
            )
            t += CLIP_SECONDS + 0.5
            sr_no += 1
    return rows


def build_sample(out_dir: str | Path) -> Path:
    """Write the sample corpus into ``out_dir`` (deterministic bytes); return ``out_dir``."""
    out_dir = Path(out_dir)
    n = 0
    for split, clip_dir in MELD_CLIP_DIRS.items():
        rows = sample_rows(split)
        write_meld_csv(out_dir / f"{split}_sent_emo.csv", rows)
        for r in rows:
            label = r["Emotion"]
            write_clip(
                out_dir / clip_dir / f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4",
                duration=CLIP_SECONDS,
                size=CLIP_SIZE,
                fps=24.0,
                tone_hz=LABEL_TONE_HZ[label],
                face_pos=LABEL_FACE_POS[label],
                face_scale=0.55 + 0.05 * (n % 3),
                audio_channels=6 if n == 3 else 2,
                background=(40 + 10 * (n % 4), 60, 90),
                seed=n,
            )
            n += 1
    return out_dir


def md5_tree(folder: str | Path) -> dict[str, str]:
    """Relative path -> md5 of every file under ``folder``."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def prepare_sample(report: PrepareReport | None = None) -> list[Utterance]:
    """Read the bundled sample corpus through the MELD reader (``corpus="sample"``).

    Examples
    --------
    >>> len(prepare_sample())
    25
    """
    from pipeline.corpora.meld import prepare_meld

    report = report if report is not None else PrepareReport(corpus="sample")
    return prepare_meld(SAMPLE_DIR, corpus="sample", report=report)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.corpora.sample --rebuild | --check``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rebuild", action="store_true", help=f"rewrite {SAMPLE_DIR}")
    group.add_argument("--check", action="store_true", help="regenerate in a temp folder and compare md5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.rebuild:
        tmp = Path(tempfile.mkdtemp(prefix="m2f-sample-", dir=SAMPLE_DIR.parent))
        build_sample(tmp)
        if SAMPLE_DIR.exists():
            shutil.rmtree(SAMPLE_DIR)
        tmp.rename(SAMPLE_DIR)
        size = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
        logger.info("wrote %s (%.2f MB)", SAMPLE_DIR, size / 1e6)
        return 0
    with tempfile.TemporaryDirectory() as fresh_dir:
        fresh = md5_tree(build_sample(fresh_dir))
    bundled = md5_tree(SAMPLE_DIR)
    differ = sorted(k for k in fresh.keys() | bundled.keys() if fresh.get(k) != bundled.get(k))
    if differ:
        logger.error("sample_data differs from its generator: %s", ", ".join(differ))
    else:
        logger.info("sample_data matches its generator")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
