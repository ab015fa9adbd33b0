"""Frame decoding: ``n`` upright RGB frames spread over a span (:func:`decode_frames`).

Decodes forward and seeks for long gaps, takes the frame nearest each bin centre, and turns and
scales each chosen frame within a pixel budget (see :mod:`pipeline.decode` for the rules).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from pipeline.decode.container import MediaError, TruncatedMedia, decode_from, open_span

#: Seek instead of decoding forward when the next wanted frame is more than this many seconds ahead.
SEEK_GAP = 3.0
#: After a seek, accept the first frame this fraction of a bin width (or less) from the bin centre.
SEEK_TOLERANCE = 0.25
#: Decoded frames are scaled down (aspect kept) to at most this many pixels: 1280x720 (2.8 MB as RGB).
MAX_FRAME_PIXELS = 1280 * 720
#: Streams with larger frames are refused: 8K (7680x4320, 8192x4096) passes, 16k x 16k does not.
MAX_SOURCE_PIXELS = 40_000_000
#: With ``skip_nonref``, each picked frame must lie within this many frame times of its target, else the
#: span is decoded again in full.
SKIP_NONREF_REACH = 1.0


def frame_targets(t0: float, t1: float, n: int) -> np.ndarray:
    """Times of ``n`` frames spread uniformly over ``[t0, t1]``: the centres of ``n`` equal bins.

    A zero-length span gives the single time ``t0``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if t1 <= t0:
        return np.array([t0])
    return t0 + (np.arange(n) + 0.5) * (t1 - t0) / n


def decode_frames(
    path: str | Path,
    n: int = 15,
    start: float | None = None,
    end: float | None = None,
    seek_gap: float = SEEK_GAP,
    seek_tolerance: float = SEEK_TOLERANCE,
    stats: dict | None = None,
    max_pixels: int = MAX_FRAME_PIXELS,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
    skip_nonref: bool = False,
) -> np.ndarray:
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
    skip_nonref : bool
        Let the decoder skip the frames no other frame refers to (FFmpeg's ``skip_frame = NONREF``:
        most B-frames, about half the frames of a typical H.264 clip) and take the nearest *decoded*
        frame. When a picked frame is then more than :data:`SKIP_NONREF_REACH` frame times from its
        target, fewer frames come back than targets, a frame has no timestamp or the decoding fails,
        the span is decoded again without skipping (the result is then the same as with False).
        ``stats`` gets ``skip_nonref``: True when the skipping result was kept.

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
    if skip_nonref:
        frames, times, targets, error, reach = _decode_picks(
            path, n, start, end, seek_gap, seek_tolerance, stats, max_pixels, max_source_pixels, True
        )
        if error is None and _within_reach(times, targets, reach):
            if stats is not None:
                stats["skip_nonref"] = True
            return np.stack(frames)
    frames, _, targets, error, _ = _decode_picks(
        path, n, start, end, seek_gap, seek_tolerance, stats, max_pixels, max_source_pixels, False
    )
    if stats is not None:
        stats["skip_nonref"] = False
    if not frames:
        raise MediaError(f"no decodable video frame in {path}" + (f": {error}" if error else ""))
    out = np.stack(frames)
    if error is not None:
        msg = f"video of {path} broke off ({len(frames)} of {len(targets)} frames): {error}"
        raise TruncatedMedia(msg, out)
    return out


def _decode_picks(
    path: str,
    n: int,
    start: float | None,
    end: float | None,
    seek_gap: float,
    seek_tolerance: float,
    stats: dict | None,
    max_pixels: int,
    max_source_pixels: int,
    skip_nonref: bool,
) -> tuple[list[np.ndarray], list[float | None], np.ndarray, Exception | None, float]:
    """One decoding pass: (frames, their times, the targets, the error that ended it, the reach).

    The reach is how far a frame may lie from its target for a skipping pass to be kept:
    :data:`SKIP_NONREF_REACH` frame times, or the seek tolerance where that is larger (after a seek the
    full pass also takes the first frame within it).
    """
    fitter = _FrameFitter(path, max_pixels, max_source_pixels)

    def check_size(stream) -> None:
        fitter.check(stream.codec_context.width or 0, stream.codec_context.height or 0)

    with open_span(path, "video", start, end, check_size) as span:
        if skip_nonref:
            stream: Any = span.stream  # an av VideoStream (OpenSpan types it as object)
            stream.codec_context.skip_frame = "NONREF"
        t0, t1 = span.t0, span.t1
        targets = frame_targets(min(t0, t1), t1, n)
        tolerance = seek_tolerance * (t1 - t0) / n if t1 > t0 else 0.0
        cursor = _FrameCursor(span.container, span.stream, span.first)
        try:
            frames, times, error = _pick_with(cursor, targets, seek_gap, fitter, tolerance)
        finally:
            if stats is not None:  # summed: a fallback's second pass adds its work to the first's
                for k, v in cursor.counts.items():
                    stats[k] = stats.get(k, 0) + v
    return frames, times, targets, error, max(cursor.step * SKIP_NONREF_REACH, tolerance)


def _within_reach(times: list[float | None], targets: np.ndarray, reach: float) -> bool:
    """Whether every target got a frame with a timestamp at most ``reach`` seconds from it."""
    if len(times) != len(targets):
        return False
    return all(
        t is not None and abs(t - float(g)) <= reach + 1e-6 for t, g in zip(times, targets, strict=True)
    )


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
            raise MediaError(
                f"video frames of {self.path} are {width}x{height}: over the limit of "
                f"{self.max_source_pixels} pixels (re-encode it smaller, e.g. "
                f"ffmpeg -i IN -vf scale=1920:-2 OUT)"
            )

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
            rgb = frame.to_ndarray(
                width=coded[0],
                height=coded[1],
                format="rgb24",
                interpolation="AREA" if scale < 1 else "BILINEAR",
            )
        if quarter:
            rgb = np.rot90(rgb, k=quarter)
        if (sw, sh) != (out_w, out_h):  # another shape than the first frame: centred on black
            canvas = np.zeros((out_h, out_w, 3), np.uint8)
            y, x = (out_h - sh) // 2, (out_w - sw) // 2
            canvas[y : y + sh, x : x + sw] = rgb
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
        self.untimed = False  # a frame without a timestamp was decoded (its time was guessed)

    def seek(self, t: float) -> None:
        self._it = decode_from(self.c, self.stream, t, self.first, self.counts)
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
        self.untimed = self.untimed or frame.time is None
        t = frame.time if frame.time is not None else self.cur_t + self.step
        self.prev, self.prev_t, self.cur, self.cur_t = self.cur, self.cur_t, frame, t
        return True


def _pick_with(
    cursor: _FrameCursor, targets: np.ndarray, seek_gap: float, fitter: _FrameFitter, tolerance: float
) -> tuple[list[np.ndarray], list[float | None], Exception | None]:
    """The decoded frame nearest to each target time, each frame at most once, with its time.

    A time is None where the frame had no timestamp (its time was guessed from the frame rate).
    """
    picked: list[np.ndarray] = []
    times: list[float | None] = []
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
            times.append(None if cursor.untimed else best_t)
            last_t = best_t
    except (av.FFmpegError, MediaError) as e:  # a broken packet, or a frame over the size limit
        return picked, times, e
    return picked, times, None


def _nearest(cursor: _FrameCursor, t: float):
    pairs = ((cursor.prev, cursor.prev_t), (cursor.cur, cursor.cur_t))
    candidates = [(f, ft) for f, ft in pairs if f is not None]
    if not candidates:
        return None, None
    return min(candidates, key=lambda p: abs(p[1] - t))
