"""The media stage for ONE utterance: decode once, keep what the encoders need.

:func:`process_utterance` turns an :class:`~pipeline.manifest.Utterance` into a row of arrays (the
16 kHz mono waveform, the scene frames, the face crops with their frame index, area weight, MTCNN
probability and box, and the ``has_*`` flags) plus a list of human-readable problems. The engine
(``pipeline.extract``) calls it inside dask workers, with one :class:`FaceDetector` per worker, and the
driver writes the rows to ``media.h5`` (ragged fields: :data:`MEDIA_RAGGED`). The embed stage reads
them back, so the encoders can be trained and rerun without decoding again.

Where the media come from
-------------------------
* MELD (and any corpus whose clip is the utterance itself): the whole clip; the CSV times are
  episode times and are ignored here.
* IEMOCAP and custom corpora with ``start``/``end``: that span of the (longer) video. IEMOCAP frames are
  cropped to the speaker's half (``utt.side``) before faces and scenes; its audio comes from
  ``utt.audio`` (the utterance's own wav), when given, instead of the video.

Faults never raise: each becomes a problem string naming the file and what happens, and the row is
still returned with the matching flags (``has_audio``/``has_visual``/``has_face`` False and empty
arrays). Beyond the faults below, any exception inside a stage (audio, video, faces) is caught and
reported the same way, marking that stage's modality missing (a video failure loses the faces too);
an exception outside the stages gives the empty row. Only ``BaseException`` outside ``Exception``
(Ctrl-C, exit) goes through. The decisions:

=====================================  ==========================================================
missing / zero-byte / unreadable clip  has_audio = has_visual = False; "missing file: ..." etc.
no audio stream / no video stream      that modality False, the other one kept
truncated data mid-stream              what decoded before the break is kept (flag True if any)
truncated file that still opens        the data that is there is used; "truncated clip ..."
silent audio (peak < -60 dBFS)         has_audio = False, waveform empty ("silent audio: ...")
audio shorter than 25 ms               has_audio = False ("... shorter than one 25 ms analysis frame")
NaN / inf / absurd sample (> 1000)     has_audio = False ("... non-finite or out-of-range audio ...")
audio longer than ``max_seconds``      centre ``max_seconds`` kept, audio_cut = True (+ a problem)
fewer than ``n_frames`` frames         every distinct frame kept (f < n_frames) ("short clip: ...")
zero-length span (start == end)        one frame at ``start``; audio from the span is empty
span past the end of the media         that modality False ("... past the end ...")
no face in any frame                   has_face = False ("no face ...")
frames too small for MTCNN             has_face = False ("... too small to find a face ...")
frames over ``max_frame_pixels``       scaled down (aspect kept); sizes changing mid-stream: fitted
                                       into the first frame's size, centred on black
display rotation (phone video)         frames turned upright before scenes and faces
timestamps not starting at 0           times count from the file's first timestamp
error inside a stage (a bug, OOM ...)  that modality False ("<stage> failed on <file>: <error> ...")
5.1 / stereo / mono audio              not a fault: centre channel / mean / as is
=====================================  ==========================================================

Frames per utterance: ``len(row["scenes"])`` (<= ``n_frames``); pass it, not ``n_frames``, as
``n_frames`` to :func:`~pipeline.utterance.visual.weighted_face_embedding`, so a short clip is not
padded with empty (zero) frames.

Examples
--------
>>> from pipeline.corpora.sample import prepare_sample
>>> utt = prepare_sample()[0]                      # a 1.5 s clip of the bundled sample corpus
>>> cfg = MediaConfig(n_frames=2)
>>> detector = FaceDetector(cfg)                  # once per process
>>> row, problems = process_utterance(utt, cfg, detector)
>>> bool(row["has_audio"]), bool(row["has_visual"]), row["scenes"].shape
(True, True, (2, 3, 64, 64))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.decode.container import MediaError, TruncatedMedia, probe
from pipeline.decode.frames import MAX_FRAME_PIXELS, decode_frames
from pipeline.decode.waveform import decode_audio
from pipeline.manifest import Utterance
from pipeline.utterance.audio import RESAMPLER, SILENCE_PEAK, is_silent
from pipeline.utterance.visual import (
    FACE_MARGIN,
    MTCNN_FACTOR,
    FaceDetector,
    FindsFaces,
    area_weights,
    crop_faces,
    crop_side,
    resize_scenes,
    select_faces,
)

__all__ = [
    "MEDIA_FIELDS_BEFORE",
    "MEDIA_FLAGS",
    "MEDIA_RAGGED",
    "FaceDetector",
    "MediaConfig",
    "empty_row",
    "process_utterance",
    "stored_bytes",
]

#: Row fields with a per-utterance length (stored as data + offsets).
MEDIA_RAGGED = ("waveform", "scenes", "faces", "face_frame", "face_weight", "face_prob", "face_box")
#: Boolean row fields.
MEDIA_FLAGS = ("has_audio", "audio_cut", "has_visual", "has_face")
#: Audio shorter than one log-mel analysis frame (400 samples at 16 kHz) carries no spectrum to embed.
MIN_AUDIO_SECONDS = 0.025

logger = logging.getLogger(__name__)

#: Corpora whose clip is the utterance itself: their start/end are not positions inside the clip.
WHOLE_CLIP_CORPORA = ("meld", "sample")  # sample is MELD-layout: its CSV times are episode times


#: Fields added to :class:`MediaConfig` with the cheaper media stage, and the behaviour before them: a
#: recorded config (a model folder's) that lacks them was made that way (:meth:`MediaConfig.recorded`).
MEDIA_FIELDS_BEFORE = {"mtcnn_factor": 0.709, "decode_skip_nonref": False, "scene_halving": False}


@dataclass(frozen=True)
class MediaConfig:
    """Settings of the media stage; all of them go into the cache config (and its hash).

    Parameters
    ----------
    n_frames : int
        Frames spread uniformly over the utterance (the paper's 15).
    face_size, scene_size : int
        Side in pixels of the stored face crops and scene frames (square, uint8 RGB). Defaults 80
        and 64 keep MELD's media cache within 15 GB (see :func:`stored_bytes`); the encoders' input
        contract must use the same sizes.
    max_faces : int
        Faces kept per frame, best MTCNN probability first.
    min_face_prob : float
        Faces below this MTCNN probability are dropped.
    sample_rate : int
        Waveform rate (Hz).
    max_seconds : float
        Longest audio window; longer utterances keep their centre and set ``audio_cut``.
    mtcnn_batch : int
        Frames per MTCNN call.
    detect_max_side : int
        Frames are shrunk to at most this longer side for detection only (0 = never); crops are
        cut from the full-resolution frame.
    min_face_size : int
        MTCNN's smallest face, in pixels of the (shrunk) detection frame: 40 px at 640 wide is a face
        of 80 px in a 1280-wide frame. Smaller faces (background extras) are not searched; halving
        it roughly triples MTCNN's time.
    face_margin : float
        Fraction of the square face box added on each side of the crop.
    silence_peak : float
        Audio whose peak amplitude is below this (full scale 1.0) is "silent" (has_audio False).
    resampler : str
        The audio resampler (:data:`pipeline.utterance.audio.RESAMPLER`, the only value accepted).
        Recorded so that a media cache made by another resampler has another cache key.
    max_frame_pixels : int
        Decoded frames are scaled down at decode time, aspect kept, to at most this many pixels
        (default 1280x720 = 921,600): the frames of one utterance take at most
        ``n_frames * 3 * max_frame_pixels`` bytes (41 MB) whatever the input (a 16k x 16k stream
        included); face boxes and crops are in these frames' pixels.
    mtcnn_factor : float
        Ratio between MTCNN's pyramid scales (facenet-pytorch's ``factor``; its default 0.709 puts
        two scales per octave, 0.5 one). Smaller = fewer scales, a cheaper search and boxes that move
        by a few pixels (bench/RESULTS.md, "Per-clip cost halved").
    decode_skip_nonref : bool
        Decode without the frames no other frame refers to (most B-frames) and take the nearest
        decoded frame to each target, within one frame time
        (:func:`pipeline.decode.frames.decode_frames` ``skip_nonref``; else a full decode).
    scene_halving : bool
        Halve the frame (2x2 pixel means) before the area resize of a scene frame whenever it is at
        least 4x the scene size: a quarter of the work, scenes within 1 grey level on a 720p face
        frame (:func:`~pipeline.utterance.visual.resize_scenes`).
    """

    n_frames: int = 15
    face_size: int = 80
    scene_size: int = 64
    max_faces: int = 4
    min_face_prob: float = 0.90
    sample_rate: int = 16000
    max_seconds: float = 10.0
    mtcnn_batch: int = 15
    detect_max_side: int = 640
    min_face_size: int = 40
    face_margin: float = FACE_MARGIN
    silence_peak: float = SILENCE_PEAK
    resampler: str = RESAMPLER
    max_frame_pixels: int = MAX_FRAME_PIXELS
    mtcnn_factor: float = MTCNN_FACTOR
    decode_skip_nonref: bool = True
    scene_halving: bool = True

    def __post_init__(self) -> None:
        if self.resampler != RESAMPLER:
            raise ValueError(
                f"media config resampler {self.resampler!r}: this m2f resamples audio with {RESAMPLER!r} only"
            )

    def to_dict(self) -> dict:
        """Plain dict of every setting (JSON-able), for the cache config."""
        return dataclasses.asdict(self)

    @classmethod
    def recorded(cls, d: dict | None) -> MediaConfig:
        """The settings a recorded config ``d`` was made with (None: the defaults).

        Fields ``d`` predates take their values from before they existed
        (:data:`MEDIA_FIELDS_BEFORE`), so a model trained on older features is fed the same media.

        >>> MediaConfig.recorded({"n_frames": 15}).mtcnn_factor
        0.709
        """
        return cls(**{**MEDIA_FIELDS_BEFORE, **d}) if d else cls()


def stored_bytes(cfg: MediaConfig, seconds: float = 3.13, faces_per_frame: float = 2.0) -> int:
    """Uncompressed bytes of one media row (arrays only; offsets and flags add < 100 bytes).

    Parameters
    ----------
    cfg : MediaConfig
    seconds : float
        Audio length (capped at ``cfg.max_seconds``); MELD's mean utterance is 3.13 s.
    faces_per_frame : float
        Average kept faces per frame (at most ``cfg.max_faces``).

    Notes
    -----
    lzf gains little on frames and crops and nothing on float32 audio, so the stored size is close to
    the raw one. The default sizes keep MELD's media.h5 within 15 GB; 112 px crops and frames would
    not (figures: bench/RESULTS.md, "Media cache size").
    """
    n_audio = int(min(seconds, cfg.max_seconds) * cfg.sample_rate) * 4
    n_scene = cfg.n_frames * 3 * cfg.scene_size**2
    k = cfg.n_frames * min(faces_per_frame, cfg.max_faces)
    n_faces = int(k * (3 * cfg.face_size**2 + 2 + 4 + 4 + 16))
    return n_audio + n_scene + n_faces


def empty_row(utt: Utterance, cfg: MediaConfig) -> dict:
    """A row with every modality missing (flags False, empty arrays of the right shapes and dtypes)."""
    s, f = cfg.scene_size, cfg.face_size
    return {
        "utt_id": utt.id,
        "label": utt.label or "",
        "waveform": np.zeros(0, np.float32),
        "has_audio": False,
        "audio_cut": False,
        "scenes": np.zeros((0, 3, s, s), np.uint8),
        "has_visual": False,
        "faces": np.zeros((0, 3, f, f), np.uint8),
        "face_frame": np.zeros(0, np.int16),
        "face_weight": np.zeros(0, np.float32),
        "face_prob": np.zeros(0, np.float32),
        "face_box": np.zeros((0, 4), np.float32),
        "has_face": False,
    }


def _span(utt: Utterance) -> tuple[float | None, float | None]:
    """The span inside ``utt.clip`` to decode: None, None (whole clip) for MELD-like corpora."""
    if utt.corpus in WHOLE_CLIP_CORPORA:
        return None, None
    return utt.start, utt.end


def process_utterance(
    utt: Utterance, cfg: MediaConfig, detector: FindsFaces | None, video: bool = True
) -> tuple[dict, list[str]]:
    """Decode one utterance's media once and return ``(row, problems)``.

    Parameters
    ----------
    utt : Utterance
        Uses ``clip``, ``audio`` (separate audio file, IEMOCAP), ``start``/``end`` (not for MELD),
        ``side`` (IEMOCAP half frame), ``id`` and ``label``.
    cfg : MediaConfig
    detector : FaceDetector or None
        None skips face detection (``has_face`` False, no problem reported for it).
    video : bool
        False skips the frames altogether (``has_visual`` False, no problem reported): for a model that
        reads audio and not video (``m2f live``), whose media row then costs the audio alone.

    Returns
    -------
    row : dict
        ``utt_id`` str, ``label`` str ("" if None), ``waveform`` float32 (n,), ``has_audio``,
        ``audio_cut``, ``scenes`` uint8 (f, 3, S, S), ``has_visual``, ``faces`` uint8 (k, 3, F, F),
        ``face_frame`` int16 (k,), ``face_weight`` float32 (k,) (sums to 1 per frame),
        ``face_prob`` float32 (k,), ``face_box`` float32 (k, 4) (full-frame pixels, after the IEMOCAP
        half crop), ``has_face``.
    problems : list of str
        One line per fault, naming the file and what was done about it. Empty when all is well.

    Notes
    -----
    Never raises (see the module table): an exception in a stage marks its modality missing with a
    problem line, so one bad clip cannot cost the rest of its partition.
    """
    try:
        return _process(utt, cfg, detector, video)
    except Exception as e:  # isolation: one utterance's failure never ends the partition
        logger.debug("media stage failed on %s", utt.clip, exc_info=True)
        return empty_row(utt, cfg), [
            f"processing failed on {utt.clip}: {_one_line(e)} "
            f"(utterance kept, audio/visual marked missing; {_REPORT})"
        ]


#: What to do about an unexpected error: it is not a known fault of the file.
_REPORT = "if the file plays in a media player, please report this with the file"


def _process(
    utt: Utterance, cfg: MediaConfig, detector: FindsFaces | None, video: bool = True
) -> tuple[dict, list[str]]:
    row = empty_row(utt, cfg)
    problems: list[str] = []
    start, end = _span(utt)
    clip = utt.clip if _check_clip(utt, problems) else None  # None: no clip, or one that does not open
    if clip is not None and start is not None and start == end:
        problems.append(
            f"zero-length span [{start}, {end}] in {utt.clip}: kept the one frame at {start} s"
            + ("" if utt.audio else ", no audio")
            + " (check the corpus times)"
        )
    audio_path = utt.audio if utt.audio is not None else clip
    if audio_path is not None:  # a separate per-utterance file (IEMOCAP wav) is used whole
        audio_span = (None, None) if utt.audio is not None else (start, end)
        _guarded(
            "audio decoding",
            audio_path,
            "audio marked missing",
            problems,
            lambda: _fill_audio(row, problems, audio_path, *audio_span, cfg),
        )
    frames = None
    if clip is not None and video:
        frames = _guarded(
            "video decoding",
            clip,
            "visual marked missing",
            problems,
            lambda: _fill_video(row, problems, utt, clip, cfg, start, end),
        )
    if frames is not None and detector is not None:
        _guarded(
            "face detection",
            utt.clip,
            "has_face False",
            problems,
            lambda: _fill_faces(row, problems, utt, cfg, frames, detector),
        )
    return row, problems


def _guarded(stage: str, path: str | None, lost: str, problems: list[str], fill: Callable[[], object]):
    """``fill()``, or None and a problem line when it raises; ``fill`` updates the row only at its end."""
    try:
        return fill()
    except Exception as e:  # isolation: the other stages and utterances go on
        logger.debug("%s failed on %s", stage, path, exc_info=True)
        problems.append(f"{stage} failed on {path}: {_one_line(e)} ({lost}; {_REPORT})")
        return None


def _one_line(e: Exception) -> str:
    """``Type: message`` on one line (a problem is one line of problems.jsonl and of the log)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _check_clip(utt: Utterance, problems: list[str]) -> bool:
    """True when ``utt.clip`` can be opened; otherwise one problem for the whole clip."""
    lost = "visual" if utt.audio is not None else "audio/visual"
    if utt.clip is None:
        problems.append(f"no clip for this utterance (utterance kept, {lost} marked missing)")
        return False
    try:
        info = probe(utt.clip)
    except MediaError as e:
        problems.append(f"{e}; utterance kept, {lost} marked missing")
        return False
    if info.fps and info.n_video_frames and info.video_duration is not None:
        promised = info.n_video_frames / info.fps
        if info.video_duration < 0.9 * promised - 0.1:
            problems.append(
                f"truncated clip {utt.clip}: its header promises {promised:.2f} s of video but "
                f"the data ends at {info.video_duration:.2f} s (kept what decodes; re-extract)"
            )
    return True


