"""Clip -> frames and 16 kHz mono audio: the one module that knows containers and codecs.

Everything goes through PyAV (FFmpeg inside the wheel), for audio and for frames:

* :func:`probe` reads stream metadata (durations, rates, channel layout) without decoding;
* :func:`decode_audio` decodes only the needed window (seeks to it), converts each frame to planar
  float with FFmpeg's own converter, downmixes by the channel *names* of the layout (centre channel of
  5.1, mean of stereo; :func:`pipeline.modalities.audio.downmix`), trims the AAC end padding to the
  stream's duration, cuts spans longer than ``max_seconds`` to their centre and resamples to 16 kHz;
* :func:`decode_frames` picks ``n`` frames spread uniformly over a span (centres of ``n`` equal bins),
  decoding forward and **seeking** whenever the next target lies more than ``seek_gap`` seconds
  ahead. Decoding forward, the frame nearest each bin centre is taken. After a seek (long spans only)
  the first frame within ``seek_tolerance`` of a bin width from the centre is taken, so a seek costs
  at most the part of one keyframe interval outside that window: the cost depends on the number of
  frames wanted and the keyframe interval, not on the clip's length. Only the chosen frames are
  converted to RGB and kept (memory is flat in the clip's length).

Frames: PyAV was chosen over OpenCV because it gives exact timestamps, stream metadata and the
audio from the same container; measured timings are in the module README section of the report
(``bench`` numbers: see the media issue).

Errors: every failure caused by the file (missing, empty, unreadable, no such stream, span outside
the media) raises :class:`MediaError` whose message names the file and says what is wrong;
:class:`TruncatedMedia` (a :class:`MediaError`) carries what was decoded before the data broke off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.modalities.audio import centre_window, downmix, resample

#: Seek instead of decoding forward when the next wanted frame is more than this many seconds ahead.
SEEK_GAP = 3.0
#: After a seek, accept the first frame this fraction of a bin width (or less) from the bin centre.
SEEK_TOLERANCE = 0.25


class MediaError(Exception):
    """A media file cannot give what was asked; the message names the file and what to do."""


class TruncatedMedia(MediaError):
    """The data broke off mid-stream; ``partial`` holds what was decoded before the break."""

    def __init__(self, message: str, partial):
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True)
class ClipInfo:
    """Stream metadata of a media file (no decoding).

    Attributes
    ----------
    path : str
    duration : float or None
        Container duration in seconds (None when the file does not say).
    has_video, has_audio : bool
    video_duration, audio_duration : float or None
        Per-stream durations in seconds.
    fps : float or None
        Average video frame rate.
    width, height : int
        Video frame size (0 without video).
    n_video_frames : int
        Frame count from the container (0 when unknown).
    audio_rate, audio_channels : int
        Audio sample rate and channel count (0 without audio).
    audio_layout : str
        FFmpeg layout name, e.g. ``"5.1"``, ``"stereo"`` ("" without audio).
    """

    path: str
    duration: float | None
    has_video: bool
    has_audio: bool
    video_duration: float | None = None
    audio_duration: float | None = None
    fps: float | None = None
    width: int = 0
    height: int = 0
    n_video_frames: int = 0
    audio_rate: int = 0
    audio_channels: int = 0
    audio_layout: str = ""


def _open(path: str | Path) -> av.container.InputContainer:
    """Open ``path`` for reading or raise :class:`MediaError` saying why."""
    path = str(path)
    if not os.path.exists(path):
        raise MediaError(f"missing file: {path} (check the corpus root / manifest path)")
    if os.path.getsize(path) == 0:
        raise MediaError(f"zero-byte file: {path} (corrupt download? re-extract the archive)")
    try:
        return av.open(path, "r")
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"cannot open {path}: {e} (corrupt or truncated file? re-extract it)") from e


def _stream_span(stream) -> tuple[float, float] | None:
    """``(first, end)`` presentation times of a stream in seconds, or None when it states no duration.

    ``first`` is the stream's start time clamped at 0 (encoder priming with negative times is not
    presented); ``end`` = start + duration, so the AAC padding of the last frame lies beyond it.
    """
    if stream.duration is None or stream.time_base is None:
        return None
    start = float((stream.start_time or 0) * stream.time_base)
    return max(start, 0.0), start + float(stream.duration * stream.time_base)


def _stream_seconds(stream) -> float | None:
    span = _stream_span(stream)
    return None if span is None else span[1] - span[0]


def probe(path: str | Path) -> ClipInfo:
    """Read the stream metadata of ``path``; raises :class:`MediaError` if it cannot be opened."""
    with _open(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        dur = c.duration / av.time_base if c.duration is not None else None
        info = {"path": str(path), "duration": dur, "has_video": v is not None, "has_audio": a is not None}
        if v is not None:
            info.update(video_duration=_stream_seconds(v),
                        fps=float(v.average_rate) if v.average_rate else None,
                        width=v.codec_context.width, height=v.codec_context.height,
                        n_video_frames=int(v.frames or 0))
        if a is not None:
            layout = a.codec_context.layout
            info.update(audio_duration=_stream_seconds(a), audio_rate=int(a.codec_context.sample_rate or 0),
                        audio_channels=len(layout.channels) if layout else 0,
                        audio_layout=layout.name if layout else "")
        return ClipInfo(**info)


def _check_span(path: str, start: float | None, end: float | None) -> None:
    for name, v in (("start", start), ("end", end)):
        if v is not None and (not math.isfinite(v) or v < 0):
            raise MediaError(f"invalid {name} time {v!r} for {path} (times are seconds >= 0)")
    if start is not None and end is not None and end < start:
        raise MediaError(f"span end {end} before start {start} for {path} (fix the manifest times)")


# --------------------------------------------------------------------------------------------- audio
def decode_audio(path: str | Path, start: float | None = None, end: float | None = None,
                 sr: int = 16000, max_seconds: float = 10.0) -> tuple[np.ndarray, bool]:
    """Decode the audio of ``path`` (or of its span ``[start, end]``) to mono float32 at ``sr`` Hz.

    Parameters
    ----------
    path : path-like
        Any FFmpeg-readable file with an audio stream (mp4/AAC, wav, avi ...).
    start, end : float, optional
        Span in seconds inside the file; ``None`` means the beginning / the end of the stream.
    sr : int
        Output sample rate.
    max_seconds : float
        Longest window kept; a longer span keeps its centre ``max_seconds``.

    Returns
    -------
    wave : ndarray, shape (n,), float32
        Mono samples (empty for a zero-length span).
    cut : bool
        True when the span was longer than ``max_seconds`` and was cut to its centre.

    Raises
    ------
    MediaError
        Missing/empty/unreadable file, no audio stream, or a span that starts after the audio ends.
    TruncatedMedia
        The stream broke off; ``partial`` is ``(wave, cut)`` of what decoded before the break.
    """
    path = str(path)
    _check_span(path, start, end)
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        stream = c.streams.audio[0]
        stream.thread_count = 1
        first, stream_end = _stream_span(stream) or (0.0, None)
        t0 = first if start is None else start
        t1 = stream_end if end is None else (end if stream_end is None else min(end, stream_end))
        if stream_end is not None and (t0 > stream_end or (t0 == stream_end and end != start)):
            raise MediaError(f"span start {t0:.3f} s is past the end of the audio ({stream_end:.3f} s) "
                             f"in {path} (fix the manifest times)")
        cut = False
        if t1 is not None:
            if t1 <= t0:
                return np.zeros(0, np.float32), False
            t0, t1, cut = centre_window(t0, t1, max_seconds)
        mono, rate, first_time, error = _decode_mono(c, stream, t0, t1)
        wave = _slice_window(mono, rate, first_time, t0, t1)
        if t1 is None:  # unknown duration: cut after decoding
            limit = int(round(max_seconds * rate))
            if len(wave) > limit:
                s = (len(wave) - limit) // 2
                wave, cut = wave[s:s + limit], True
        out = resample(wave, rate, sr) if rate else wave
        if error is not None:
            msg = f"audio of {path} broke off after {len(out) / sr:.2f} s: {error}"
            raise TruncatedMedia(msg, (out, cut))
        return out, cut


def _decode_mono(c, stream, t0: float, t1: float | None) -> tuple[np.ndarray, int, float, Exception | None]:
    """Decode frames covering ``[t0, t1]`` to native-rate mono; returns (mono, rate, first_time, error)."""
    if t0 > 0:
        c.seek(int(t0 / stream.time_base), stream=stream, backward=True)
    converter = av.AudioResampler(format="fltp")  # sample-format conversion only (same layout/rate)
    chunks: list[np.ndarray] = []
    names: list[str] = []
    rate, first_time, error = 0, None, None
    try:
        for frame in c.decode(stream):
            if first_time is None:
                first_time = frame.time if frame.time is not None else 0.0
                rate = frame.sample_rate
            if t1 is not None and frame.time is not None and frame.time >= t1:
                break
            names = [ch.name for ch in frame.layout.channels]
            chunks += [downmix(f.to_ndarray(), names) for f in converter.resample(frame)]
        if names:
            chunks += [downmix(f.to_ndarray(), names) for f in converter.resample(None)]
    except av.FFmpegError as e:
        error = e
    if first_time is None and error is not None:
        raise MediaError(f"cannot decode the audio of {c.name}: {error} (corrupt file? re-extract it)")
    mono = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return mono, rate, first_time or 0.0, error


def _slice_window(mono: np.ndarray, rate: int, first_time: float, t0: float, t1: float | None) -> np.ndarray:
    if rate == 0:
        return mono
    i0 = max(0, int(round((t0 - first_time) * rate)))
    if t1 is None:
        return mono[i0:]
    return mono[i0:i0 + int(round((t1 - t0) * rate))]


# --------------------------------------------------------------------------------------------- frames
def frame_targets(t0: float, t1: float, n: int) -> np.ndarray:
    """Times of ``n`` frames spread uniformly over ``[t0, t1]``: the centres of ``n`` equal bins.

    A zero-length span gives the single time ``t0``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if t1 <= t0:
        return np.array([t0])
    return t0 + (np.arange(n) + 0.5) * (t1 - t0) / n


