"""One MTCNN face detector per process, shared by every test that needs real face detection.

Loading MTCNN (three networks and their weights) is the expensive part of a
:class:`~pipeline.utterance.visual.FaceDetector`; its batching and shrinking settings are plain
attributes. :func:`shared_face_detector` loads the networks once per ``min_face_size`` and
``mtcnn_factor`` and hands out detectors with the asked settings that share them (the networks are only
read).
"""

from __future__ import annotations

import copy
from functools import cache

from pipeline.utterance.process import FaceDetector, MediaConfig


@cache
def _loaded(min_face_size: int, factor: float) -> FaceDetector:
    return FaceDetector(MediaConfig(min_face_size=min_face_size, mtcnn_factor=factor))


def shared_face_detector(cfg: MediaConfig | None = None) -> FaceDetector:
    """A CPU :class:`FaceDetector` for ``cfg`` (default :class:`MediaConfig`) on the process's one MTCNN.

    Examples
    --------
    >>> det = shared_face_detector(MediaConfig(mtcnn_batch=2, detect_max_side=0))
    >>> (det.batch, det.max_side)
    (2, 0)
    >>> det.mtcnn is shared_face_detector().mtcnn
    True
    """
    cfg = cfg or MediaConfig()
    det = copy.copy(_loaded(int(cfg.min_face_size), float(cfg.mtcnn_factor)))
    det.batch = max(1, int(cfg.mtcnn_batch))
    det.max_side = int(cfg.detect_max_side or 0)
    return det