def _fill_audio(
    row: dict, problems: list[str], path: str, start: float | None, end: float | None, cfg: MediaConfig
) -> None:
    try:
        wave, cut = decode_audio(path, start, end, sr=cfg.sample_rate, max_seconds=cfg.max_seconds)
    except TruncatedMedia as e:
        wave, cut = e.partial
        problems.append(f"{e} (kept the {len(wave) / cfg.sample_rate:.2f} s decoded before the break)")
    except MediaError as e:
        problems.append(f"{e}; audio marked missing")
        return
    if wave.size == 0:
        if not (start is not None and start == end):
            problems.append(f"empty audio in {path} (audio marked missing)")
        return
    if wave.size < MIN_AUDIO_SECONDS * cfg.sample_rate:
        problems.append(
            f"audio of {wave.size / cfg.sample_rate:.4f} s in {path} is shorter than one "
            f"{1000 * MIN_AUDIO_SECONDS:g} ms analysis frame (audio marked missing)"
        )
        return
    if is_silent(wave, cfg.silence_peak):
        problems.append(f"silent audio in {path}: peak below {cfg.silence_peak:g} (audio marked missing)")
        return
    if cut:
        problems.append(f"long audio in {path}: kept the centre {cfg.max_seconds:g} s (audio_cut set)")
    row.update(waveform=np.ascontiguousarray(wave, np.float32), has_audio=True, audio_cut=bool(cut))