def decode_frames(path: str | Path, n: int = 15, start: float | None = None, end: float | None = None,
                  seek_gap: float = SEEK_GAP, seek_tolerance: float = SEEK_TOLERANCE,
                  stats: dict | None = None) -> np.ndarray:
    """Decode ``n`` RGB frames spread uniformly over the span (the whole video by default).

    Parameters
    ----------
    path : path-like
        A file with a video stream.
    n : int
        Frames wanted. Fewer come back when the span holds fewer distinct frames (each decoded frame
        is returned at most once) and exactly one for a zero-length span (the frame at ``start``).
    start, end : float, optional
        Span in seconds inside the video (IEMOCAP / custom); ``None`` = the whole stream (MELD).
    seek_gap : float
        Seek rather than decode forward when the next target is more than this many seconds ahead.
    seek_tolerance : float
        After a seek, take the first frame at most this fraction of the bin width from the bin
        centre instead of decoding on to the nearest one (0 = always the nearest frame).
    stats : dict, optional
        Filled with ``decoded`` (frames decoded) and ``seeks`` (seeks made): the work done, for
        benchmarks and tests.

    Returns
    -------
    ndarray, shape (f, H, W, 3), uint8
        RGB frames in time order, ``1 <= f <= n``.

    Raises
    ------
    MediaError
        Missing/empty/unreadable file, no video stream, no decodable frame, or a span that starts
        after the video ends.
    TruncatedMedia
        The stream broke off; ``partial`` holds the frames (possibly fewer) decoded before the break.
    """
    path = str(path)
    _check_span(path, start, end)
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"no video stream in {path}")
        stream = c.streams.video[0]
        stream.thread_count = 1
        first, stream_end = _stream_span(stream) or _container_span(c, stream)
        t0 = first if start is None else start
        if t0 > stream_end or (t0 == stream_end and end != start):
            raise MediaError(f"span start {t0:.3f} s is past the end of the video ({stream_end:.3f} s) "
                             f"in {path} (fix the manifest times)")
        t1 = stream_end if end is None else min(end, stream_end)
        targets = frame_targets(min(t0, t1), t1, n)
        tolerance = seek_tolerance * (t1 - t0) / n if t1 > t0 else 0.0
        frames, error = _pick_frames(c, stream, targets, seek_gap, tolerance, stats)
    if not frames:
        raise MediaError(f"no decodable video frame in {path}" + (f": {error}" if error else ""))
    out = np.stack(frames)
    if error is not None:
        msg = f"video of {path} broke off ({len(frames)} of {len(targets)} frames): {error}"
        raise TruncatedMedia(msg, out)
    return out


