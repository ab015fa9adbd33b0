"""The CPU speed-ups of face detection find the same faces as facenet-pytorch's MTCNN as shipped.

Real MTCNN on 15 frames of a 1280x720 clip (MELD's size) with the astronaut face, at two face sizes and
positions: :class:`pipeline.utterance.visual.FaceDetector` (networks in channels-last memory format)
against the same MTCNN with its networks left in the default NCHW format.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipeline.decode.frames import decode_frames
from pipeline.testing.av_files import write_clip
from pipeline.utterance.process import MediaConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detectors(face_detector):
    cfg = MediaConfig()
    fast = face_detector
    shipped = copy.deepcopy(face_detector)  # its own networks: their memory format is changed below
    for net in (shipped.mtcnn.pnet, shipped.mtcnn.rnet, shipped.mtcnn.onet):
        net.to(memory_format=torch.contiguous_format)
    return cfg, fast, shipped


@pytest.mark.parametrize(("face_scale", "face_pos"), [(0.5, (0.5, 0.5)), (0.3, (0.3, 0.4))])
def test_same_faces_at_720p(tmp_path, detectors, face_scale, face_pos):
    cfg, fast, shipped = detectors
    clip = write_clip(
        tmp_path / "c.mp4", duration=0.7, size=(1280, 720), face_scale=face_scale, face_pos=face_pos
    )
    frames = decode_frames(clip, cfg.n_frames)
    assert frames.shape[1:] == (720, 1280, 3)
    assert fast.mtcnn.pnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    got, want = fast.detect(frames), shipped.detect(frames)  # same code path, NCHW networks
    assert len(got) == len(want) == len(frames)
    kept = 0
    for (b_got, p_got), (b_want, p_want) in zip(got, want, strict=True):
        assert len(b_got) == len(b_want)
        np.testing.assert_allclose(b_got, b_want, atol=2.0)  # full-resolution pixels
        np.testing.assert_allclose(p_got, p_want, atol=1e-3)
        kept += int((p_want >= cfg.min_face_prob).sum())
    assert kept >= len(frames) - 1  # the astronaut is found: the comparison is not of empty lists
