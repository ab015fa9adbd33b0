"""Visual modality: faces (MTCNN) and scene frames per utterance, and the weighted face embedding.

docs/DESIGN.md section 2.3 (visual): per frame, MTCNN finds the faces; each face crop goes through the face
encoder; the per-face embeddings are summed with weights ``w_i = area_i / sum_j area_j`` (they sum to 1
within a frame); the result is max-pooled over the frames that have a face
(:func:`weighted_face_embedding`): a faceless frame is left out, since a zero vector there would clamp
every negative component to 0. Scene frames are whole frames resized to a square.

Face crops (:func:`crop_faces`): the detected box is made square around its centre, enlarged by
``margin`` (a fraction of the box side on each side, 0.2 by default), cut from the *full resolution*
frame (parts outside the frame are black) and resized to ``size`` with ``cv2.INTER_AREA`` (or
``INTER_LINEAR`` when enlarging). No landmark rotation is applied ("aligned" = box-centred crop).

Detection (:class:`FaceDetector`) runs on a copy of the frames shrunk so that the longer side is at
most ``detect_max_side`` pixels (MELD frames are large and MTCNN's cost grows with the pixel count);
boxes are scaled back to full-resolution coordinates.

Speed (CPU): facenet-pytorch's max-pooling runs much faster on channels-last tensors than on NCHW
ones, so on CPU the three MTCNN networks are converted to channels-last (same boxes; max is exact;
bench/RESULTS.md, "Per-clip CPU cost of media + embed").
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
import torch

#: Fraction of the (square) box side added on each side of a face crop.
FACE_MARGIN = 0.2
#: Ratio between MTCNN's pyramid scales (MediaConfig.mtcnn_factor); facenet-pytorch's default is 0.709.
MTCNN_FACTOR = 0.5


# ------------------------------------------------------------------------------------------ detection
class FindsFaces(Protocol):
    """What media processing asks of a detector: :meth:`FaceDetector.detect` (a timing wrapper has it too)."""

    def detect(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]: ...


class FaceDetector:
    """MTCNN (facenet-pytorch) with ``keep_all=True``, loaded once and reused for many clips.

    Parameters
    ----------
    cfg : MediaConfig-like
        Reads ``mtcnn_batch`` (frames per MTCNN call), ``detect_max_side`` (frames are shrunk so
        their longer side is at most this before detection; 0 = never shrink), ``min_face_size``
        (MTCNN's smallest face in pixels of the detection frame; default 20 when absent) and
        ``mtcnn_factor`` (the ratio between pyramid scales; :data:`MTCNN_FACTOR` when absent).
    device : str
        ``"cpu"`` or ``"cuda"``.

    Examples
    --------
    >>> from pipeline.utterance.process import MediaConfig
    >>> det = FaceDetector(MediaConfig())
    >>> frames = np.zeros((2, 120, 160, 3), np.uint8)  # (N, H, W, 3) uint8 RGB
    >>> boxes, probs = det.detect(frames)[0]            # a black frame holds no face
    >>> len(boxes)
    0
    """

    def __init__(self, cfg, device: str = "cpu"):
        from facenet_pytorch import MTCNN  # heavy import, only where faces are wanted

        self.batch = max(1, int(cfg.mtcnn_batch))
        self.max_side = int(getattr(cfg, "detect_max_side", 0) or 0)
        self.device = device
        self.mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,
            device=torch.device(device),
            min_face_size=int(getattr(cfg, "min_face_size", 20)),
            factor=float(getattr(cfg, "mtcnn_factor", MTCNN_FACTOR)),
        )
        if device == "cpu":  # channels-last max-pooling is faster on CPU, and exact
            for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
                net.to(memory_format=torch.channels_last)

    def detect(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Faces in each frame, best probability first.

        Parameters
        ----------
        frames : ndarray, shape (N, H, W, 3), uint8
            RGB frames of equal size.

        Returns
        -------
        list of (boxes, probs)
            Per frame: ``boxes`` (k, 4) float32 ``x1, y1, x2, y2`` in the frames' pixel coordinates
            and ``probs`` (k,) float32; ``k = 0`` where no face was found.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        if len(frames) == 0:
            return []
        small, scale = _shrink(frames, self.max_side)
        planar = self._planar(small) if self.device == "cpu" else small
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(0, len(small), self.batch):
            boxes, probs = self.mtcnn.detect(planar[i : i + self.batch])
            out += [_as_arrays(b, p, scale) for b, p in zip(boxes, probs, strict=True)]
        return out

    def _planar(self, small: np.ndarray) -> torch.Tensor:
        """``small`` as an (N, H, W, 3) float32 view of planar (N, 3, H, W) memory, in a reused buffer.

        facenet-pytorch permutes its input back to planar and converts it to float: on this view the
        permute gives contiguous memory, where its pyramid's area resizes (adaptive average pooling)
        run ~1.5x faster than on the interleaved layout, and the conversion is a no-op; the buffer
        spares the page faults of a fresh 40 MB tensor per clip. The boxes are bit-identical.
        """
        n, h, w, _ = small.shape
        buf = getattr(self, "_buffer", None)
        if buf is None or buf.shape[0] < n or tuple(buf.shape[1:]) != (3, h, w):
            buf = self._buffer = torch.empty((n, 3, h, w), dtype=torch.float32)
        planar = buf[:n]
        planar.copy_(torch.from_numpy(small).permute(0, 3, 1, 2))
        return planar.permute(0, 2, 3, 1)


def _shrink(frames: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Frames resized so the longer side is <= ``max_side``; returns (frames, full/small scale)."""
    h, w = frames.shape[1:3]
    if max_side <= 0 or max(h, w) <= max_side:
        return frames, 1.0
    scale = max(h, w) / max_side
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    return small, w / size[0]


def _as_arrays(boxes, probs, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's per-frame object arrays (or None) -> float32 (k, 4), (k,), boxes scaled by ``scale``."""
    if boxes is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    b = np.asarray(boxes).astype(np.float32).reshape(-1, 4) * np.float32(scale)
    p = np.asarray(probs).astype(np.float32).reshape(-1)
    return b, p


# ------------------------------------------------------------------------------------ selection, crops
def select_faces(boxes: np.ndarray, probs: np.ndarray, min_prob: float, max_faces: int) -> np.ndarray:
    """Indices of the faces kept: probability >= ``min_prob`` and non-empty box, best ``max_faces``."""
    areas = box_areas(boxes)
    ok = np.flatnonzero((probs >= min_prob) & (areas > 0))
    order = ok[np.argsort(-probs[ok], kind="stable")]
    return order[:max_faces]


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``x1, y1, x2, y2`` boxes ``(k, 4)`` (0 for degenerate boxes)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def area_weights(boxes: np.ndarray) -> np.ndarray:
    """``area_i / sum_j area_j`` for the boxes of one frame (sums to 1; empty for no box)."""
    areas = box_areas(boxes)
    total = areas.sum()
    if len(areas) == 0 or total <= 0:
        return np.zeros(len(areas), np.float32)
    return (areas / total).astype(np.float32)


def crop_faces(frame: np.ndarray, boxes: np.ndarray, size: int, margin: float = FACE_MARGIN) -> np.ndarray:
    """Square crops around ``boxes`` from an (H, W, 3) frame -> (k, 3, size, size) uint8 (CHW).

    The square's side is ``max(w, h) * (1 + 2 * margin)``, centred on the box; pixels outside the
    frame are black.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.zeros((len(boxes), 3, size, size), np.uint8)
    h, w = frame.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = max(1, int(round(side)))
        patch = np.zeros((s, s, 3), np.uint8)
        sx0, sy0 = max(0, left), max(0, top)
        sx1, sy1 = min(w, left + s), min(h, top + s)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = frame[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(patch, (size, size), interpolation=interp).transpose(2, 0, 1)
    return out


def resize_scenes(frames: np.ndarray, size: int, halving: bool = False) -> np.ndarray:
    """Whole frames (f, H, W, 3) -> (f, 3, size, size) uint8 (``cv2.INTER_AREA``; aspect not kept).

    ``halving``: a frame with even sides both at least ``4 * size`` is first halved (``INTER_AREA`` at
    exactly 1/2: the rounded mean of each 2x2 block), so the general area resize reads a quarter of
    the pixels. Not the same operator: the rounding of the half frame, and the pixels cut by a bin
    edge weigh by half-pixel fractions; on a 720p face frame at most 1 grey level apart (mean 0.02),
    on pixel noise up to 4 (mean 0.7).
    """
    out = np.zeros((len(frames), 3, size, size), np.uint8)
    for i, f in enumerate(frames):
        h, w = f.shape[:2]
        if halving and h % 2 == 0 and w % 2 == 0 and min(h, w) >= 4 * size:
            f = cv2.resize(f, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        interp = cv2.INTER_AREA if min(f.shape[:2]) >= size else cv2.INTER_LINEAR
        out[i] = cv2.resize(f, (size, size), interpolation=interp).transpose(2, 0, 1)
    return out


def crop_side(frames: np.ndarray, side: str | None) -> np.ndarray:
    """IEMOCAP: the speaker's half of each frame (``"left"`` = ``[:, :W//2]``); None = unchanged."""
    if side is None:
        return frames
    half = frames.shape[2] // 2
    if side == "left":
        return np.ascontiguousarray(frames[:, :, :half])
    if side == "right":
        return np.ascontiguousarray(frames[:, :, half:])
    raise ValueError(f"side must be 'left', 'right' or None, got {side!r}")


# ------------------------------------------------------------------------------------------ embedding
def weighted_face_embedding(
    face_emb: np.ndarray | torch.Tensor, face_frame, face_weight, n_frames: int
) -> np.ndarray | torch.Tensor:
    """Per-face embeddings -> one face vector for the utterance (M2FNet's weighted face branch).

    Parameters
    ----------
    face_emb : ndarray or Tensor, shape (k, D)
        Embedding of each face.
    face_frame : array-like of int, shape (k,)
        Index of the frame each face comes from, in ``[0, n_frames)``.
    face_weight : array-like of float, shape (k,)
        Area weight of each face (sums to 1 within a frame).
    n_frames : int
        Number of frames of the utterance (bounds ``face_frame``).

    Returns
    -------
    ndarray or Tensor, shape (D,)
        ``max over frames f with a face of sum_{i in f} w_i * e_i``; frames without a face take no
        part; zeros for ``k = 0``. Same type (and device) as ``face_emb``.

    Examples
    --------
    >>> weighted_face_embedding(np.array([[-1., 0.], [0., -1.]]), [0, 0], [0.75, 0.25], 2)
    array([-0.75, -0.25])
    """
    is_np = not isinstance(face_emb, torch.Tensor)
    emb = face_emb if isinstance(face_emb, torch.Tensor) else torch.as_tensor(np.asarray(face_emb))
    if emb.ndim != 2:
        raise ValueError(f"face_emb must be (k, D), got shape {tuple(emb.shape)}")
    k, d = emb.shape
    frame = torch.as_tensor(np.asarray(face_frame, dtype=np.int64), device=emb.device).reshape(-1)
    weight = torch.as_tensor(np.asarray(face_weight), device=emb.device).reshape(-1).to(emb.dtype)
    if len(frame) != k or len(weight) != k:
        raise ValueError(f"{k} embeddings but {len(frame)} frame indices and {len(weight)} weights")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if k and (int(frame.min()) < 0 or int(frame.max()) >= n_frames):
        raise ValueError(f"face_frame must be in [0, {n_frames}), got {frame.min()}..{frame.max()}")
    if k == 0:
        out = torch.zeros(d, dtype=emb.dtype, device=emb.device)
        return out.numpy() if is_np else out
    per_frame = torch.zeros((n_frames, d), dtype=emb.dtype, device=emb.device)
    per_frame.index_add_(0, frame, emb * weight[:, None])
    with_face = torch.zeros(n_frames, dtype=torch.bool, device=emb.device)
    with_face[frame] = True
    out = per_frame[with_face].max(dim=0).values
    return out.numpy() if is_np else out
