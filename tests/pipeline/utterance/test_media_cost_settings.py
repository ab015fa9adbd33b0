"""The per-clip cost settings of issue 20 item 6 apply where they should, and the old ones stay reachable.

MediaConfig's ``mtcnn_factor`` reaches MTCNN's pyramid, ``decode_skip_nonref`` reaches the frame
decoder, ``scene_halving`` the scene resize; encoders loaded for extraction run channels-last on CPU
with the same embeddings to float rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import pipeline.utterance.process as process
from pipeline.decode.frames import decode_frames
from pipeline.encoders.checkpoint import load_encoder_set
from pipeline.testing.av_files import write_clip
from pipeline.testing.signals import render_face_frame
from pipeline.testing.utterances import make_utterance
from pipeline.utterance.embed import encode_images
from pipeline.utterance.process import MEDIA_FIELDS_BEFORE, MediaConfig, process_utterance
from pipeline.utterance.visual import FaceDetector, _shrink, resize_scenes

torch.set_num_threads(1)


def test_mtcnn_factor_reaches_the_pyramid():
    assert FaceDetector(MediaConfig()).mtcnn.factor == MediaConfig().mtcnn_factor == 0.5
    assert FaceDetector(MediaConfig(mtcnn_factor=0.709)).mtcnn.factor == 0.709


def test_decode_skip_nonref_reaches_the_decoder(tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "c.mp4", duration=1.0, size=(160, 120), audio=False)
    utt = make_utterance(clip=str(clip), label=None)
    seen = []
    real = process.decode_frames

    def spy(*args, **kwargs):
        seen.append(kwargs.get("skip_nonref"))
        return real(*args, **kwargs)

    monkeypatch.setattr(process, "decode_frames", spy)
    for cfg in (MediaConfig(n_frames=3), MediaConfig(n_frames=3, decode_skip_nonref=False)):
        row, _ = process_utterance(utt, cfg, None)
        assert row["has_visual"]
    assert seen == [True, False]


def test_scene_halving_is_close_to_the_direct_resize():
    rng = np.random.default_rng(0)
    frames = np.stack(
        [
            render_face_frame(
                0, size=(1280, 720), face=True, face_scale=0.5, face_pos=(0.5, 0.5), background=(40, 60, 90)
            ),
            rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8),  # noise: the worst case
        ]
    )
    direct, halved = resize_scenes(frames, 64), resize_scenes(frames, 64, halving=True)
    diff = np.abs(direct.astype(int) - halved.astype(int))
    # the face frame: 1 grey level at most (measured: max 1, mean 0.02); noise, where the bins' partial
    # edge pixels weigh differently after halving, up to a few levels (measured: max 4, mean 0.68)
    assert diff[0].max() <= 1 and diff[0].mean() < 0.1, (diff[0].max(), diff[0].mean())
    assert diff[1].mean() < 1.0 and not np.array_equal(direct[1], halved[1])  # the halving did run
    small = frames[:, :200, :200]  # under 4x the scene size: no halving, the direct resize
    assert np.array_equal(resize_scenes(small, 64, halving=True), resize_scenes(small, 64))


@pytest.mark.parametrize("field", ["mtcnn_factor", "decode_skip_nonref", "scene_halving"])
def test_each_setting_is_in_the_cache_config(field):
    old = MEDIA_FIELDS_BEFORE[field]
    assert MediaConfig().to_dict()[field] != old
    assert dataclasses.replace(MediaConfig(), **{field: old}).to_dict()[field] == old


def test_a_config_recorded_before_the_new_fields_keeps_the_old_behaviour():
    before = {k: v for k, v in MediaConfig().to_dict().items() if k not in MEDIA_FIELDS_BEFORE}
    cfg = MediaConfig.recorded(before)  # what a model folder exported before issue 20 item 6 records
    assert {k: getattr(cfg, k) for k in MEDIA_FIELDS_BEFORE} == MEDIA_FIELDS_BEFORE
    assert MediaConfig.recorded(MediaConfig().to_dict()) == MediaConfig() == MediaConfig.recorded(None)


def test_cpu_encoders_are_channels_last_with_the_same_embeddings():
    encs = load_encoder_set("random")
    assert encs.face.trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert encs.audio.trunk.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    faces = np.random.default_rng(1).integers(0, 256, (4, 3, 80, 80), dtype=np.uint8)
    got = encode_images(encs.face, faces, 32)
    encs.face.to(memory_format=torch.contiguous_format)
    want = encode_images(encs.face, faces, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_planar_frames_give_mtcnn_the_same_boxes(tmp_path, face_detector):
    # FaceDetector hands MTCNN a planar view (faster pyramid); the boxes equal those of MTCNN's own
    # numpy path bit for bit
    clip = write_clip(tmp_path / "c.mp4", duration=0.5, size=(1280, 720), face_scale=0.3, face_pos=(0.3, 0.4))
    frames = decode_frames(clip, 6)
    got = face_detector.detect(frames)
    small, scale = _shrink(frames, face_detector.max_side)
    boxes, probs = face_detector.mtcnn.detect(small)
    assert sum(len(b) for b, _ in got) >= len(frames)
    for (b, p), wb, wp in zip(got, boxes, probs, strict=True):
        np.testing.assert_array_equal(
            b, (np.asarray(wb).astype(np.float32) * np.float32(scale)).reshape(-1, 4)
        )
        np.testing.assert_array_equal(p, np.asarray(wp).astype(np.float32))