def _fill_video(
    row: dict,
    problems: list[str],
    utt: Utterance,
    clip: str,
    cfg: MediaConfig,
    start: float | None,
    end: float | None,
) -> np.ndarray | None:
    try:
        frames = decode_frames(
            clip,
            cfg.n_frames,
            start,
            end,
            max_pixels=cfg.max_frame_pixels,
            skip_nonref=cfg.decode_skip_nonref,
        )
    except TruncatedMedia as e:
        frames = e.partial
        problems.append(f"{e} (kept the {len(frames)} frames decoded before the break)")
    except MediaError as e:
        problems.append(f"{e}; visual marked missing")
        return None
    if len(frames) < cfg.n_frames and not (start is not None and start == end):
        problems.append(
            f"short clip {utt.clip}: only {len(frames)} distinct frames in the span "
            f"(< {cfg.n_frames}; all kept)"
        )
    frames = crop_side(frames, utt.side)
    row.update(scenes=resize_scenes(frames, cfg.scene_size, cfg.scene_halving), has_visual=True)
    return frames


def _fill_faces(
    row: dict,
    problems: list[str],
    utt: Utterance,
    cfg: MediaConfig,
    frames: np.ndarray,
    detector: FindsFaces,
) -> None:
    h, w = frames.shape[1:3]
    shrink = max(1.0, max(h, w) / cfg.detect_max_side) if cfg.detect_max_side > 0 else 1.0
    if min(h, w) / shrink < cfg.min_face_size:  # MTCNN has no scale to search at (it would raise)
        problems.append(
            f"frames of {utt.clip} are {w}x{h}: too small to find a face of "
            f"{cfg.min_face_size} px (has_face False)"
        )
        return
    faces, frame_idx, weights, probs, boxes = [], [], [], [], []
    for i, (b, p) in enumerate(detector.detect(frames)):
        keep = select_faces(b, p, cfg.min_face_prob, cfg.max_faces)
        if len(keep) == 0:
            continue
        faces.append(crop_faces(frames[i], b[keep], cfg.face_size, cfg.face_margin))
        frame_idx.append(np.full(len(keep), i, np.int16))
        weights.append(area_weights(b[keep]))
        probs.append(p[keep])
        boxes.append(b[keep])
    if not faces:
        problems.append(f"no face in any of the {len(frames)} frames of {utt.clip} (has_face False)")
        return
    row.update(
        faces=np.concatenate(faces),
        face_frame=np.concatenate(frame_idx),
        face_weight=np.concatenate(weights).astype(np.float32),
        face_prob=np.concatenate(probs).astype(np.float32),
        face_box=np.concatenate(boxes).astype(np.float32),
        has_face=True,
    )
