"""A generated media.h5 whose emotion label is visible in the signal, for the encoder tests.

Audio: a tone whose pitch depends on the label (400 / 800 / 1600 Hz, +-4 %), at a random level, under
white noise (SNR 0-10 dB) and beside a distractor tone of random pitch. Faces and scenes: a noisy
random-colour background with a bright square of random colour whose *vertical* position (top, middle,
bottom band) depends on the label and whose horizontal position is random. Global-average-pooled
random features see little of that; a trained extractor can learn it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cache import ShardedWriter

LABELS = ("anger", "joy", "sadness")
PITCH_HZ = (400.0, 800.0, 1600.0)


def synthetic_waveform(c: int, rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f = PITCH_HZ[c] * rng.uniform(0.96, 1.04)
    tone = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    distract = sum(rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) for _ in range(3))
    snr = 10 ** (rng.uniform(-5, 5) / 10)
    noise = rng.standard_normal(len(t)) * np.sqrt(np.mean(tone ** 2) / snr)
    return (tone + distract + noise).astype(np.float32)


def synthetic_image(c: int, rng: np.random.Generator, size: int) -> np.ndarray:
    img = rng.uniform(0, 255, size=3)[:, None, None] + rng.normal(0, 40, size=(3, size, size))
    side = size // 4
    band = size // 3
    y = c * band + int(rng.integers(0, max(band - side, 1)))
    x = int(rng.integers(0, size - side))
    img[:, y:y + side, x:x + side] = rng.uniform(150, 255, size=3)[:, None, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_media(path: str | Path, n_per_class: dict[str, int] | None = None, seconds: float = 0.6,
                image_size: int = 32, n_frames: int = 3, seed: int = 0, faces: bool = True) -> Path:
    """Write a finished media.h5 with ``train``/``dev`` splits (rows per ``n_per_class[split]`` per label).

    One unlabelled train row (label "") and one train row without audio/video are added: both must
    be ignored by training.
    """
    n_per_class = n_per_class or {"train": 24, "dev": 12}
    rng = np.random.default_rng(seed)
    w = ShardedWriter(path, {"kind": "media"})
    for split, n in n_per_class.items():
        rows = {k: [] for k in ("utt_id", "label", "waveform", "has_audio", "scenes", "has_video", "faces",
                                "face_frame", "face_weight", "has_face")}
        plan = [(c, i) for c in range(len(LABELS)) for i in range(n)] + [(-1, 0), (-2, 0)]
        for c, i in plan:
            present = c != -2
            cls = c if c >= 0 else 0
            k = int(rng.integers(1, 3)) if (faces and present) else 0
            rows["utt_id"].append(f"{split}_{c}_{i}")
            rows["label"].append(LABELS[c] if c >= 0 else ("" if c == -1 else LABELS[0]))
            rows["waveform"].append(synthetic_waveform(cls, rng, seconds) if present
                                    else np.zeros(0, np.float32))
            rows["has_audio"].append(present)
            rows["scenes"].append(np.stack([synthetic_image(cls, rng, image_size) for _ in range(n_frames)])
                                  if present else np.zeros((0, 3, image_size, image_size), np.uint8))
            rows["has_video"].append(present)
            rows["faces"].append(np.stack([synthetic_image(cls, rng, image_size) for _ in range(k)]) if k
                                 else np.zeros((0, 3, image_size, image_size), np.uint8))
            rows["face_frame"].append(np.arange(k, dtype=np.int16))
            rows["face_weight"].append(np.full(k, 1.0, np.float32))
            rows["has_face"].append(k > 0)
        rows["has_audio"] = np.array(rows["has_audio"])
        rows["has_video"] = np.array(rows["has_video"])
        rows["has_face"] = np.array(rows["has_face"])
        rows["utt_id"] = np.array(rows["utt_id"], dtype=object)
        rows["label"] = np.array(rows["label"], dtype=object)
        w.append(split, rows)
    return w.finalize()


def test_generated_media_has_the_layout_training_reads(tmp_path):
    from pipeline.cache import RowReader

    path = write_media(tmp_path / "media.h5", {"train": 2, "dev": 1}, seconds=0.25, image_size=16)
    with RowReader(path, "train") as r:
        assert len(r) == 3 * 2 + 2
        row = r.row(0)
        assert row["waveform"].dtype == np.float32 and row["waveform"].shape == (4000,)
        assert row["scenes"].shape == (3, 3, 16, 16) and row["scenes"].dtype == np.uint8
        assert row["faces"].shape[1:] == (3, 16, 16) and len(row["face_weight"]) == len(row["faces"])
        assert set(r.column("label")) == {"", *LABELS}
        assert r.column("has_audio").sum() == len(r) - 1


def test_signal_carries_the_label():
    rng = np.random.default_rng(0)
    wave = synthetic_waveform(2, rng, 1.0)
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1 / 16000)
    near = np.abs(freqs - PITCH_HZ[2]) < 0.05 * PITCH_HZ[2]
    assert spectrum[near].max() > np.median(spectrum) * 20
    for c in range(3):
        img = synthetic_image(c, rng, 30)
        flat = np.all(img[:, :, 1:] == img[:, :, :-1], axis=0).sum(axis=1)   # runs of one colour per row
        square_rows = np.flatnonzero(flat >= 30 // 4 - 1)
        assert len(square_rows) == 30 // 4
        assert np.all((square_rows >= 10 * c) & (square_rows < 10 * (c + 1)))   # the label's band
