"""Small media files in many encodings, written with PyAV, for the decode tests.

One writer, :func:`write_av`, with the knobs the decode tests turn: container and codecs, pixel
format, frame size per frame, a start offset, a display rotation and the audio sample format.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np

from pipeline.testing.signals import render_face_frame, tone


def face_frame(i: int, size: tuple[int, int] = (160, 120), face_scale: float = 0.8) -> np.ndarray:
    """Frame ``i`` of a talking-head clip: the astronaut face centred on a flat background."""
    return render_face_frame(
        i, size=size, face=True, face_scale=face_scale, face_pos=(0.5, 0.5), background=(40, 60, 90)
    )


def write_av(
    path,
    *,
    vcodec: str | None = "libx264",
    acodec: str | None = "aac",
    fmt: str | None = None,
    seconds: float = 1.0,
    fps: int = 24,
    size: tuple[int, int] = (160, 120),
    frame: Callable[[int], np.ndarray] | None = None,
    pix_fmt: str = "yuv420p",
    vopts: dict | None = None,
    sample_rate: int = 48000,
    channels: int = 1,
    sample_format: str = "fltp",
    audio: np.ndarray | None = None,
    start: float = 0.0,
    rotation: int | None = None,
) -> Path:
    """Encode a clip with a sine tone and (by default) the astronaut face.

    Parameters
    ----------
    path : str, Path or writable file object
        Output; a path's suffix picks the container unless ``fmt`` is given. A file object without
        ``seek`` gives what a live recording gives: no duration and no index.
    vcodec, acodec : str or None
        PyAV encoder names; None leaves that stream out.
    fmt : str, optional
        FFmpeg muxer name (e.g. ``"mpegts"``, ``"matroska"``).
    seconds, fps, size :
        Length, frame rate and ``(width, height)`` of the video.
    frame : callable, optional
        ``frame(i)`` -> (H, W, 3) uint8; default :func:`face_frame` at ``size``. A frame of another
        size is scaled by the encoder to ``size``.
    pix_fmt : str
        Encoder pixel format.
    vopts : dict, optional
        Encoder options.
    sample_rate, channels, sample_format :
        Audio rate, channel count (1 or 2) and the format of the frames handed to the encoder.
    audio : ndarray, optional
        Mono float samples instead of the 220 Hz tone.
    start : float
        Timestamp of the first frame and sample, in seconds (a cut recording starts past 0).
    rotation : int, optional
        Display rotation written to the container (degrees counter-clockwise, as FFmpeg reports).
    """
    target = str(path) if isinstance(path, str | Path) else path
    frame = frame or (lambda i: face_frame(i, size))
    with av.open(target, "w", format=fmt) as c:
        vs: av.VideoStream | None = None
        as_: av.AudioStream | None = None
        if vcodec:
            # the stream's kind follows from the codec name, known only at run time
            vs = cast(av.VideoStream, c.add_stream(vcodec, rate=Fraction(fps)))
            vs.width, vs.height = size
            vs.pix_fmt = pix_fmt
            vs.codec_context.thread_count = 1
            if vopts:
                vs.options = vopts
            if rotation is not None:
                vs.set_display_rotation(rotation)
        if acodec:
            as_ = cast(
                av.AudioStream,
                c.add_stream(acodec, rate=sample_rate, layout="mono" if channels == 1 else "stereo"),
            )
            as_.codec_context.thread_count = 1
            as_.bit_rate = 64_000  # WMA has no default; ignored by PCM and lossless codecs
            as_.options = {"strict": "experimental"}  # FFmpeg's native vorbis/opus encoders
        packets: list[av.Packet] = []
        if vs is not None:
            for i in range(int(round(seconds * fps))):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame(i)), format="rgb24")
                if (vf.width, vf.height) != tuple(size) or vf.format.name != pix_fmt:
                    vf = vf.reformat(*size, format=pix_fmt)
                vf.pts = int(round(start * fps)) + i
                vf.time_base = Fraction(1, fps)
                packets += vs.encode(vf)
            packets += vs.encode()
        if as_ is not None:
            mono = tone(seconds, sample_rate, 220.0, amplitude=0.3, noise=0.0) if audio is None else audio
            packets += _encode_audio(as_, np.asarray(mono, np.float32), channels, sample_format, start)
        # in time order, as a recorder writes them (MPEG-PS/TS estimate durations from the file's end)
        packets.sort(key=lambda p: float((p.dts if p.dts is not None else p.pts or 0) * p.time_base))
        for packet in packets:
            c.mux(packet)
    return path


def _encode_audio(stream, mono: np.ndarray, channels: int, sample_format: str, start: float) -> list:
    layout = "mono" if channels == 1 else "stereo"
    step = stream.codec_context.frame_size or 1024
    rate = stream.codec_context.sample_rate
    resampler = av.AudioResampler(
        format=stream.codec_context.format.name, layout=layout, rate=rate, frame_size=step
    )
    packets = []
    for s in range(0, len(mono), step):
        planar = np.repeat(mono[None, s : s + step], channels, axis=0)
        data = planar if sample_format.endswith("p") else planar.T.reshape(1, -1)  # packed: interleaved
        af = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data, np.float32), format=sample_format, layout=layout
        )
        af.sample_rate = rate
        af.pts = int(round(start * rate)) + s
        af.time_base = Fraction(1, rate)
        for out in resampler.resample(af):
            packets += stream.encode(out)
    for out in resampler.resample(None):
        packets += stream.encode(out)
    return packets + stream.encode()


def write_resolution_change(path: Path) -> Path:
    """An MPEG-TS whose video goes from 160x120 to 128x128 after 1 s (two encodes, one stream)."""
    path = Path(path)
    a = write_av(path.with_suffix(".a.ts"), fmt="mpegts", seconds=1.0, size=(160, 120))
    b = write_av(
        path.with_suffix(".b.ts"),
        fmt="mpegts",
        seconds=1.0,
        size=(128, 128),
        start=1.0,
        frame=lambda i: face_frame(i, (128, 128)),
    )
    path.write_bytes(a.read_bytes() + b.read_bytes())
    return path


def write_float_wav(path: Path, wave: np.ndarray, sr: int = 16000) -> Path:
    """An IEEE-float (format 3) mono WAV holding ``wave`` as is, NaN and inf included."""
    path = Path(path)
    data = np.asarray(wave, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path
