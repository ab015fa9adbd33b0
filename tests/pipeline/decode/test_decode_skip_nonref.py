"""decode_frames(skip_nonref=True): fewer frames decoded, each picked frame within one frame time of its
target, and a full decode whenever that cannot be met (issue 20 item 6)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode.frames import decode_frames, frame_targets
from pipeline.testing.av_files import encode_media
from pipeline.testing.encodings import write_av

FPS = 24


def index_frames(size=(64, 48)):
    """Frame i is flat gray ``3 * i``: the decoded value tells which frame came back."""
    w, h = size
    return lambda i: np.full((h, w, 3), (3 * i) % 256, np.uint8)


def frame_index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 3))


@pytest.fixture(scope="module")
def bframe_clip(tmp_path_factory):
    """3 s of H.264 with B-frames (encode_media: x264 veryfast, as the generated MELD-like corpora)."""
    path = tmp_path_factory.mktemp("skip") / "b.mp4"
    return encode_media(
        path, frames=index_frames(), n_frames=3 * FPS, fps=FPS, size=(64, 48), audio=None, sample_rate=16000
    )


def test_skipping_decodes_fewer_frames_within_one_frame_time(bframe_clip):
    full, skip = {}, {}
    ref = decode_frames(bframe_clip, n=15, stats=full)
    got = decode_frames(bframe_clip, n=15, stats=skip, skip_nonref=True)
    assert skip["skip_nonref"] is True and full["skip_nonref"] is False  # the skipping result was kept
    assert skip["decoded"] <= 0.7 * full["decoded"], (skip, full)  # B-frames were not decoded
    assert len(got) == len(ref) == 15
    targets = frame_targets(0.0, 3.0, 15)
    picked = [frame_index(f) / FPS for f in got]
    assert max(abs(p - t) for p, t in zip(picked, targets, strict=True)) <= 1 / FPS + 1e-6, picked
    assert picked == sorted(set(picked))
    # where the nearest frame was decoded anyway, the same frame comes back
    assert sum(np.array_equal(a, b) for a, b in zip(got, ref, strict=True)) >= 5


def test_falls_back_to_a_full_decode_when_frames_would_be_missing(bframe_clip):
    # 60 targets in 72 frames: skipping half of them cannot give a frame per target
    stats: dict = {}
    got = decode_frames(bframe_clip, n=60, stats=stats, skip_nonref=True)
    ref = decode_frames(bframe_clip, n=60)
    assert stats["skip_nonref"] is False
    assert np.array_equal(got, ref)


def test_intra_only_and_b_frame_free_streams_give_the_full_result(tmp_path):
    for name, kw in {
        "i.avi": {"vcodec": "mjpeg", "pix_fmt": "yuvj420p"},
        "p.mp4": {"vcodec": "libx264", "vopts": {"preset": "ultrafast", "threads": "1", "bframes": "0"}},
    }.items():
        clip = write_av(tmp_path / name, seconds=1.0, fps=FPS, size=(64, 48), frame=index_frames(), **kw)
        stats: dict = {}
        got = decode_frames(clip, n=7, stats=stats, skip_nonref=True)
        ref = decode_frames(clip, n=7)
        assert [frame_index(f) for f in got] == [frame_index(f) for f in ref], name
