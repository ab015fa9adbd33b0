"""The installed facenet-pytorch MTCNN finds the public-domain astronaut face (offline weights)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from pipeline.corpora.sample import prepare_sample
from pipeline.testing.av_files import write_clip

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mtcnn(face_detector):
    return face_detector.mtcnn  # the facenet-pytorch MTCNN (keep_all=True) as the pipeline loads it


def test_mtcnn_finds_the_astronaut(mtcnn):
    from skimage.data import astronaut

    boxes, probs = mtcnn.detect(astronaut())
    assert boxes is not None and len(boxes) == 1
    assert float(probs[0]) > 0.99
    x0, y0, x1, y1 = np.asarray(boxes, dtype=np.float32)[0]
    # the face is in the upper middle of the 512x512 portrait
    assert 150 < x0 < x1 < 300 and 30 < y0 < y1 < 200


def test_mtcnn_finds_no_face_in_a_flat_frame(mtcnn):
    boxes, _ = mtcnn.detect(np.full((240, 320, 3), 90, np.uint8))
    assert boxes is None


def _frame(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_mtcnn_finds_the_face_in_generated_clips(mtcnn, tmp_path):
    frame = _frame(
        write_clip(tmp_path / "f.mp4", duration=0.2, size=(320, 240), audio=False, face_pos=(0.3, 0.4))
    )
    boxes, probs = mtcnn.detect(frame)
    assert boxes is not None and float(probs[0]) > 0.99
    cx = float(np.asarray(boxes, dtype=np.float32)[0][[0, 2]].mean())
    assert abs(cx - 0.3 * 320) < 30
    boxes, _ = mtcnn.detect(
        _frame(write_clip(tmp_path / "n.mp4", duration=0.2, size=(320, 240), audio=False, face=False))
    )
    assert boxes is None


def test_mtcnn_finds_a_face_in_every_sample_clip(mtcnn):
    frames = np.stack([_frame(u.clip) for u in prepare_sample()])
    boxes, probs = mtcnn.detect(frames)
    assert all(b is not None and float(p[0]) > 0.95 for b, p in zip(boxes, probs, strict=True))