def _container_span(c, stream) -> tuple[float, float]:
    """``(first, end)`` from the container, else from packet timestamps (demuxed, not decoded)."""
    if c.duration:
        first = max(0.0, (c.start_time or 0) / av.time_base)
        return first, first + c.duration / av.time_base
    first, last = None, 0.0
    for packet in c.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            t = float(packet.pts * packet.time_base)
            first = t if first is None else min(first, t)
            last = max(last, t + float((packet.duration or 0) * packet.time_base))
    c.seek(0)
    return max(0.0, first or 0.0), last


class _FrameCursor:
    """Forward iterator over decoded frames with their times, able to seek; holds two frames at most."""

    def __init__(self, c, stream):
        self.c, self.stream = c, stream
        self.step = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / 25.0
        self.prev = self.cur = None
        self.prev_t = self.cur_t = -math.inf
        self._it: Iterator | None = None
        self.decoded = self.seeks = 0

    def seek(self, t: float) -> None:
        self.c.seek(max(0, int(t / self.stream.time_base)), stream=self.stream, backward=True)
        self._it = None
        self.seeks += 1
        self.prev = self.cur = None
        self.prev_t = self.cur_t = -math.inf

    def advance(self) -> bool:
        """Move to the next frame; False at the end of the stream."""
        if self._it is None:
            self._it = iter(self.c.decode(self.stream))
        frame = next(self._it, None)
        if frame is None:
            return False
        self.decoded += 1
        t = frame.time if frame.time is not None else self.cur_t + self.step
        self.prev, self.prev_t, self.cur, self.cur_t = self.cur, self.cur_t, frame, t
        return True


