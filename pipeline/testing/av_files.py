"""Real media files made with PyAV: mp4 (H.264 + AAC), avi (MPEG-4 + PCM) and wav, for tests and demos.

Everything here is deterministic: the same arguments give byte-identical files, also across
processes (x264 runs single-threaded without its SIMD code, RGB->YUV is done in numpy, noise comes
from a seeded generator, the mp4 muxer writes no wall-clock time). Media are
encoded with PyAV, whose wheel bundles FFmpeg with libx264, aac and mpeg4 encoders. The pictures and
sounds come from :mod:`pipeline.testing.signals`.

Examples
--------
>>> from pipeline.testing.av_files import write_clip
>>> path = write_clip("x.mp4", duration=1.0, size=(160, 120), audio_channels=6)
"""

from __future__ import annotations

import wave
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.testing.signals import render_face_frame, render_split_screen_frame, tone


def _even(n: int) -> int:
    return max(2, int(n) // 2 * 2)


def _frame_size(size: tuple[int, int]) -> tuple[int, int]:
    """Width rounded down to even, height to a multiple of 4 (yuv420p planes)."""
    return _even(size[0]), max(4, int(size[1]) // 4 * 4)


def _channel_signals(mono: np.ndarray, channels: int) -> np.ndarray:
    """(channels, n) signal: every channel carries the tone; for 5.1 the centre [2] is loudest."""
    if channels == 6:
        gains = np.array([0.2, 0.2, 1.0, 0.05, 0.1, 0.1], np.float32)[:, None]
        return np.ascontiguousarray(gains * mono[None, :])
    return np.ascontiguousarray(np.tile(mono, (channels, 1)))


_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H*3/2, W) uint8 planar yuv420p, BT.601 limited range.

    Done in numpy rather than by FFmpeg's swscale so that encoded bytes never depend on how
    swscale slices or threads the conversion (the sample corpus must rebuild bit-for-bit).
    """
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w)

    planes = [y, sub(u), sub(v)]
    return np.clip(np.rint(np.concatenate(planes, axis=0)), 0, 255).astype(np.uint8)


def yuv420p_frame(yuv: np.ndarray, width: int, height: int):
    """An ``av.VideoFrame`` from planar yuv420p bytes, with the rows' padding bytes zeroed.

    ``VideoFrame.from_ndarray`` leaves the bytes between a plane's width and its ``line_size``
    uninitialised; zeroing them keeps every byte the encoder may touch defined.
    """
    import av

    frame = av.VideoFrame(width, height, "yuv420p")
    y_size, c_size = width * height, (width // 2) * (height // 2)
    flat = yuv.reshape(-1)
    sources = (
        flat[:y_size].reshape(height, width),
        flat[y_size : y_size + c_size].reshape(height // 2, width // 2),
        flat[y_size + c_size :].reshape(height // 2, width // 2),
    )
    for plane, src in zip(frame.planes, sources, strict=True):
        padded = np.zeros((plane.buffer_size // plane.line_size, plane.line_size), np.uint8)
        padded[: src.shape[0], : src.shape[1]] = src
        plane.update(padded.tobytes())
    return frame


def encode_media(
    path: str | Path,
    *,
    frames: Callable[[int], np.ndarray] | None,
    n_frames: int,
    fps: float,
    size: tuple[int, int],
    audio: np.ndarray | None,
    sample_rate: int,
) -> Path:
    """Encode video frames and/or planar float audio into ``path`` with PyAV.

    ``.mp4``: H.264 (yuv420p, CRF 30) + AAC (64 kb/s). ``.avi``: MPEG-4 part 2 + 16-bit PCM.
    Deterministic: single-threaded encoders, no timestamps from the clock.

    Parameters
    ----------
    path : str or Path
        Output file; its suffix picks the container.
    frames : callable or None
        ``frames(i)`` -> (H, W, 3) uint8 RGB frame; None for an audio-only file.
    n_frames : int
        Number of video frames.
    fps : float
        Frame rate (23.976 is stored as 24000/1001).
    size : (int, int)
        ``(width, height)``; width even, height a multiple of 4 (yuv420p), else ValueError.
    audio : ndarray or None
        (channels, samples) float32 in [-1, 1]; channels 1, 2 or 6 (5.1).
    sample_rate : int
        Audio sample rate in Hz.
    """
    import av

    if frames is not None and _frame_size(size) != tuple(size):
        raise ValueError(f"frame size {size}: width must be even and height a multiple of 4 (yuv420p)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    avi = path.suffix.lower() == ".avi"
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        vstream = astream = None
        if frames is not None:
            vstream = container.add_stream("mpeg4" if avi else "libx264", rate=rate)
            vstream.width, vstream.height = size
            vstream.pix_fmt = "yuv420p"
            vstream.codec_context.thread_count = 1
            if avi:
                vstream.bit_rate = 400_000
            else:
                # asm=0: with x264's SIMD code the bytes can vary between processes (bench/RESULTS.md,
                # "Demo and test suite"); the C code gives identical bytes every time.
                vstream.options = {"crf": "30", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        if audio is not None:
            layout = _LAYOUTS[audio.shape[0]]
            astream = container.add_stream("pcm_s16le" if avi else "aac", rate=sample_rate, layout=layout)
            if not avi:
                astream.bit_rate = 64_000
        if vstream is not None and frames is not None:  # (vstream exists only with frames)
            for i in range(n_frames):
                vf = yuv420p_frame(rgb_to_yuv420p(frames(i)), *size)
                vf.pts = i
                container.mux(vstream.encode(vf))
            container.mux(vstream.encode())
        if astream is not None and audio is not None:  # (astream exists only with audio)
            _encode_audio(container, astream, audio, sample_rate, avi)
    return path


def _encode_audio(container, astream, audio: np.ndarray, sample_rate: int, avi: bool) -> None:
    import av

    layout = _LAYOUTS[audio.shape[0]]
    step = 1024
    for s in range(0, audio.shape[1], step):
        chunk = np.ascontiguousarray(audio[:, s : s + step])
        if avi:
            pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout=layout)
        else:
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        af.sample_rate = sample_rate
        af.pts = s
        container.mux(astream.encode(af))
    container.mux(astream.encode())


def write_clip(
    path: str | Path,
    *,
    duration: float = 2.0,
    fps: float = 24.0,
    size: tuple[int, int] = (320, 240),
    video: bool = True,
    audio: bool = True,
    audio_channels: int = 2,
    sample_rate: int = 48000,
    tone_hz: float = 220.0,
    silent: bool = False,
    face: bool = True,
    face_scale: float = 0.5,
    face_pos: tuple[float, float] = (0.5, 0.5),
    background: tuple[int, int, int] = (40, 60, 90),
    seed: int = 0,
) -> Path:
    """Write a small talking-head-like clip: H.264 + AAC ``.mp4`` (or MPEG-4 + PCM ``.avi``).

    Parameters
    ----------
    path : str or Path
        Output file; ``.avi`` selects the AVI/MPEG-4 writer, anything else mp4.
    duration : float
        Seconds.
    fps : float
        Frame rate.
    size : (int, int)
        ``(width, height)``; width rounded down to even, height to a multiple of 4.
    video, audio : bool
        Which streams to write (at least one).
    audio_channels : int
        1, 2 or 6; 6 is a 5.1 layout where the centre channel (index 2) carries the tone loudest
        and the others are quieter copies, as in MELD's 5.1 clips.
    sample_rate : int
        Audio rate (MELD: 48000).
    tone_hz : float
        Pitch of the sine on every channel.
    silent : bool
        Write digital silence instead of the tone (no noise either).
    face : bool
        Paste the astronaut face; False gives a background-only clip (MTCNN finds nothing).
    face_scale : float
        Height of the face crop as a fraction of the frame height (the face itself is ~half of it).
    face_pos : (float, float)
        Centre of the face as fractions of (width, height); it drifts slightly per frame.
    background : (int, int, int)
        RGB background colour.
    seed : int
        Seed of the audio noise.

    Returns
    -------
    Path
        ``path``.
    """
    if not (video or audio):
        raise ValueError("write_clip needs video=True or audio=True")
    if audio_channels not in _LAYOUTS:
        raise ValueError(f"audio_channels must be 1, 2 or 6, not {audio_channels}")
    w, h = _frame_size(size)
    n_frames = max(1, int(round(duration * fps)))
    mono = None
    if audio:
        mono = tone(
            duration,
            sample_rate,
            tone_hz,
            amplitude=0.0 if silent else 0.3,
            noise=0.0 if silent else 0.01,
            seed=seed,
        )

    def frames(i: int) -> np.ndarray:
        return render_face_frame(
            i, size=(w, h), face=face, face_scale=face_scale, face_pos=face_pos, background=background
        )

    return encode_media(
        path,
        frames=frames if video else None,
        n_frames=n_frames,
        fps=fps,
        size=(w, h),
        audio=None if mono is None else _channel_signals(mono, audio_channels),
        sample_rate=sample_rate,
    )


def write_split_screen_video(
    path: str | Path,
    *,
    duration: float,
    fps: float = 30.0,
    size: tuple[int, int] = (720, 480),
    left_color: tuple[int, int, int] = (200, 40, 40),
    right_color: tuple[int, int, int] = (40, 40, 200),
    face: bool = True,
    audio: bool = False,
    sample_rate: int = 16000,
) -> Path:
    """An IEMOCAP-like dialogue video: two halves of distinct colour, a face in each half.

    The left half is ``left_color`` and the right half ``right_color``, so a crop can be checked
    against the left/right rule of docs/CORPORA.md 3.4.
    """
    w, h = _frame_size(size)

    def frames(i: int) -> np.ndarray:
        return render_split_screen_frame(
            i, size=(w, h), left_color=left_color, right_color=right_color, face=face
        )

    sound = None
    if audio:
        sound = _channel_signals(tone(duration, sample_rate, 220.0), 2)
    return encode_media(
        path,
        frames=frames,
        n_frames=max(1, int(round(duration * fps))),
        fps=fps,
        size=(w, h),
        audio=sound,
        sample_rate=sample_rate,
    )


def write_wav(
    path: str | Path,
    *,
    duration: float = 2.0,
    sample_rate: int = 16000,
    tone_hz: float = 220.0,
    seed: int = 0,
) -> Path:
    """Write a 16-bit mono PCM WAV holding a sine at ``tone_hz`` plus light seeded noise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (tone(duration, sample_rate, tone_hz, seed=seed) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path


def write_truncated(path_src: str | Path, path_dst: str | Path, keep_fraction: float = 0.5) -> Path:
    """Copy the first ``keep_fraction`` of ``path_src``'s bytes to ``path_dst``: a corrupt media file."""
    data = Path(path_src).read_bytes()
    dst = Path(path_dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst
