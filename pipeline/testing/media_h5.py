"""Generated media.h5 files in the real layout, for the encoder tests and the encoder benchmark.

:func:`write_media` writes a corpus whose emotion label is visible in the signal. Audio: a tone whose
pitch depends on the label (400 / 800 / 1600 Hz, +-4 %), at a random level, under white noise (SNR
0-10 dB) and beside a distractor tone of random pitch. Faces and scenes: a noisy random-colour
background with a bright square of random colour whose *vertical* position (top, middle, bottom band)
depends on the label and whose horizontal position is random. Global-average-pooled random features
see little of that; a trained encoder can learn it.

:func:`write_random_media` writes random clips, crops and frames of any size (for throughput, not
learning).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.store.cache import ShardedWriter

LABELS = ("anger", "joy", "sadness")
PITCH_HZ = (400.0, 800.0, 1600.0)


def synthetic_waveform(c: int, rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """``seconds`` of float32 audio at ``sr`` Hz carrying class ``c`` as the pitch :data:`PITCH_HZ` [c]."""
    t = np.arange(int(seconds * sr)) / sr
    f = PITCH_HZ[c] * rng.uniform(0.96, 1.04)
    tone = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    distract = sum(rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) for _ in range(3))
    snr = 10 ** (rng.uniform(-5, 5) / 10)
    noise = rng.standard_normal(len(t)) * np.sqrt(np.mean(tone**2) / snr)
    return (tone + distract + noise).astype(np.float32)


def synthetic_image(c: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A (3, size, size) uint8 image carrying class ``c`` as the vertical band of a bright square."""
    img = rng.uniform(0, 255, size=3)[:, None, None] + rng.normal(0, 40, size=(3, size, size))
    side = size // 4
    band = size // 3
    y = c * band + int(rng.integers(0, max(band - side, 1)))
    x = int(rng.integers(0, size - side))
    img[:, y : y + side, x : x + side] = rng.uniform(150, 255, size=3)[:, None, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_media(
    path: str | Path,
    n_per_class: dict[str, int] | None = None,
    seconds: float = 0.6,
    image_size: int = 32,
    n_frames: int = 3,
    seed: int = 0,
    faces: bool = True,
) -> Path:
    """Write a finished media.h5 with ``train``/``dev`` splits (rows per ``n_per_class[split]`` per label).

    One unlabelled train row (label "") and one train row without audio/video are added: both must
    be ignored by training.
    """
    n_per_class = n_per_class or {"train": 24, "dev": 12}
    rng = np.random.default_rng(seed)
    w = ShardedWriter(path, {"kind": "media"})
    for split, n in n_per_class.items():
        rows: dict[str, Any] = {
            k: []
            for k in (
                "utt_id",
                "label",
                "waveform",
                "has_audio",
                "scenes",
                "has_visual",
                "faces",
                "face_frame",
                "face_weight",
                "has_face",
            )
        }
        plan = [(c, i) for c in range(len(LABELS)) for i in range(n)] + [(-1, 0), (-2, 0)]
        for c, i in plan:
            present = c != -2
            cls = c if c >= 0 else 0
            k = int(rng.integers(1, 3)) if (faces and present) else 0
            rows["utt_id"].append(f"{split}_{c}_{i}")
            rows["label"].append(LABELS[c] if c >= 0 else ("" if c == -1 else LABELS[0]))
            rows["waveform"].append(
                synthetic_waveform(cls, rng, seconds) if present else np.zeros(0, np.float32)
            )
            rows["has_audio"].append(present)
            rows["scenes"].append(
                np.stack([synthetic_image(cls, rng, image_size) for _ in range(n_frames)])
                if present
                else np.zeros((0, 3, image_size, image_size), np.uint8)
            )
            rows["has_visual"].append(present)
            rows["faces"].append(
                np.stack([synthetic_image(cls, rng, image_size) for _ in range(k)])
                if k
                else np.zeros((0, 3, image_size, image_size), np.uint8)
            )
            rows["face_frame"].append(np.arange(k, dtype=np.int16))
            rows["face_weight"].append(np.full(k, 1.0, np.float32))
            rows["has_face"].append(k > 0)
        rows["has_audio"] = np.array(rows["has_audio"])
        rows["has_visual"] = np.array(rows["has_visual"])
        rows["has_face"] = np.array(rows["has_face"])
        rows["utt_id"] = np.array(rows["utt_id"], dtype=object)
        rows["label"] = np.array(rows["label"], dtype=object)
        w.append(split, rows)
    return w.finalize()


def write_random_media(
    path: str | Path,
    labels: Sequence[str],
    per_class: int,
    audio_seconds: float,
    size: int = 112,
    n_frames: int = 15,
    seed: int = 0,
) -> Path:
    """A media.h5 ``train`` split of random clips, crops and frames (2 faces per utterance).

    Parameters
    ----------
    path : path-like
        The media.h5 to create.
    labels : sequence of str
        Labels, cycled over the ``per_class * len(labels)`` utterances.
    per_class : int
        Utterances per label.
    audio_seconds : float
        Each waveform holds 1.2 times this many seconds at 16 kHz.
    size : int
        Side of the face crops and scene frames in pixels.
    n_frames : int
        Scene frames per utterance.
    seed : int
        Seed of the random generator.
    """
    rng = np.random.default_rng(seed)
    n = per_class * len(labels)

    def img(k: int) -> np.ndarray:
        return rng.integers(0, 256, size=(k, 3, size, size), dtype=np.uint8)

    clip = int(audio_seconds * 16000 * 1.2)
    rows = {
        "utt_id": np.array([f"u{i}" for i in range(n)], dtype=object),
        "label": np.array([labels[i % len(labels)] for i in range(n)], dtype=object),
        "waveform": [rng.normal(0, 0.1, clip).astype(np.float32) for _ in range(n)],
        "has_audio": np.ones(n, bool),
        "has_visual": np.ones(n, bool),
        "has_face": np.ones(n, bool),
        "scenes": [img(n_frames) for _ in range(n)],
        "faces": [img(2) for _ in range(n)],
        "face_frame": [np.array([0, 1], np.int16) for _ in range(n)],
        "face_weight": [np.array([1.0, 1.0], np.float32) for _ in range(n)],
    }
    w = ShardedWriter(path, {"kind": "media"})
    w.append("train", rows)
    return w.finalize()
