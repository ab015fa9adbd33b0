"""pipeline.utterance.visual: weighted face embedding, face selection/crops, scenes, real MTCNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.testing.faces import shared_face_detector
from pipeline.testing.signals import render_face_frame
from pipeline.utterance.process import MediaConfig
from pipeline.utterance.visual import (
    FaceDetector,
    area_weights,
    box_areas,
    crop_faces,
    crop_side,
    resize_scenes,
    select_faces,
    weighted_face_embedding,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------- weighted_face_embedding
def test_weighted_face_embedding_by_hand():
    emb = np.array(
        [
            [1.0, -2.0, 0.0],  # frame 0, w 0.5
            [3.0, -2.0, 1.0],  # frame 0, w 0.5
            [-1.0, -4.0, 5.0],
        ]
    )  # frame 2, w 1.0
    out = weighted_face_embedding(emb, [0, 0, 2], [0.5, 0.5, 1.0], n_frames=3)
    # per frame: f0 = [2, -2, 0.5], f1 has no face (left out), f2 = [-1, -4, 5]; max over f0, f2
    assert np.allclose(out, [2.0, -2.0, 5.0])
    # frame 0 alone: the faceless frames 1-2 do not clamp the -2 to 0
    out2 = weighted_face_embedding(emb[:2], [0, 0], [0.5, 0.5], n_frames=3)
    assert np.allclose(out2, [2.0, -2.0, 0.5])


def test_weighted_face_embedding_torch_matches_numpy_and_empty_is_zero():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((7, 5)).astype(np.float32)
    frame = np.array([0, 0, 1, 3, 3, 3, 4], np.int16)
    weight = rng.random(7).astype(np.float32)
    a = weighted_face_embedding(emb, frame, weight, 6)
    b = weighted_face_embedding(torch.from_numpy(emb), frame, weight, 6)
    assert isinstance(b, torch.Tensor) and np.allclose(a, b.numpy(), atol=1e-6)
    zero = weighted_face_embedding(np.zeros((0, 5), np.float32), np.zeros(0, np.int16), np.zeros(0), 15)
    assert zero.shape == (5,) and not zero.any()


def test_weighted_face_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="frame indices"):
        weighted_face_embedding(np.ones((2, 3)), [0], [1.0, 1.0], 2)
    with pytest.raises(ValueError, match=r"face_frame must be in \[0, 2\)"):
        weighted_face_embedding(np.ones((1, 3)), [2], [1.0], 2)


# ---------------------------------------------------------------------- selection, weights, crops
def test_select_faces_threshold_order_and_cap():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 5, 9], [0, 0, 4, 4], [1, 1, 3, 3]], np.float32)
    probs = np.array([0.95, 0.99, 0.999, 0.5, 0.97], np.float32)
    assert select_faces(boxes, probs, 0.9, 4).tolist() == [1, 4, 0]  # degenerate box and p=0.5 dropped
    assert select_faces(boxes, probs, 0.9, 2).tolist() == [1, 4]
    assert select_faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.9, 4).size == 0


def test_area_weights_sum_to_one_per_frame():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 30]], np.float32)
    assert np.allclose(box_areas(boxes), [100, 300])
    assert np.allclose(area_weights(boxes), [0.25, 0.75])
    assert area_weights(np.zeros((0, 4))).size == 0


def test_crop_faces_takes_the_box_with_margin_and_pads_black():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[40:60, 90:110] = (255, 0, 0)  # a red 20x20 "face"
    crops = crop_faces(frame, np.array([[90, 40, 110, 60]], np.float32), size=28, margin=0.2)
    assert crops.shape == (1, 3, 28, 28) and crops.dtype == np.uint8
    c = crops[0]
    assert c[0, 14, 14] == 255 and c[1, 14, 14] == 0  # centre is red (CHW)
    assert c[0, 0, 0] == 0  # the margin is background
    edge = crop_faces(frame, np.array([[-10, -10, 10, 10]], np.float32), size=16)  # half outside
    assert edge.shape == (1, 3, 16, 16) and edge[0, :, 0, 0].tolist() == [0, 0, 0]


def test_resize_scenes_and_crop_side():
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    frames[:, :, :32] = (200, 40, 40)
    frames[:, :, 32:] = (40, 40, 200)
    scenes = resize_scenes(frames, 16)
    assert scenes.shape == (2, 3, 16, 16) and scenes[0, 0, 8, 2] == 200 and scenes[0, 2, 8, 14] == 200
    left, right = crop_side(frames, "left"), crop_side(frames, "right")
    assert left.shape == (2, 48, 32, 3) and (left[..., 0] == 200).all()
    assert right.shape == (2, 48, 32, 3) and (right[..., 2] == 200).all()
    assert crop_side(frames, None) is frames
    with pytest.raises(ValueError, match="side"):
        crop_side(frames, "middle")


# ---------------------------------------------------------------------- MTCNN
@pytest.fixture(scope="module")
def detector():
    return shared_face_detector(MediaConfig(mtcnn_batch=2, detect_max_side=0))


def face_frames(n: int, size=(320, 240), face=True) -> np.ndarray:
    return np.stack(
        [
            render_face_frame(
                i, size=size, face=face, face_scale=0.6, face_pos=(0.5, 0.5), background=(40, 60, 90)
            )
            for i in range(n)
        ]
    )


def test_mtcnn_finds_the_face_in_each_frame_and_nothing_in_blank_frames(detector):
    frames = np.concatenate([face_frames(3), face_frames(1, face=False)])
    out = detector.detect(frames)  # 2 MTCNN batches (mtcnn_batch=2)
    assert len(out) == 4
    for boxes, probs in out[:3]:
        assert boxes.dtype == np.float32 and probs.dtype == np.float32 and boxes.shape[1] == 4
        assert probs[0] > 0.99
        cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
        assert abs(cx - 160) < 30 and abs(cy - 120) < 40  # the face sits at the frame centre
    assert out[3][0].shape == (0, 4) and out[3][1].shape == (0,)


def test_detection_on_shrunk_frames_gives_full_resolution_boxes(detector):
    frames = face_frames(1, size=(640, 480))
    full = detector.detect(frames)[0][0][0]
    shrunk = shared_face_detector(MediaConfig(detect_max_side=320)).detect(frames)[0][0][0]
    assert np.allclose(full, shrunk, atol=12), (full, shrunk)
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(frames.astype(np.float32))


@pytest.mark.gpu
def test_cuda_detector_matches_cpu(detector):
    frames = face_frames(2)
    cpu = detector.detect(frames)
    gpu = FaceDetector(MediaConfig(mtcnn_batch=2, detect_max_side=0), device="cuda").detect(frames)
    # a candidate near MTCNN's 0.7 output threshold may appear on one device only (TF32 convolutions):
    # every confident face of either device must be found by the other, at the same place
    for (bc, pc), (bg, pg) in zip(cpu, gpu, strict=True):
        _confident_faces_found(bc, pc, bg, pg)
        _confident_faces_found(bg, pg, bc, pc)
    assert any(len(p) and p.max() > 0.99 for _, p in cpu)  # the test's frames do hold a clear face


def _confident_faces_found(boxes, probs, other_boxes, other_probs, floor=0.8):
    for box, prob in zip(boxes, probs, strict=True):
        if prob < floor:
            continue
        assert len(other_boxes), f"face p={prob:.3f} at {box} found on one device only"
        dist = np.abs(other_boxes - box).max(axis=1)
        j = int(dist.argmin())
        assert dist[j] <= 2 and abs(other_probs[j] - prob) <= 1e-3, (box, prob, other_boxes, other_probs)
