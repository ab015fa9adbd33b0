"""Audio preparation: multichannel samples -> the 16 kHz mono window the audio encoder reads.

Pure computations (no file access); :mod:`pipeline.decode` does the I/O and calls these. The rules
are the decisions of docs/DESIGN.md sections 2.2 and 4.2 (audio):

* **downmix**: mono stays; a layout with a front-centre channel (``FC``, e.g. FFmpeg's ``5.1``
  ``FL FR FC LFE BL BR``, index 2) keeps only that channel, where film dialogue lives; any other
  layout (stereo, quad, unknown) is the mean of its channels (what ``ffmpeg -ac 1`` does for stereo);
* **resample** with libsoxr at high quality (:data:`RESAMPLER`; no hand-rolled DSP). It was chosen over
  torchaudio's default sinc resampler, which leaks a 9 kHz tone into 48 -> 16 kHz output at -17 dB
  (soxr: below -140 dB), and over ``librosa.resample``, which calls the same soxr code but costs seconds
  of import (numba) in every worker;
* **window**: at most ``max_seconds``; a longer span keeps its centre ``max_seconds`` and is flagged
  as cut (:func:`centre_window` for times, :func:`centre_cut` for samples);
* **silence**: :func:`is_silent` says whether a waveform carries no signal (peak below a threshold).

The log-mel itself is computed by the encoder (``pipeline.encoders.inputs.LogMel``) so that training
and extraction share one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import soxr

#: Peak amplitude (full scale = 1.0) below which a waveform counts as silent: -60 dBFS.
SILENCE_PEAK = 1e-3
#: libsoxr quality of :func:`resample` ("HQ": 20-bit precision, steep low-pass just below the new Nyquist).
SOXR_QUALITY = "HQ"
#: Names the resampler in the media cache config, so a media cache made by another one is not reused.
RESAMPLER = f"soxr-{SOXR_QUALITY}"


def downmix(samples: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    """Planar samples ``(C, n)`` -> mono ``(n,)`` float32 by the project's downmix rule.

    Parameters
    ----------
    samples : ndarray, shape (C, n)
        Planar float samples, one row per channel.
    channel_names : sequence of str
        FFmpeg channel names in row order (``["FL", "FR", "FC", ...]``), e.g. from
        ``[c.name for c in frame.layout.channels]``.

    Returns
    -------
    ndarray, shape (n,), float32
        The centre channel when the layout has one (and more than two channels), else the mean.

    Examples
    --------
    >>> downmix(np.array([[1., 1.], [3., 3.]]), ["FL", "FR"])
    array([2., 2.], dtype=float32)
    """
    samples = np.asarray(samples)
    if samples.ndim != 2:
        raise ValueError(f"samples must be (channels, n), got shape {samples.shape}")
    if len(channel_names) != samples.shape[0]:
        raise ValueError(f"{samples.shape[0]} channels but {len(channel_names)} channel names")
    names = list(channel_names)
    if samples.shape[0] > 2 and "FC" in names:
        return samples[names.index("FC")].astype(np.float32, copy=True)
    return samples.mean(axis=0, dtype=np.float64).astype(np.float32)


def resample(wave: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """Resample mono float32 ``wave`` from ``orig_sr`` to ``sr`` Hz (libsoxr, :data:`RESAMPLER`).

    The output has ``round(len(wave) * sr / orig_sr)`` samples, aligned with the input (no delay).
    """
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if orig_sr == sr or wave.size == 0:
        return wave
    out = soxr.resample(wave, int(orig_sr), int(sr), quality=SOXR_QUALITY)
    return np.ascontiguousarray(out, dtype=np.float32)


def centre_window(t0: float, t1: float, max_seconds: float) -> tuple[float, float, bool]:
    """The centre ``max_seconds`` of the span ``[t0, t1]``; third value True when it was shortened."""
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if t1 - t0 <= max_seconds:
        return t0, t1, False
    mid = (t0 + t1) / 2.0
    return mid - max_seconds / 2.0, mid + max_seconds / 2.0, True


def centre_cut(wave: np.ndarray, sr: int, max_seconds: float) -> tuple[np.ndarray, bool]:
    """Keep the centre ``max_seconds`` of ``wave``; second value True when samples were dropped."""
    limit = int(round(max_seconds * sr))
    if len(wave) <= limit:
        return wave, False
    start = (len(wave) - limit) // 2
    return wave[start : start + limit], True


def is_silent(wave: np.ndarray, peak: float = SILENCE_PEAK) -> bool:
    """True when ``wave`` is empty or its peak absolute amplitude is below ``peak``."""
    return wave.size == 0 or float(np.max(np.abs(wave))) < peak
