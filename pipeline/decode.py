"""Clip -> frames and 16 kHz mono audio: the one module that knows containers and codecs.

Everything goes through PyAV (FFmpeg inside the wheel), for audio and for frames:

* :func:`probe` reads stream metadata (durations, rates, channel layout) without decoding;
* :func:`decode_audio` decodes only the needed window (seeks to it), converts each frame to planar
  float with FFmpeg's own converter, downmixes by the channel *names* of the layout (centre channel of
  5.1, mean of stereo; :func:`pipeline.modalities.audio.downmix`), trims the AAC end padding to the
  stream's duration, cuts spans longer than ``max_seconds`` to their centre and resamples to 16 kHz.
  A stream that states no duration (Matroska/WebM, live recordings) gets its end from its packets
  (demuxed near the end, not decoded), so a long file is never decoded in full to be cut. A window
  holding a NaN, infinite or absurd (beyond :data:`MAX_AUDIO_PEAK`) sample is refused
  (:class:`MediaError`), never passed on;
* :func:`decode_frames` picks ``n`` frames spread uniformly over a span (centres of ``n`` equal bins),
  decoding forward and **seeking** whenever the next target lies more than ``seek_gap`` seconds
  ahead. Decoding forward, the frame nearest each bin centre is taken. After a seek (long spans only)
  the first frame within ``seek_tolerance`` of a bin width from the centre is taken, so a seek costs
  at most the part of one keyframe interval outside that window: the cost depends on the number of
  frames wanted and the keyframe interval, not on the clip's length. Only the chosen frames are
  converted to RGB and kept (memory is flat in the clip's length).

Time: the span ``[start, end]`` is in the file's own time, counted from its first timestamp (what
a player shows as 0:00), not in raw timestamps: an MKV cut from a recording whose timestamps start
at 10 s, or an MPEG-TS (which starts at 1.4 s), is read from its start. A seek that lands after its
target (MPEG-TS with sparse keyframes) is retried further back.

Frames (bounded memory): each chosen frame is turned upright by the display rotation the container
or the codec stores (phones record portrait video sideways with a -90 degree display matrix) and
scaled down, aspect kept, to at most ``max_pixels`` (default :data:`MAX_FRAME_PIXELS`, 1280x720)
pixels; every frame of a call gets the size of the first one, a frame of another shape (a stream
whose resolution changes mid-way) is scaled to fit inside it and centred on black. So ``n`` frames
take at most ``n * 3 * max_pixels`` bytes whatever the input, and a stream whose frames exceed
``max_source_pixels`` (default :data:`MAX_SOURCE_PIXELS`, beyond 8K) is refused before decoding,
since the decoder itself would hold several frames of that size.

Frames: PyAV was chosen over OpenCV because it gives exact timestamps, stream metadata and the
audio from the same container; measured timings are in the module README section of the report
(``bench`` numbers: see the media issue).

Errors: every failure caused by the file (missing, empty, unreadable, no such stream, span outside
the media, non-finite samples, oversized frames) raises :class:`MediaError` whose message names the
file and says what is wrong; :class:`TruncatedMedia` (a :class:`MediaError`) carries what was
decoded before the data broke off.
"""

from __future__ import annotations

import functools
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
#: Decoded frames are scaled down (aspect kept) to at most this many pixels: 1280x720 (2.8 MB as RGB).
MAX_FRAME_PIXELS = 1280 * 720
#: Decoded samples beyond this (full scale is 1.0; float formats may exceed it a little) are corrupt:
#: larger ones would overflow the float32 log-mel power to inf.
MAX_AUDIO_PEAK = 1000.0
#: Demuxer flag of formats that allow timestamp discontinuities (MPEG-PS/TS): durations are estimates.
_TS_DISCONT = 0x200  # AVFMT_TS_DISCONT (av.format.Flags.ts_discont)
#: Streams with larger frames are refused: 8K (7680x4320, 8192x4096) passes, 16k x 16k does not.
MAX_SOURCE_PIXELS = 40_000_000


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
    start : float
        The file's first timestamp in seconds (0 for most files; 1.4 for MPEG-TS; more for a cut
        recording): manifest times count from it.
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
    start: float = 0.0


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


def _origin(c) -> float:
    """The file's time zero in its own timestamps (s): its first timestamp, where a player shows 0:00.

    Negative starts (encoder priming) count as 0, as :func:`_stream_span` does.
    """
    if c.start_time is not None:
        return max(0.0, c.start_time / av.time_base)
    starts = [float(s.start_time * s.time_base) for s in c.streams
              if s.start_time is not None and s.time_base is not None]
    return max(0.0, min(starts)) if starts else 0.0


