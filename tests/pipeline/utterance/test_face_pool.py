"""The face max-pool runs over the frames that have a face: faceless frames do not clamp it."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.encoders.network import build_encoder
from pipeline.utterance.embed import visual_embeddings

torch.set_num_threads(1)


def media_row(scenes: np.ndarray, faces: np.ndarray, face_frame: list[int]) -> dict:
    return {
        "scenes": scenes,
        "faces": faces,
        "face_frame": np.array(face_frame, np.int16),
        "face_weight": np.full(len(faces), 1.0, np.float32) / np.bincount(face_frame)[face_frame],
        "has_visual": True,
        "has_face": len(faces) > 0,
    }


def test_a_clip_with_faces_in_a_few_frames_equals_those_frames_alone():
    rng = np.random.default_rng(0)
    face_enc, scene_enc = (
        build_encoder("face", seed=0, image_size=24),
        build_encoder("scene", seed=1, image_size=24),
    )
    scenes = rng.integers(0, 256, (8, 3, 24, 24), dtype=np.uint8)
    faces = rng.integers(0, 256, (3, 3, 24, 24), dtype=np.uint8)
    # 8 frames; faces in frames 2 (two faces) and 5 only
    long_clip = media_row(scenes, faces, [2, 2, 5])
    # the two frames with faces, alone
    short_clip = media_row(scenes[[2, 5]], faces, [0, 0, 1])
    emb, has_visual, has_face = visual_embeddings(
        face_enc, scene_enc, [long_clip, short_clip], n_frames=8, batch_size=4
    )
    assert has_visual.all() and has_face.all()
    face_long, face_short = emb[0, :300], emb[1, :300]
    np.testing.assert_allclose(face_long, face_short, atol=1e-6)
    # the six faceless frames did not clamp the negative components to 0
    assert (face_long < 0).sum() > 50
