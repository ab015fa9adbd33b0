"""Opening, probing, stream times and spans: what audio and frame decoding share.

:class:`MediaError` / :class:`TruncatedMedia` (the errors every decode raises), :class:`ClipInfo` and
:func:`probe` (metadata without decoding), :func:`open_span` (a file opened at one stream with the
span to decode resolved in its timestamps: the same steps for audio and frames) and
:func:`decode_from` (the seek-and-retry both decoders use). Inside: a stream's first and end times
(stated, or found from its packets), the file's time origin and the span checks.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

#: Demuxer flag of formats that allow timestamp discontinuities (MPEG-PS/TS): durations are estimates.
_TS_DISCONT = 0x200  # AVFMT_TS_DISCONT (av.format.Flags.ts_discont)


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
    starts = [
        float(s.start_time * s.time_base)
        for s in c.streams
        if s.start_time is not None and s.time_base is not None
    ]
    return max(0.0, min(starts)) if starts else 0.0


def _bounds(path: str, c, stream) -> tuple[float, float]:
    """``(first, end)`` presentation times of ``stream`` in seconds, stated or found from its packets.

    The stated span is used unless the stream states none (Matroska/WebM, whose container duration
    may also count from 0 rather than from the first timestamp), the format allows timestamp
    discontinuities (MPEG-PS/TS: FFmpeg *estimates* their durations, which can be far too short),
    or the stated end lies well before the container's. Then the end is read from the packets
    (:func:`_packet_end`).
    """
    span = _stream_span(stream)
    container_end = None
    if c.duration is not None:
        container_end = max(0.0, (c.start_time or 0) / av.time_base) + c.duration / av.time_base
    estimated = bool(int(c.format.flags) & _TS_DISCONT)
    if (
        span is not None
        and not estimated
        and (container_end is None or span[1] >= container_end - 0.25 - 0.05 * (container_end - span[0]))
    ):
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
        if tb is None:  # FFmpeg sets one on every demuxed stream
            raise MediaError(f"stream {index} of {path} has no time base")
        for seek_to in [hint, None] if hint is not None else [None]:
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


def decode_from(c, stream, t: float, first: float, counts: dict) -> Iterator:
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
        info: dict[str, Any] = {
            "path": str(path),
            "duration": dur,
            "has_video": v is not None,
            "has_audio": a is not None,
            "start": _origin(c),
        }
        if v is not None:
            info.update(
                video_duration=_stream_seconds(v),
                fps=float(v.average_rate) if v.average_rate else None,
                width=v.codec_context.width,
                height=v.codec_context.height,
                n_video_frames=int(v.frames or 0),
            )
        if a is not None:
            layout = a.codec_context.layout
            info.update(
                audio_duration=_stream_seconds(a),
                audio_rate=int(a.codec_context.sample_rate or 0),
                audio_channels=len(layout.channels) if layout else 0,
                audio_layout=layout.name if layout else "",
            )
        return ClipInfo(**info)


def _check_span(path: str, start: float | None, end: float | None) -> None:
    for name, v in (("start", start), ("end", end)):
        if v is not None and (not math.isfinite(v) or v < 0):
            raise MediaError(f"invalid {name} time {v!r} for {path} (times are seconds >= 0)")
    if start is not None and end is not None and end < start:
        raise MediaError(f"span end {end} before start {start} for {path} (fix the manifest times)")


def _resolve_span(
    path: str,
    kind: str,
    origin: float,
    first: float,
    stream_end: float,
    start: float | None,
    end: float | None,
) -> tuple[float, float]:
    """The span ``[start, end]`` (file time, None = the stream's ends) in the stream's timestamps."""
    t0 = first if start is None else origin + start
    if t0 > stream_end or (t0 == stream_end and end != start):
        raise MediaError(
            f"span start {t0 - origin:.3f} s is past the end of the {kind} "
            f"({stream_end - origin:.3f} s) in {path} (fix the manifest times)"
        )
    t1 = stream_end if end is None else min(origin + end, stream_end)
    return t0, t1


@dataclass(frozen=True)
class OpenSpan:
    """A media file opened at one stream, with the span to decode in the stream's timestamps.

    Attributes
    ----------
    container : av.container.InputContainer
        The open file (closed when :func:`open_span`'s block ends).
    stream
        Its first stream of the asked kind, decoding on one thread.
    first : float
        The stream's first presentation time (s).
    t0, t1 : float
        The span to decode (s); ``t1 <= t0`` for a zero-length span.
    """

    container: av.container.InputContainer
    stream: object
    first: float
    t0: float
    t1: float


@contextlib.contextmanager
def open_span(
    path: str,
    kind: str,
    start: float | None,
    end: float | None,
    check_stream: Callable[[object], None] | None = None,
) -> Iterator[OpenSpan]:
    """Open ``path`` at its first ``kind`` stream (``"audio"`` or ``"video"``) and resolve the span.

    The steps both decoders take, in this order: check the span's times, open the file, take the
    stream (one decoding thread), call ``check_stream`` on it (e.g. refuse oversized frames before
    anything is decoded), find the stream's first and end times (stated, or from its packets) and
    place ``[start, end]`` (file time, from its first timestamp; None = the stream's ends) on them.

    Raises
    ------
    MediaError
        Invalid span times, a missing/empty/unreadable file, no such stream, or a span that starts
        after the stream ends.
    """
    if kind not in ("audio", "video"):
        raise ValueError(f"kind must be 'audio' or 'video', got {kind!r}")
    _check_span(path, start, end)
    with _open(path) as c:
        streams = c.streams.audio if kind == "audio" else c.streams.video
        if not streams:
            raise MediaError(f"no {kind} stream in {path}")
        stream = streams[0]
        stream.codec_context.thread_count = 1
        if check_stream is not None:
            check_stream(stream)
        first, stream_end = _bounds(path, c, stream)
        t0, t1 = _resolve_span(path, kind, _origin(c), first, stream_end, start, end)
        yield OpenSpan(c, stream, first, t0, t1)