def _bounds(path: str, c, stream) -> tuple[float, float]:
    """``(first, end)`` presentation times of ``stream`` in seconds, stated or found from its packets.

    The stated span is used unless the stream states none (Matroska/WebM, whose container duration
    may also count from 0 rather than from the first timestamp), the format allows timestamp
    discontinuities (MPEG-PS/TS: FFmpeg *estimates* their durations, measured 40 % short on a small
    MPEG-PS file), or the stated end lies well before the container's. Then the end is read from
    the packets (:func:`_packet_end`).
    """
    span = _stream_span(stream)
    container_end = None
    if c.duration is not None:
        container_end = max(0.0, (c.start_time or 0) / av.time_base) + c.duration / av.time_base
    estimated = bool(int(c.format.flags) & _TS_DISCONT)
    if span is not None and not estimated and (
            container_end is None or span[1] >= container_end - 0.25 - 0.05 * (container_end - span[0])):
        return span
    if span is not None:
        first = span[0]
    elif stream.start_time is not None and stream.time_base is not None:
        first = max(0.0, float(stream.start_time * stream.time_base))
    else:
        first = _origin(c)
    end = _cached_packet_end(path, _file_identity(path), stream.index, container_end)
    if end is None:
        return first, span[1] if span is not None else first
    return first, max(first, end)


