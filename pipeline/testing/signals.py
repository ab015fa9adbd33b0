"""The pictures and sounds that generated clips are made of: the astronaut face, face frames, tones.

The face is the public-domain astronaut portrait from :func:`skimage.data.astronaut` (NASA, Eileen
Collins), cropped around the face; MTCNN finds it with p > 0.999. Everything is deterministic (skimage
resizing is single-threaded, noise comes from a seeded generator), so files encoded from these arrays
by :mod:`pipeline.testing.av_files` are byte-reproducible.

With ``tone_for_label=True`` the corpus generators make the label learnable from every modality: the
audio pitch is :data:`LABEL_TONE_HZ` [label] and the face sits at :data:`LABEL_FACE_POS` [label].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

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


@lru_cache(maxsize=1)
def astronaut_face() -> np.ndarray:
    """The face region of :func:`skimage.data.astronaut` (rows 0:220, cols 140:340), RGB uint8."""
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[0:220, 140:340])


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


def render_split_screen_frame(
    index: int,
    *,
    size: tuple[int, int],
    left_color: tuple[int, int, int],
    right_color: tuple[int, int, int],
    face: bool,
) -> np.ndarray:
    """One RGB frame of an IEMOCAP-like dialogue video: two halves of distinct colour, a face in each.

    Parameters
    ----------
    index : int
        Frame number; the two faces drift a few pixels towards and away from each other.
    size : (int, int)
        ``(width, height)`` in pixels.
    left_color, right_color : (int, int, int)
        RGB colour of the left and the right half.
    face : bool
        Paste a face in each half or leave both halves empty.
    """
    w, h = size
    half = w // 2
    frame = np.empty((h, w, 3), np.uint8)
    frame[:, :half] = left_color
    frame[:, half:] = right_color
    if face:
        patch = _scaled_face(int(0.45 * h))
        dx = 0.02 * half * np.cos(2 * np.pi * index / 30.0)
        _paste(frame, patch, 0.5 * half + dx, 0.45 * h)
        _paste(frame, patch, 1.5 * half - dx, 0.45 * h)
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
