"""Audio decoding: a span of a file's audio to 16 kHz mono float32 (:func:`decode_audio`)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from pipeline.decode.container import MediaError, TruncatedMedia, decode_from, open_span
from pipeline.utterance.audio import centre_window, downmix, resample

#: Decoded samples beyond this (full scale is 1.0; float formats may exceed it a little) are corrupt:
#: larger ones would overflow the float32 log-mel power to inf.
MAX_AUDIO_PEAK = 1000.0


def decode_audio(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    sr: int = 16000,
    max_seconds: float = 10.0,
    stats: dict | None = None,
) -> tuple[np.ndarray, bool]:
    """Decode the audio of ``path`` (or of its span ``[start, end]``) to mono float32 at ``sr`` Hz.

    Parameters
    ----------
    path : path-like
        Any FFmpeg-readable file with an audio stream (mp4/AAC, wav, avi, mkv ...).
    start, end : float, optional
        Span in seconds from the file's first timestamp; ``None`` means the beginning / the end of
        the stream.
    sr : int
        Output sample rate.
    max_seconds : float
        Longest window kept; a longer span keeps its centre ``max_seconds``.
    stats : dict, optional
        Filled with ``decoded_seconds`` (audio decoded) and ``seeks``: the work done, for tests.

    Returns
    -------
    wave : ndarray, shape (n,), float32
        Mono samples, all finite and within ``+-MAX_AUDIO_PEAK`` (empty for a zero-length span).
    cut : bool
        True when the span was longer than ``max_seconds`` and was cut to its centre.

    Raises
    ------
    MediaError
        Missing/empty/unreadable file, no audio stream, a span that starts after the audio ends,
        or a NaN / infinite / out-of-range sample in the window.
    TruncatedMedia
        The stream broke off; ``partial`` is ``(wave, cut)`` of what decoded before the break.
    """
    path = str(path)
    with open_span(path, "audio", start, end) as span:
        if span.t1 <= span.t0:
            return np.zeros(0, np.float32), False
        t0, t1, cut = centre_window(span.t0, span.t1, max_seconds)
        counts: dict = {}
        try:
            mono, rate, first_time, error = _decode_mono(
                span.container, span.stream, t0, t1, span.first, counts
            )
        finally:
            if stats is not None:
                stats.update(decoded_seconds=counts.get("seconds", 0.0), seeks=counts.get("seeks", 0))
        wave = _slice_window(mono, rate, first_time, t0, t1)
        with np.errstate(invalid="ignore"):
            bad = int(np.count_nonzero(~(np.abs(wave) <= MAX_AUDIO_PEAK)))  # NaN compares False
        if bad:
            raise MediaError(
                f"{bad} non-finite or out-of-range audio sample(s) (NaN, inf or beyond "
                f"+-{MAX_AUDIO_PEAK:g}) in {path} (a corrupt float recording? re-export it)"
            )
        out = resample(wave, rate, sr) if rate else wave
        if error is not None:
            msg = f"audio of {path} broke off after {len(out) / sr:.2f} s: {error}"
            raise TruncatedMedia(msg, (out, cut))
        return out, cut


def _decode_mono(
    c, stream, t0: float, t1: float, first: float, counts: dict
) -> tuple[np.ndarray, int, float, Exception | None]:
    """Decode frames covering ``[t0, t1]`` to native-rate mono; returns (mono, rate, first_time, error).

    Frames that end before ``t0`` are decoded but not kept, so memory stays within the window even
    when a seek is impossible and the file is decoded from its start.
    """
    converter = av.AudioResampler(format="fltp")  # sample-format conversion only (same layout/rate)
    chunks: list[np.ndarray] = []
    names: list[str] = []
    rate, first_time, error, seen = 0, None, None, False
    counts["seconds"] = 0.0
    try:
        frames = decode_from(c, stream, t0, first, counts) if t0 > first else c.decode(stream)
        for frame in frames:
            seen = True
            rate = rate or frame.sample_rate
            if frame.time is not None and frame.time >= t1:
                break
            seconds = frame.samples / (frame.sample_rate or 1)
            counts["seconds"] += seconds
            if frame.time is not None and frame.time + seconds <= t0:  # before the window
                continue
            if first_time is None:
                first_time = frame.time if frame.time is not None else 0.0
            names = [ch.name for ch in frame.layout.channels]
            chunks += [downmix(f.to_ndarray(), names) for f in converter.resample(frame)]
        if names:
            chunks += [downmix(f.to_ndarray(), names) for f in converter.resample(None)]
    except av.FFmpegError as e:
        error = e
    if not seen and error is not None:
        raise MediaError(f"cannot decode the audio of {c.name}: {error} (corrupt file? re-extract it)")
    mono = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return mono, rate, first_time or 0.0, error


def _slice_window(mono: np.ndarray, rate: int, first_time: float, t0: float, t1: float) -> np.ndarray:
    if rate == 0:
        return mono
    i0 = max(0, int(round((t0 - first_time) * rate)))
    return mono[i0 : i0 + int(round((t1 - t0) * rate))]