def _file_identity(path: str) -> tuple[int, int]:
    """(size, mtime in ns): a changed file is scanned again."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _cached_packet_end(path: str, identity: tuple[int, int], index: int, hint: float | None) -> float | None:
    """:func:`_packet_end`, once per file version: utterances of one long recording share the scan."""
    return _packet_end(path, index, hint)


def _packet_end(path: str, index: int, hint: float | None) -> float | None:
    """End time (s) of stream ``index``: the latest packet's time plus its duration (no decoding).

    Demuxes from a seek to ``hint`` (a time at or past the end: the seek lands on the last keyframe
    before it) to the end of the file, or the whole file when there is no hint or the seek found
    nothing. Uses its own handle, so the caller's position is untouched.
    """
    with _open(path) as c:
        stream = c.streams[index]
        tb = stream.time_base
        for seek_to in ([hint, None] if hint is not None else [None]):
            if seek_to is not None:
                try:
                    c.seek(int(seek_to / tb), stream=stream, backward=True)
                except av.FFmpegError:
                    continue
            elif hint is not None:
                c.seek(0)
            end = None
            for packet in c.demux(stream):
                if packet.pts is not None:
                    t = float((packet.pts + (packet.duration or 0)) * tb)
                    end = t if end is None else max(end, t)
            if end is not None:
                return end
    return None


def _decode_from(c, stream, t: float, first: float, counts: dict) -> Iterator:
    """Decoded frames of ``stream`` from a keyframe at or before ``t`` on.

    Seeks to ``t``; when the demuxer lands after it (MPEG-TS seeks by bytes, and with sparse
    keyframes the next keyframe can be seconds later), seeks again 1, 2, 4 ... s earlier, and from
    the file's start once that reaches ``first``. ``counts`` gets ``seeks`` and ``decoded`` (frames
    decoded and dropped by a retry) added.
    """
    back = 0.0
    while True:
        target = t - back
        if target > first:
            try:
                c.seek(int(target / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:  # not seekable: decode on from where we are
                target = first
        else:
            c.seek(0)
        counts["seeks"] = counts.get("seeks", 0) + 1
        frames = iter(c.decode(stream))
        head = next(frames, None)
        if target <= first or (head is not None and (head.time is None or head.time <= t)):
            break
        counts["decoded"] = counts.get("decoded", 0) + (head is not None)
        back = max(1.0, 2 * back)
    if head is not None:
        yield head
        yield from frames


def probe(path: str | Path) -> ClipInfo:
    """Read the stream metadata of ``path``; raises :class:`MediaError` if it cannot be opened."""
    with _open(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        dur = c.duration / av.time_base if c.duration is not None else None
        info = {"path": str(path), "duration": dur, "has_video": v is not None, "has_audio": a is not None,
                "start": _origin(c)}
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


def _resolve_span(path: str, kind: str, origin: float, first: float, stream_end: float,
                  start: float | None, end: float | None) -> tuple[float, float]:
    """The span ``[start, end]`` (file time, None = the stream's ends) in the stream's timestamps."""
    t0 = first if start is None else origin + start
    if t0 > stream_end or (t0 == stream_end and end != start):
        raise MediaError(f"span start {t0 - origin:.3f} s is past the end of the {kind} "
                         f"({stream_end - origin:.3f} s) in {path} (fix the manifest times)")
    t1 = stream_end if end is None else min(origin + end, stream_end)
    return t0, t1


# --------------------------------------------------------------------------------------------- audio
def decode_audio(path: str | Path, start: float | None = None, end: float | None = None,
                 sr: int = 16000, max_seconds: float = 10.0,
                 stats: dict | None = None) -> tuple[np.ndarray, bool]:
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
    _check_span(path, start, end)
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        stream = c.streams.audio[0]
        stream.thread_count = 1
        first, stream_end = _bounds(path, c, stream)
        t0, t1 = _resolve_span(path, "audio", _origin(c), first, stream_end, start, end)
        if t1 <= t0:
            return np.zeros(0, np.float32), False
        t0, t1, cut = centre_window(t0, t1, max_seconds)
        counts: dict = {}
        try:
            mono, rate, first_time, error = _decode_mono(c, stream, t0, t1, first, counts)
        finally:
            if stats is not None:
                stats.update(decoded_seconds=counts.get("seconds", 0.0), seeks=counts.get("seeks", 0))
        wave = _slice_window(mono, rate, first_time, t0, t1)
        with np.errstate(invalid="ignore"):
            bad = int(np.count_nonzero(~(np.abs(wave) <= MAX_AUDIO_PEAK)))  # NaN compares False
        if bad:
            raise MediaError(f"{bad} non-finite or out-of-range audio sample(s) (NaN, inf or beyond "
                             f"+-{MAX_AUDIO_PEAK:g}) in {path} (a corrupt float recording? re-export it)")
        out = resample(wave, rate, sr) if rate else wave
        if error is not None:
            msg = f"audio of {path} broke off after {len(out) / sr:.2f} s: {error}"
            raise TruncatedMedia(msg, (out, cut))
        return out, cut


def _decode_mono(c, stream, t0: float, t1: float, first: float,
                 counts: dict) -> tuple[np.ndarray, int, float, Exception | None]:
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
        frames = _decode_from(c, stream, t0, first, counts) if t0 > first else c.decode(stream)
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
                  stats: dict | None = None, max_pixels: int = MAX_FRAME_PIXELS,
                  max_source_pixels: int = MAX_SOURCE_PIXELS) -> np.ndarray:
    """Decode ``n`` upright RGB frames spread uniformly over the span (the whole video by default).

    Parameters
    ----------
    path : path-like
        A file with a video stream.
    n : int
        Frames wanted. Fewer come back when the span holds fewer distinct frames (each decoded frame
        is returned at most once) and exactly one for a zero-length span (the frame at ``start``).
    start, end : float, optional
        Span in seconds from the file's first timestamp (IEMOCAP / custom); ``None`` = the whole
        stream (MELD).
    seek_gap : float
        Seek rather than decode forward when the next target is more than this many seconds ahead.
    seek_tolerance : float
        After a seek, take the first frame at most this fraction of the bin width from the bin
        centre instead of decoding on to the nearest one (0 = always the nearest frame).
    stats : dict, optional
        Filled with ``decoded`` (frames decoded) and ``seeks`` (seeks made): the work done, for
        benchmarks and tests.
    max_pixels : int
        Frames are scaled down (aspect kept) to at most this many pixels (width x height).
    max_source_pixels : int
        A stream whose frames have more pixels than this is refused (:class:`MediaError`).

    Returns
    -------
    ndarray, shape (f, H, W, 3), uint8
        RGB frames in time order, ``1 <= f <= n``, turned by the stream's display rotation, with
        ``H * W <= max_pixels``; the size is the first frame's (see the module notes).

    Raises
    ------
    MediaError
        Missing/empty/unreadable file, no video stream, frames over ``max_source_pixels``, no
        decodable frame, or a span that starts after the video ends.
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
        fitter = _FrameFitter(path, max_pixels, max_source_pixels)
        fitter.check(stream.codec_context.width or 0, stream.codec_context.height or 0)
        first, stream_end = _bounds(path, c, stream)
        t0, t1 = _resolve_span(path, "video", _origin(c), first, stream_end, start, end)
        targets = frame_targets(min(t0, t1), t1, n)
        tolerance = seek_tolerance * (t1 - t0) / n if t1 > t0 else 0.0
        frames, error = _pick_frames(c, stream, first, targets, seek_gap, fitter, tolerance, stats)
    if not frames:
        raise MediaError(f"no decodable video frame in {path}" + (f": {error}" if error else ""))
    out = np.stack(frames)
    if error is not None:
        msg = f"video of {path} broke off ({len(frames)} of {len(targets)} frames): {error}"
        raise TruncatedMedia(msg, out)
    return out


class _FrameFitter:
    """Decoded frames -> upright RGB arrays, all of the first one's size, within a pixel budget."""

    def __init__(self, path: str, max_pixels: int, max_source_pixels: int):
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.path, self.max_pixels, self.max_source_pixels = path, max_pixels, max_source_pixels
        self.size: tuple[int, int] | None = None  # (width, height) of every output frame

    def check(self, width: int, height: int) -> None:
        """Refuse a frame size the decoder should not even hold."""
        if width * height > self.max_source_pixels:
            raise MediaError(f"video frames of {self.path} are {width}x{height}: over the limit of "
                             f"{self.max_source_pixels} pixels (re-encode it smaller, e.g. "
                             f"ffmpeg -i IN -vf scale=1920:-2 OUT)")

    def __call__(self, frame) -> np.ndarray:
        self.check(frame.width, frame.height)
        quarter = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counter-clockwise quarter turns
        w, h = (frame.width, frame.height) if quarter % 2 == 0 else (frame.height, frame.width)
        if self.size is None:
            self.size = _fit_pixels(w, h, self.max_pixels)
        out_w, out_h = self.size
        scale = min(out_w / w, out_h / h)
        sw, sh = min(out_w, max(1, round(w * scale))), min(out_h, max(1, round(h * scale)))
        if (sw, sh) == (w, h):
            rgb = frame.to_ndarray(format="rgb24")
        else:
            coded = (sw, sh) if quarter % 2 == 0 else (sh, sw)
            rgb = frame.to_ndarray(width=coded[0], height=coded[1], format="rgb24",
                                   interpolation="AREA" if scale < 1 else "BILINEAR")
        if quarter:
            rgb = np.rot90(rgb, k=quarter)
        if (sw, sh) != (out_w, out_h):  # another shape than the first frame: centred on black
            canvas = np.zeros((out_h, out_w, 3), np.uint8)
            y, x = (out_h - sh) // 2, (out_w - sw) // 2
            canvas[y:y + sh, x:x + sw] = rgb
            rgb = canvas
        return np.ascontiguousarray(rgb)


def _fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, to at most ``max_pixels`` pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while w * h > max_pixels:  # only when one side was raised to 1
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h


class _FrameCursor:
    """Forward iterator over decoded frames with their times, able to seek; holds two frames at most."""

    def __init__(self, c, stream, first: float):
        self.c, self.stream, self.first = c, stream, first
        self.step = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / 25.0
        self.prev = self.cur = None
        self.prev_t = self.cur_t = -math.inf
        self._it: Iterator | None = None
        self.counts = {"decoded": 0, "seeks": 0}

    def seek(self, t: float) -> None:
        self._it = _decode_from(self.c, self.stream, t, self.first, self.counts)
        self.prev = self.cur = None
        self.prev_t = self.cur_t = -math.inf

    def advance(self) -> bool:
        """Move to the next frame; False at the end of the stream."""
        if self._it is None:
            self._it = iter(self.c.decode(self.stream))
        frame = next(self._it, None)
        if frame is None:
            return False
        self.counts["decoded"] += 1
        t = frame.time if frame.time is not None else self.cur_t + self.step
        self.prev, self.prev_t, self.cur, self.cur_t = self.cur, self.cur_t, frame, t
        return True


def _pick_frames(c, stream, first: float, targets: np.ndarray, seek_gap: float, fitter: _FrameFitter,
                 tolerance: float = 0.0,
                 stats: dict | None = None) -> tuple[list[np.ndarray], Exception | None]:
    """The decoded frame nearest to each target time, each frame at most once."""
    cursor = _FrameCursor(c, stream, first)
    try:
        return _pick_with(cursor, targets, seek_gap, fitter, tolerance)
    finally:
        if stats is not None:
            stats.update(cursor.counts)


def _pick_with(cursor: _FrameCursor, targets: np.ndarray, seek_gap: float, fitter: _FrameFitter,
               tolerance: float) -> tuple[list[np.ndarray], Exception | None]:
    picked: list[np.ndarray] = []
    last_t = None
    ended = False
    keyframe_gap = 0.0
    try:
        for t in targets:
            # a seek lands on the keyframe before t: worth it only if that is ahead of where we are,
            # so the gap must also exceed the largest keyframe distance seen so far
            gap = max(seek_gap, keyframe_gap)
            ahead = cursor.cur is not None or t - cursor.first > gap  # nothing decoded: from the start
            sought = not ended and t - cursor.cur_t > gap and ahead
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
            picked.append(fitter(best))
            last_t = best_t
    except (av.FFmpegError, MediaError) as e:  # a broken packet, or a frame over the size limit
        return picked, e
    return picked, None


def _nearest(cursor: _FrameCursor, t: float):
    pairs = ((cursor.prev, cursor.prev_t), (cursor.cur, cursor.cur_t))
    candidates = [(f, ft) for f, ft in pairs if f is not None]
    if not candidates:
        return None, None
    return min(candidates, key=lambda p: abs(p[1] - t))
