"""pipeline.utterance.audio.resample: no aliasing below the new Nyquist, flat passband, aligned output."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.utterance.audio import RESAMPLER, resample
from pipeline.utterance.process import MediaConfig


def tone(hz: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(sr * seconds)) / sr).astype(np.float32)


def amplitude_db(wave: np.ndarray, sr: int, hz: float) -> float:
    """Level (dB re full scale) of the component at ``hz``: Hann-windowed DFT of the middle half."""
    mid = wave[len(wave) // 4 : 3 * len(wave) // 4]
    w = np.hanning(len(mid))
    spec = np.abs(np.fft.rfft(mid * w)) * 2 / w.sum()
    k = int(np.argmin(np.abs(np.fft.rfftfreq(len(mid), 1 / sr) - hz)))
    return 20 * np.log10(max(spec[max(k - 3, 0) : k + 4].max(), 1e-12))


@pytest.mark.parametrize("sr_in", [48000, 44100])
def test_a_tone_above_the_new_nyquist_does_not_alias(sr_in):
    # torchaudio's default sinc resampler, used before, left 9 kHz at 48 -> 16 kHz as a 7 kHz tone at -17 dB
    y = resample(tone(9000.0, sr_in), sr_in, 16000)
    assert amplitude_db(y, 16000, 16000 - 9000.0) < -80


def test_passband_is_flat_and_output_aligned():
    for hz in (440.0, 3000.0, 7000.0):
        assert abs(amplitude_db(resample(tone(hz, 48000), 48000, 16000), 16000, hz)) < 0.1
    clicks = np.zeros(48000, np.float32)
    clicks[::997] = 1.0
    clicks = np.convolve(clicks, np.hanning(31), "same").astype(np.float32)  # band-limited clicks
    y = resample(clicks, 48000, 16000)
    assert y.dtype == np.float32 and len(y) == 16000
    i0 = 997 * 24  # a click in the middle: it must land at i0 / 3, not delayed by the filter
    around = np.arange(i0 // 3 - 40, i0 // 3 + 40)
    assert abs(int(around[np.argmax(y[around])]) - round(i0 / 3)) <= 1


def test_media_config_records_the_resampler():
    assert MediaConfig().to_dict()["resampler"] == RESAMPLER
    with pytest.raises(ValueError, match="resampler"):
        MediaConfig(resampler="sinc-torchaudio")
