"""Synthetic media and miniature corpora in the real MELD and IEMOCAP formats, for tests and demos.

Everything here is deterministic: the same arguments give byte-identical files, also across
processes (x264 runs single-threaded without its SIMD code, RGB->YUV is done in numpy, noise comes
from a seeded generator, the mp4 muxer writes no wall-clock time). Media are
encoded with PyAV, whose wheel bundles FFmpeg with libx264, aac and mpeg4 encoders.

The face is the public-domain astronaut portrait from :func:`skimage.data.astronaut` (NASA, Eileen
Collins), cropped around the face; MTCNN finds it with p > 0.999.

The miniature trees carry the traps listed in ``docs/CORPORA.md`` section 7; see
:func:`make_meld_tree` and :func:`make_iemocap_tree` for exactly which trap sits where, so tests can
assert manifests field by field.

Examples
--------
>>> from pipeline.corpora.synthetic import write_clip
>>> path = write_clip("/tmp/x.mp4", duration=1.0, size=(160, 120), audio_channels=6)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import wave
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

#: MELD's seven emotion labels, in the order of the corpus README.
MELD_EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")

#: Sentiment that MELD pairs with each emotion (surprise alternates negative/positive in the corpus).
MELD_SENTIMENT = {
    "neutral": "neutral",
    "joy": "positive",
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
    "surprise": "negative",
}

#: Audio pitch (Hz) per label when a tree is built with ``tone_for_label=True``: a learnable signal.
LABEL_TONE_HZ = {
    "neutral": 220.0,
    "surprise": 660.0,
    "fear": 494.0,
    "sadness": 165.0,
    "joy": 523.0,
    "disgust": 294.0,
    "anger": 370.0,
    # IEMOCAP codes
    "neu": 220.0,
    "sad": 165.0,
    "ang": 370.0,
    "hap": 523.0,
    "exc": 587.0,
    "fru": 294.0,
    "sur": 660.0,
    "fea": 494.0,
    "dis": 330.0,
    "oth": 392.0,
    "xxx": 247.0,
}

#: Face centre (fractions of width, height) per MELD label with ``tone_for_label=True``.
LABEL_FACE_POS = {
    "neutral": (0.50, 0.50),
    "surprise": (0.30, 0.35),
    "fear": (0.70, 0.35),
    "sadness": (0.30, 0.65),
    "joy": (0.70, 0.65),
    "disgust": (0.40, 0.40),
    "anger": (0.60, 0.60),
}

MELD_HEADER = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)

#: Clip folder per MELD split, as in MELD.Raw.
MELD_CLIP_DIRS = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}

#: Unicode -> cp1252-read-as-latin-1 C1 code point, to write "old" (pre-2020) MELD CSVs.
_TO_C1 = {
    "\u2019": "\x92",
    "\u2018": "\x91",
    "\u201c": "\x93",
    "\u201d": "\x94",
    "\u2026": "\x85",
    "\u2014": "\x97",
    "\u2013": "\x96",
}

# Utterance texts cycled by the MELD generator: curly quotes, an ellipsis, a dash, a comma inside a
# quoted field, doubled inner quotes, and a double space, as in the real CSVs (docs/CORPORA.md 2.2).
_MELD_TEXTS = (
    "Oh my God, he\u2019s lost it. He\u2019s totally lost it.",
    "What?",
    'I\u2019m thinkin\u2019 she\u2019ll say, "Hey, you\u2019re not Bob."',
    "Well\u2026 no  way.",
    "Okay \u2014 fine, let\u2019s go.",
    "\u2018Yes\u2019 she said.",
    "You\u2019re \u201ckidding\u201d me!",
)
_MELD_SPEAKERS = ("Joey", "Rachel", "Richard\u2019s Date", "Monica", "Chandler and Joey")


# --- media writers ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def astronaut_face() -> np.ndarray:
    """The face region of :func:`skimage.data.astronaut` (rows 0:220, cols 140:340), RGB uint8."""
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[0:220, 140:340])


def _even(n: int) -> int:
    return max(2, int(n) // 2 * 2)


def _frame_size(size: tuple[int, int]) -> tuple[int, int]:
    """Width rounded down to even, height to a multiple of 4 (yuv420p planes)."""
    return _even(size[0]), max(4, int(size[1]) // 4 * 4)


def _paste(frame: np.ndarray, patch: np.ndarray, cx: float, cy: float) -> None:
    """Paste ``patch`` centred at pixel (cx, cy) into ``frame`` in place, clipped to the frame."""
    h, w = frame.shape[:2]
    ph, pw = patch.shape[:2]
    x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x0 + pw), min(h, y0 + ph)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]


@lru_cache(maxsize=64)
def _scaled_face(height_px: int) -> np.ndarray:
    """The face resized to ``height_px`` rows (skimage, single-threaded: byte-reproducible)."""
    from skimage.transform import resize

    face = astronaut_face()
    h = max(8, int(height_px))
    w = max(8, int(round(face.shape[1] * h / face.shape[0])))
    out = resize(face, (h, w), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_face_frame(
    index: int,
    *,
    size: tuple[int, int],
    face: bool,
    face_scale: float,
    face_pos: tuple[float, float],
    background: tuple[int, int, int],
) -> np.ndarray:
    """One RGB frame: a flat background with the astronaut face, drifting a few pixels per frame.

    Parameters
    ----------
    index : int
        Frame number; the face moves on a small circle (radius 2 % of the width) as it grows.
    size : (int, int)
        ``(width, height)`` in pixels.
    face : bool
        Paste the face or leave the background empty (a "no face" clip).
    face_scale : float
        Face-crop height as a fraction of the frame height.
    face_pos : (float, float)
        Centre of the face as fractions of (width, height).
    background : (int, int, int)
        RGB background colour.
    """
    w, h = size
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = np.asarray(background, np.uint8)
    if face:
        patch = _scaled_face(int(face_scale * h))
        angle = 2 * np.pi * index / 24.0
        cx = face_pos[0] * w + 0.02 * w * np.cos(angle)
        cy = face_pos[1] * h + 0.02 * w * np.sin(angle)
        _paste(frame, patch, cx, cy)
    return frame


def tone(
    duration: float,
    sample_rate: int,
    tone_hz: float,
    *,
    amplitude: float = 0.3,
    noise: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """A float32 sine of ``duration`` seconds plus seeded Gaussian noise (``noise`` = its std)."""
    n = int(round(duration * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    x = amplitude * np.sin(2 * np.pi * tone_hz * t)
    if noise > 0:
        x = x + noise * np.random.default_rng(seed).standard_normal(n)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


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
        plane.update(padded)
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
                # asm=0: with x264's SIMD code the bytes varied between processes (measured: ~10 of
                # 25 sample clips differed over 5 builds); the C code gives identical bytes every time.
                vstream.options = {"crf": "30", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        if audio is not None:
            layout = _LAYOUTS[audio.shape[0]]
            astream = container.add_stream("pcm_s16le" if avi else "aac", rate=sample_rate, layout=layout)
            if not avi:
                astream.bit_rate = 64_000
        if vstream is not None:
            for i in range(n_frames):
                vf = yuv420p_frame(rgb_to_yuv420p(frames(i)), *size)
                vf.pts = i
                container.mux(vstream.encode(vf))
            container.mux(vstream.encode())
        if astream is not None:
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
    """An IEMOCAP-like dialog video: two halves of distinct colour, a face in each half.

    The left half is ``left_color`` and the right half ``right_color``, so a crop can be checked
    against the left/right rule of docs/CORPORA.md 3.4.
    """
    w, h = _frame_size(size)
    half = w // 2
    patch = _scaled_face(int(0.45 * h)) if face else None

    def frames(i: int) -> np.ndarray:
        frame = np.empty((h, w, 3), np.uint8)
        frame[:, :half] = left_color
        frame[:, half:] = right_color
        if patch is not None:
            dx = 0.02 * half * np.cos(2 * np.pi * i / 30.0)
            _paste(frame, patch, 0.5 * half + dx, 0.45 * h)
            _paste(frame, patch, 1.5 * half - dx, 0.45 * h)
        return frame

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


# --- MELD -------------------------------------------------------------------------------------------


def format_srt_time(seconds: float, *, one_digit_hour: bool = False, ms_digits: int = 3) -> str:
    """``HH:MM:SS,mmm`` as in MELD (``H:`` with ``one_digit_hour``; 2-digit ms as a fraction)."""
    total_ms = int(round(seconds * 1000))
    h, rem = divmod(total_ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    frac = f"{ms:03d}" if ms_digits == 3 else f"{ms // 10:02d}"
    return f"{h:d}:{m:02d}:{s:02d},{frac}" if one_digit_hour else f"{h:02d}:{m:02d}:{s:02d},{frac}"


def meld_rows(
    split: str, *, n_dialogues: int, utterances_per_dialogue: int, traps: bool, seed: int
) -> list[dict]:
    """The rows of one synthetic MELD CSV (dicts keyed by :data:`MELD_HEADER`), before encoding.

    Deterministic layout (with ``traps=True``):

    * dialogue ids are ``0..n_dialogues`` with **1 missing** in train (a missing Dialogue_ID);
    * dialogue 0 of every split has an **Utterance_ID gap**: ids ``0, 1, 3, 4, ...`` (2 missing);
    * train dia0 utt1's EndTime has **2-digit milliseconds** (``,28`` = 0.28 s);
    * odd utterances use a **one-digit hour** (``0:00:12,345``);
    * train ``Sr No.`` restarts at dialogue 3 (duplicate values: never a key).

    Labels cycle through :data:`MELD_EMOTIONS` starting at ``seed`` (all 7 present once a split has 7
    utterances); surprise alternates negative/positive sentiment.
    """
    dialogue_ids = list(range(n_dialogues + 1)) if (traps and split == "train") else list(range(n_dialogues))
    if traps and split == "train":
        dialogue_ids.remove(1)
    rows, k, sr_no = [], seed, 1
    for d_index, dia in enumerate(dialogue_ids):
        utt_ids = list(range(utterances_per_dialogue + 1))
        if traps and d_index == 0:
            utt_ids.remove(2)
        else:
            utt_ids = utt_ids[:-1]
        if traps and split == "train" and dia == 3:
            sr_no = 1
        t = 60.0 * (d_index + 1)
        for pos, utt in enumerate(utt_ids):
            label = MELD_EMOTIONS[k % len(MELD_EMOTIONS)]
            sentiment = MELD_SENTIMENT[label]
            if label == "surprise" and (k // len(MELD_EMOTIONS)) % 2:
                sentiment = "positive"
            start, end = t, t + 1.5 + 0.25 * (pos % 3)
            two_digit = traps and split == "train" and d_index == 0 and utt == 1
            if two_digit:
                end = float(int(end)) + 0.28
            rows.append(
                {
                    "Sr No.": str(sr_no),
                    "Utterance": _MELD_TEXTS[k % len(_MELD_TEXTS)],
                    "Speaker": _MELD_SPEAKERS[(pos + d_index) % len(_MELD_SPEAKERS)],
                    "Emotion": label,
                    "Sentiment": sentiment,
                    "Dialogue_ID": str(dia),
                    "Utterance_ID": str(utt),
                    "Season": str(1 + dia % 9),
                    "Episode": str(1 + dia % 20),
                    "StartTime": format_srt_time(start, one_digit_hour=traps and pos % 2 == 1),
                    "EndTime": format_srt_time(
                        end, one_digit_hour=traps and pos % 2 == 1, ms_digits=2 if two_digit else 3
                    ),
                }
            )
            t = end + 0.5
            k += 1
            sr_no += 1
    return rows


def write_meld_csv(path: str | Path, rows: Sequence[dict], *, old_encoding: bool = False) -> Path:
    """Write MELD CSV bytes: the real header, minimal quoting, timestamps always quoted.

    ``old_encoding=False`` gives the current files (UTF-8, CRLF, final CRLF); ``True`` gives the
    pre-2020 copies (LF, curly quotes/dashes as C1 code points U+0091-U+0097, docs/CORPORA.md 2.2).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n" if old_encoding else "\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(MELD_HEADER)
    for r in rows:
        w.writerow([r[c] for c in MELD_HEADER])
    text = buf.getvalue()
    # Timestamps contain a comma, so QUOTE_MINIMAL already quotes them, as the real files do.
    if old_encoding:
        text = text.translate(str.maketrans(_TO_C1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def make_meld_tree(
    root: str | Path,
    *,
    n_dialogues: int = 3,
    utterances_per_dialogue: int = 4,
    splits: Sequence[str] = ("train", "dev", "test"),
    clips: bool = True,
    layout: str = "raw",
    old_encoding: bool = False,
    traps: bool = True,
    tone_for_label: bool = False,
    duration: float = 1.0,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
) -> Path:
    """Build a miniature MELD tree in the real format; return the folder to pass as ``--root``.

    Parameters
    ----------
    root : str or Path
        Folder to create the tree in (created if needed).
    n_dialogues, utterances_per_dialogue : int
        Size per split. ``n_dialogues * utterances_per_dialogue`` utterances per split.
    splits : sequence of str
        Which splits get a CSV (and clips).
    clips : bool
        Write the clip folders; False gives a CSV-only tree.
    layout : str
        ``"raw"``: ``root/MELD.Raw/{CSVs, train_splits/, ...}`` (as MELD.Raw.tar.gz extracts);
        ``"flat"``: CSVs and clip folders directly in ``root``;
        ``"kaggle"``: CSVs in ``root``, clips in ``root/<split>/<clip folder>/``.
    old_encoding : bool
        Write the old C1-character, LF CSVs instead of the current UTF-8 CRLF ones.
    traps : bool
        Include the traps (see :func:`meld_rows`) and, with clips:

        * train: the last utterance of the last dialogue has **no clip**; ``dia0_utt1.mp4`` is
          **zero bytes**; ``._dia0_utt0.mp4`` AppleDouble junk;
        * dev: an **extra clip with no CSV row**, ``dia0_utt2.mp4`` (the Utterance_ID gap);
          ``dia0_utt0.mp4`` has **6-channel (5.1)** audio;
        * test: ``final_videos_testdia0_utt0.mp4`` **next to its plain twin** ``dia0_utt0.mp4``
          (the twin has a 880 Hz tone so a test can tell them apart), and an extra
          ``final_videos_testdia99_utt0.mp4`` with no row.
    tone_for_label : bool
        Audio pitch (:data:`LABEL_TONE_HZ`) and face position (:data:`LABEL_FACE_POS`) depend on
        the emotion label: a learnable signal for training tests.
    duration : float
        Seconds per clip.
    size : (int, int)
        Clip frame size.
    seed : int
        Shifts the label cycle and seeds audio noise.

    Returns
    -------
    Path
        ``root`` (all layouts are found from there by name).
    """
    if layout not in ("raw", "flat", "kaggle"):
        raise ValueError(f"layout must be 'raw', 'flat' or 'kaggle', not {layout!r}")
    root = Path(root)
    base = root / "MELD.Raw" if layout == "raw" else root
    for split in splits:
        rows = meld_rows(
            split,
            n_dialogues=n_dialogues,
            utterances_per_dialogue=utterances_per_dialogue,
            traps=traps,
            seed=seed,
        )
        write_meld_csv(base / f"{split}_sent_emo.csv", rows, old_encoding=old_encoding)
        if clips:
            clip_dir = (root / split if layout == "kaggle" else base) / MELD_CLIP_DIRS[split]
            _write_meld_clips(
                clip_dir,
                split,
                rows,
                traps=traps,
                tone_for_label=tone_for_label,
                duration=duration,
                size=size,
                seed=seed,
            )
    return root


def _clip_signal(label: str, index: int, tone_for_label: bool) -> tuple[float, tuple[float, float]]:
    if tone_for_label:
        return LABEL_TONE_HZ[label], LABEL_FACE_POS[label]
    return 200.0 + 40.0 * (index % 7), (0.5, 0.5)


def _write_meld_clips(
    clip_dir: Path,
    split: str,
    rows: Sequence[dict],
    *,
    traps: bool,
    tone_for_label: bool,
    duration: float,
    size: tuple[int, int],
    seed: int,
) -> None:
    clip_dir.mkdir(parents=True, exist_ok=True)
    last = rows[-1]
    for i, r in enumerate(rows):
        name = f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4"
        first_dia = r["Dialogue_ID"] == rows[0]["Dialogue_ID"]
        if traps and split == "train" and r is last:
            continue  # missing clip
        if traps and split == "train" and first_dia and r["Utterance_ID"] == "1":
            (clip_dir / name).write_bytes(b"")  # zero-byte "corrupt" clip
            continue
        hz, pos = _clip_signal(r["Emotion"], i, tone_for_label)
        channels = 6 if (traps and split == "dev" and i == 0) else 2
        if traps and split == "test" and i == 0:
            write_clip(
                clip_dir / name, duration=duration, size=size, tone_hz=880.0, face_pos=pos, seed=seed + i
            )
            name = "final_videos_test" + name
        write_clip(
            clip_dir / name,
            duration=duration,
            size=size,
            tone_hz=hz,
            face_pos=pos,
            audio_channels=channels,
            seed=seed + i,
        )
    if traps:
        d0 = rows[0]["Dialogue_ID"]
        if split == "train":
            (clip_dir / f"._dia{d0}_utt0.mp4").write_bytes(b"\x00\x05\x16\x07junk")
        elif split == "dev":
            write_clip(clip_dir / f"dia{d0}_utt2.mp4", duration=duration, size=size, seed=seed)
        elif split == "test":
            write_clip(clip_dir / "final_videos_testdia99_utt0.mp4", duration=duration, size=size, seed=seed)


# --- IEMOCAP ----------------------------------------------------------------------------------------

#: Consensus codes cycled by the IEMOCAP generator (6-class ERC codes plus xxx and sur).
IEMOCAP_CODES = ("neu", "fru", "ang", "sad", "hap", "exc", "xxx", "sur")
_IEMOCAP_WORDS = {
    "neu": "Neutral",
    "fru": "Frustration",
    "ang": "Anger",
    "sad": "Sadness",
    "hap": "Happiness",
    "exc": "Excited",
    "xxx": "Other",
    "sur": "Surprise",
}
_IEMOCAP_TEXTS = (
    "Excuse me.",
    "Do you have your forms?",
    "Yeah. [LAUGHTER]",
    "I don't know.",
    "Okay, so what [BREATHING] do you want?",
    "That's not fair!",
)


def iemocap_dialog_names(session: int, count: int) -> list[str]:
    """Dialog names for a session: alternating F/M markers, impro/script, e.g. ``Ses01M_script01_1``."""
    names = []
    for j in range(count):
        letter = "F" if j % 2 == 0 else "M"
        kind = "impro" if (j // 2) % 2 == 0 else "script"
        num = j // 4 + 1
        suffix = "_1" if kind == "script" else ""
        names.append(f"Ses{session:02d}{letter}_{kind}{num:02d}{suffix}")
    return names


def iemocap_dialog_turns(dialog: str, n_utts: int, *, seed: int, offset: int) -> list[dict]:
    """The turns of one synthetic dialog in temporal order.

    Speakers alternate F, M, F, M ... (ids ``<dialog>_F000``, ``<dialog>_M000``, ``<dialog>_F001`` ...);
    each turn lasts 1.0 s with 0.5 s between turns, starting at 1.5 s; codes cycle through
    :data:`IEMOCAP_CODES` from ``offset + seed``.
    """
    turns, counts = [], {"F": 0, "M": 0}
    t = 1.5
    for i in range(n_utts):
        letter = "F" if i % 2 == 0 else "M"
        utt = f"{dialog}_{letter}{counts[letter]:03d}"
        counts[letter] += 1
        code = IEMOCAP_CODES[(offset + seed + i) % len(IEMOCAP_CODES)]
        turns.append(
            {
                "utt_id": utt,
                "start": round(t, 4),
                "end": round(t + 1.0, 4),
                "label": code,
                "text": _IEMOCAP_TEXTS[(offset + i) % len(_IEMOCAP_TEXTS)],
                "letter": letter,
            }
        )
        t += 1.5
    return turns


def _emo_block(turn: dict) -> str:
    word = _IEMOCAP_WORDS[turn["label"]]
    summary = (
        f"[{turn['start']:.4f} - {turn['end']:.4f}]\t{turn['utt_id']}\t{turn['label']}\t"
        "[2.5000, 3.0000, 2.5000]"
    )
    lines = [
        summary,
        f"C-E2:\t{word};\t()",
        f"C-E3:\t{word}; Neutral;\t()",
        f"C-{turn['letter']}1:\t{word};\t(self)",
        "A-E3:\tval 3; act 2; dom  2;\t()",
        "A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated)",
    ]
    return "\n".join(lines)


def write_emo_evaluation(path: Path, turns: Sequence[dict]) -> Path:
    """EmoEvaluation/<dialog>.txt: header, blank line, TAB blocks; **F turns first, then M**.

    The block order differs from temporal order on purpose: dialog order must come from the
    transcription file.
    """
    ordered = [t for t in turns if t["letter"] == "F"] + [t for t in turns if t["letter"] == "M"]
    text = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
    text += "\n\n".join(_emo_block(t) for t in ordered) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_transcription(path: Path, dialog: str, turns: Sequence[dict]) -> Path:
    """transcriptions/<dialog>.txt in temporal order, with an extra unlabelled ``_MXX0`` line."""
    lines = []
    for i, t in enumerate(turns):
        lines.append(f"{t['utt_id']} [{t['start']:08.4f}-{t['end']:08.4f}]: {t['text']}")
        if i == 0:
            lines.append(f"{dialog}_MXX0 [{t['end']:08.4f}-{t['end'] + 0.2:08.4f}]: Mm-hmm.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_iemocap_tree(
    root: str | Path,
    *,
    sessions: Sequence[int] = (1, 5),
    dialogs_per_session: int = 2,
    utterances_per_dialog: int = 4,
    video: bool = True,
    wavs: bool = True,
    nested: bool = False,
    junk: bool = True,
    tone_for_label: bool = False,
    video_size: tuple[int, int] = (720, 480),
    fps: float = 30.0,
    seed: int = 0,
) -> Path:
    """Build a miniature ``IEMOCAP_full_release`` tree in the real format; return the ``--root`` folder.

    Per session ``N`` in ``sessions`` and dialog (names from :func:`iemocap_dialog_names`, turns from
    :func:`iemocap_dialog_turns`, offset = running dialog index * utterances_per_dialog):

    * ``SessionN/dialog/EmoEvaluation/<dialog>.txt`` (:func:`write_emo_evaluation`: blocks F-first,
      one ``xxx`` whenever the code cycle reaches it, TAB separators, ``dom  N;``);
    * ``SessionN/dialog/EmoEvaluation/Categorical/<dialog>_e2_cat.txt`` (must be ignored);
    * ``SessionN/dialog/transcriptions/<dialog>.txt`` (:func:`write_transcription`: a ``[LAUGHTER]``
      tag, an ``_MXX0`` line);
    * ``SessionN/sentences/wav/<dialog>/<utt>.wav`` (16 kHz mono int16, 1 s; pitch per label with
      ``tone_for_label``) when ``wavs``;
    * ``SessionN/dialog/avi/DivX/<dialog>.avi`` (``video_size`` at ``fps``, red left half, blue right
      half, a face in each) when ``video``;
    * with ``junk``: ``._<dialog>.txt`` AppleDouble files next to EmoEvaluation and transcription
      files and a ``._<utt>.wav`` beside the first wav; ``._IEMOCAP_full_release`` next to the root.

    Parameters
    ----------
    nested : bool
        Put the corpus at ``IEMOCAP_full_release/IEMOCAP_full_release`` (seen in some copies).

    Returns
    -------
    Path
        ``root/IEMOCAP_full_release`` (the outer one when ``nested``).
    """
    root = Path(root)
    top = root / "IEMOCAP_full_release"
    base = top / "IEMOCAP_full_release" if nested else top
    base.mkdir(parents=True, exist_ok=True)
    (base / "README.txt").write_text("IEMOCAP (synthetic miniature for tests)\n", encoding="utf-8")
    if junk:
        (root / "._IEMOCAP_full_release").write_bytes(b"\x00\x05\x16\x07junk")
    offset = 0
    for session in sessions:
        sdir = base / f"Session{session}"
        for dialog in iemocap_dialog_names(session, dialogs_per_session):
            turns = iemocap_dialog_turns(dialog, utterances_per_dialog, seed=seed, offset=offset)
            offset += utterances_per_dialog
            _write_iemocap_dialog(
                sdir,
                dialog,
                turns,
                video=video,
                wavs=wavs,
                junk=junk,
                tone_for_label=tone_for_label,
                video_size=video_size,
                fps=fps,
                seed=seed,
            )
    return top


def _write_iemocap_dialog(
    sdir: Path,
    dialog: str,
    turns: Sequence[dict],
    *,
    video: bool,
    wavs: bool,
    junk: bool,
    tone_for_label: bool,
    video_size: tuple[int, int],
    fps: float,
    seed: int,
) -> None:
    emo = write_emo_evaluation(sdir / "dialog" / "EmoEvaluation" / f"{dialog}.txt", turns)
    cat = sdir / "dialog" / "EmoEvaluation" / "Categorical" / f"{dialog}_e2_cat.txt"
    cat.parent.mkdir(parents=True, exist_ok=True)
    cat.write_text("".join(f"{t['utt_id']} :Other;\n" for t in turns), encoding="utf-8")
    trn = write_transcription(sdir / "dialog" / "transcriptions" / f"{dialog}.txt", dialog, turns)
    if junk:
        for p in (emo, trn):
            p.with_name("._" + p.name).write_bytes(b"\x00\x05\x16\x07\x00\x02junk")
    if wavs:
        for i, t in enumerate(turns):
            hz = LABEL_TONE_HZ[t["label"]] if tone_for_label else 200.0 + 40.0 * (i % 7)
            wav = write_wav(
                sdir / "sentences" / "wav" / dialog / f"{t['utt_id']}.wav",
                duration=t["end"] - t["start"],
                tone_hz=hz,
                seed=seed + i,
            )
            if junk and i == 0:
                wav.with_name("._" + wav.name).write_bytes(b"\x00\x05\x16\x07junk")
    if video:
        write_split_screen_video(
            sdir / "dialog" / "avi" / "DivX" / f"{dialog}.avi",
            duration=turns[-1]["end"] + 0.5,
            fps=fps,
            size=video_size,
        )
