"""The generated media.h5 of pipeline.testing.media_h5: the layout training reads, a label in the signal."""

from __future__ import annotations

import numpy as np

from pipeline.testing.media_h5 import LABELS, PITCH_HZ, synthetic_image, synthetic_waveform, write_media


def test_generated_media_has_the_layout_training_reads(tmp_path):
    from pipeline.store.h5rows import RowReader

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
        flat = np.all(img[:, :, 1:] == img[:, :, :-1], axis=0).sum(axis=1)  # runs of one colour per row
        square_rows = np.flatnonzero(flat >= 30 // 4 - 1)
        assert len(square_rows) == 30 // 4
        assert np.all((square_rows >= 10 * c) & (square_rows < 10 * (c + 1)))  # the label's band