def _pick_frames(c, stream, targets: np.ndarray, seek_gap: float, tolerance: float = 0.0,
                 stats: dict | None = None) -> tuple[list[np.ndarray], Exception | None]:
    """The decoded frame nearest to each target time, each frame at most once."""
    cursor = _FrameCursor(c, stream)
    try:
        return _pick_with(cursor, targets, seek_gap, tolerance)
    finally:
        if stats is not None:
            stats.update(decoded=cursor.decoded, seeks=cursor.seeks)


def _pick_with(cursor: _FrameCursor, targets: np.ndarray,
               seek_gap: float, tolerance: float) -> tuple[list[np.ndarray], Exception | None]:
    picked: list[np.ndarray] = []
    last_t = None
    ended = False
    keyframe_gap = 0.0
    try:
        for t in targets:
            # a seek lands on the keyframe before t: worth it only if that is ahead of where we are,
            # so the gap must also exceed the largest keyframe distance seen so far
            gap = max(seek_gap, keyframe_gap)
            sought = not ended and t - cursor.cur_t > gap and (cursor.cur is not None or t > gap)
            if sought:
                cursor.seek(t)
            stop = t - tolerance if sought else t
            while not ended and cursor.cur_t < stop:
                ended = not cursor.advance()
                if sought and cursor.prev is None and not ended:
                    keyframe_gap = max(keyframe_gap, t - cursor.cur_t)
            if sought and abs(cursor.cur_t - t) <= tolerance:
                best, best_t = cursor.cur, cursor.cur_t
            else:
                best, best_t = _nearest(cursor, t)
            if best is None or (last_t is not None and best_t <= last_t):
                continue
            picked.append(best.to_ndarray(format="rgb24"))
            last_t = best_t
    except av.FFmpegError as e:
        return picked, e
    return picked, None


def _nearest(cursor: _FrameCursor, t: float):
    pairs = ((cursor.prev, cursor.prev_t), (cursor.cur, cursor.cur_t))
    candidates = [(f, ft) for f, ft in pairs if f is not None]
    if not candidates:
        return None, None
    return min(candidates, key=lambda p: abs(p[1] - t))
