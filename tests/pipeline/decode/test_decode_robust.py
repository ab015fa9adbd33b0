"""Odd but real media through pipeline.decode and pipeline.utterance.process.process_utterance (issue 11).

Each test reproduces one failure of the issue with a real file written by PyAV: a resolution change
mid-stream, huge frames, a NaN sample, a stream whose timestamps start at 10 s, a long audio file
without a stated duration, frames too small for MTCNN, and an error inside a stage.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from pipeline.decode.container import MediaError
from pipeline.decode.frames import decode_frames
from pipeline.decode.waveform import decode_audio
from pipeline.manifest import Utterance
from pipeline.testing.encodings import write_av, write_float_wav, write_resolution_change
from pipeline.testing.signals import tone
from pipeline.utterance.process import FaceDetector, MediaConfig, process_utterance

torch.set_num_threads(1)
SR = 16000
CFG = MediaConfig(n_frames=6)
MAX_PIXELS = 1280 * 720  # the documented default cap on decoded frames


@pytest.fixture(scope="module")
def detector(face_detector):
    return face_detector  # CFG's detection settings are MediaConfig's defaults


def custom(clip, start=None, end=None, audio=None) -> Utterance:
    return Utterance(
        corpus="custom",
        split="test",
        dialogue_id="d1",
        position=0,
        utterance_id="u1",
        speaker="A",
        text="x",
        label=None,
        clip=None if clip is None else str(clip),
        start=start,
        end=end,
        audio=None if audio is None else str(audio),
    )


def check_flags(row: dict) -> None:
    assert row["has_audio"] == (len(row["waveform"]) > 0)
    assert row["has_visual"] == (len(row["scenes"]) > 0)
    assert row["has_face"] == (len(row["faces"]) > 0)
    assert np.isfinite(row["waveform"]).all()


def gray(i: int, size=(64, 48), step: int = 3) -> np.ndarray:
    """Frame ``i`` is flat gray ``step * i`` (< 256): the decoded value tells which frame came back."""
    return np.full((size[1], size[0], 3), step * i, np.uint8)


def frame_index(frame: np.ndarray, step: int = 3) -> int:
    return int(round(float(frame.mean()) / step))


def dominant_hz(wave: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spec)])


# ------------------------------------------------------------------------ frames of varying size
def test_resolution_change_mid_stream_gives_frames_of_the_first_size(tmp_path, detector):
    clip = write_resolution_change(tmp_path / "call.ts")
    with av.open(str(clip)) as c:
        sizes = {(f.width, f.height) for f in c.decode(video=0)}
    assert sizes == {(160, 120), (128, 128)}  # the file really changes size
    frames = decode_frames(clip, n=8)
    assert frames.shape == (8, 120, 160, 3)
    # the 128x128 frames are scaled to 120x120 and centred: 20 black columns on each side
    assert frames[-1][:, :18].max() < 20 and frames[-1][:, -18:].max() < 20
    assert frames[-1][:, 60:100].mean() > 30 and frames[0][:, :18].mean() > 30
    row, problems = process_utterance(custom(clip), CFG, detector)
    check_flags(row)
    assert row["has_visual"] and row["has_audio"] and row["has_face"], problems
    assert problems == []


def test_huge_frames_are_scaled_to_the_pixel_cap(tmp_path):
    w, h = 4000, 3000
    ramp = np.linspace(0, 250, w, dtype=np.float32)[None, :, None]
    ramp = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
    clip = write_av(
        tmp_path / "big.mp4",
        acodec=None,
        seconds=4 / 24,
        size=(w, h),
        frame=lambda i: ramp,
        vopts={"preset": "ultrafast", "threads": "1"},
    )
    frames = decode_frames(clip, n=2)
    f, fh, fw, _ = frames.shape
    assert f == 2 and fh * fw <= MAX_PIXELS and abs(fw / fh - 4 / 3) < 0.01
    assert fw >= 1100  # scaled to the cap, not far below it
    row = frames[0].mean(axis=(0, 2))
    assert row[:20].mean() < 20 and row[-20:].mean() > 220  # the picture is the ramp, scaled
    small = decode_frames(clip, n=2, max_pixels=64 * 48)
    assert small.shape == (2, 48, 64, 3)


def test_a_frame_over_the_source_limit_is_refused(tmp_path):
    clip = write_av(tmp_path / "big.mp4", acodec=None, seconds=2 / 24, size=(640, 480))
    with pytest.raises(MediaError, match=r"640x480.*over the limit.*re-encode"):
        decode_frames(clip, n=2, max_source_pixels=640 * 480 - 1)
    assert decode_frames(clip, n=2, max_source_pixels=640 * 480).shape == (2, 480, 640, 3)


# ------------------------------------------------------------------------------- non-finite audio
@pytest.mark.parametrize("bad", [np.nan, np.inf, -1e30])
def test_non_finite_sample_marks_the_audio_missing(tmp_path, bad):
    wave = tone(1.0, SR, 220.0, amplitude=0.3, noise=0.0)
    wave[SR // 2] = bad
    wav = write_float_wav(tmp_path / "u.wav", wave)
    with pytest.raises(MediaError, match="non-finite"):
        decode_audio(wav)
    row, problems = process_utterance(custom(None, audio=wav), CFG, None)
    check_flags(row)
    assert not row["has_audio"] and len(row["waveform"]) == 0
    assert any("non-finite" in p and str(wav) in p and "audio marked missing" in p for p in problems)
    wave[SR // 2] = 0.0  # the same file without it is fine
    row, _ = process_utterance(custom(None, audio=write_float_wav(tmp_path / "ok.wav", wave)), CFG, None)
    assert row["has_audio"]


# ----------------------------------------------------------------------------------- start offset
def two_tones(seconds: float, sr: int, switch: float) -> np.ndarray:
    """200 Hz before ``switch`` seconds, 600 Hz after."""
    a = tone(switch, sr, 200.0, amplitude=0.3, noise=0.0)
    b = tone(seconds - switch, sr, 600.0, amplitude=0.3, noise=0.0)
    return np.concatenate([a, b])


@pytest.mark.parametrize("name,fmt", [("cut.mkv", None), ("cut.ts", "mpegts"), ("cut.mp4", None)])
def test_timestamps_starting_at_10_s(tmp_path, name, fmt):
    clip = write_av(
        tmp_path / name,
        fmt=fmt,
        seconds=3.0,
        start=10.0,
        size=(64, 48),
        frame=gray,
        audio=two_tones(3.0, 48000, 1.5),
    )
    frames = decode_frames(clip, n=15)  # whole clip (MELD-like): 72 frames
    assert len(frames) == 15
    idx = [frame_index(f) for f in frames]
    assert idx[0] <= 4 and idx[-1] >= 66 and idx == sorted(idx)
    frames = decode_frames(clip, n=6, start=1.0, end=2.0)  # a span, in the file's own time (from 0)
    idx = [frame_index(f) for f in frames]
    assert len(idx) == 6 and 24 <= idx[0] <= 27 and 44 <= idx[-1] <= 48, idx
    low, _ = decode_audio(clip, 0.2, 1.0)
    high, _ = decode_audio(clip, 2.0, 2.8)
    assert abs(len(low) - 0.8 * SR) <= 2 and abs(len(high) - 0.8 * SR) <= 2
    assert abs(dominant_hz(low) - 200) < 10 and abs(dominant_hz(high) - 600) < 10
    whole, _ = decode_audio(clip)
    assert abs(len(whole) - 3.0 * SR) < 0.05 * SR
    row, problems = process_utterance(custom(clip, 0.5, 2.5), MediaConfig(), None)
    check_flags(row)
    assert problems == [] and len(row["scenes"]) == 15 and abs(len(row["waveform"]) - 2 * SR) <= 2
    with pytest.raises(MediaError, match=r"span start 3.500 s is past the end"):
        decode_frames(clip, n=2, start=3.5, end=4.0)


def test_mpegts_with_one_keyframe_seeks_back_when_the_demuxer_lands_late(tmp_path):
    # x264's default keyframe interval (250) gives a single keyframe: a seek lands after it
    clip = write_av(
        tmp_path / "one_gop.ts",
        fmt="mpegts",
        acodec=None,
        seconds=8.0,
        size=(64, 48),
        frame=lambda i: gray(i, step=1),
        start=10.0,
    )
    stats: dict = {}
    frames = decode_frames(clip, n=4, start=5.0, end=8.0, stats=stats)
    idx = [frame_index(f, step=1) for f in frames]
    # bin centres 5.375 .. 7.625 s = frames 129 .. 183; after a seek, up to a quarter bin (4.5 frames) off
    assert len(idx) == 4 and abs(idx[0] - 129) <= 5 and abs(idx[-1] - 183) <= 5, idx
    assert stats["seeks"] >= 2  # the first seek landed late and was redone


# ------------------------------------------------------------------ long audio without a duration
class Pipe:
    """A write-only file: the muxer cannot go back to write a duration or an index (a live stream)."""

    def __init__(self, f):
        self.f = f

    def write(self, b) -> int:
        return self.f.write(b)


@pytest.mark.parametrize("live", [False, True], ids=["mkv", "live-mkv"])
def test_long_audio_without_a_stated_duration_decodes_only_the_window(tmp_path, live):
    sr = 16000
    side, mid = tone(25.0, sr, 200.0, noise=0.0), tone(10.0, sr, 600.0, noise=0.0)
    mono = np.concatenate([side, mid, side])  # 60 s: 200 Hz | 600 Hz (10 s) | 200 Hz
    path = tmp_path / "long.mkv"
    if live:
        with open(path, "wb") as fh:
            write_av(Pipe(fh), fmt="matroska", vcodec=None, seconds=60.0, sample_rate=sr, audio=mono)
    else:
        write_av(path, vcodec=None, seconds=60.0, sample_rate=sr, audio=mono)
    with av.open(str(path)) as c:
        assert c.streams.audio[0].duration is None and (c.duration is None) == live
    stats: dict = {}
    wave, cut = decode_audio(path, max_seconds=4.0, stats=stats)
    assert cut and len(wave) == 4 * sr and abs(dominant_hz(wave) - 600) < 5
    # not the 60 s of the file: a Matroska seek lands on a cluster start, up to ~5 s before the window
    assert stats["decoded_seconds"] <= 4.0 + 5.5, stats
    stats = {}
    wave, cut = decode_audio(path, start=40.0, end=42.0, stats=stats)
    assert not cut and len(wave) == 2 * sr and abs(dominant_hz(wave) - 200) < 5
    assert stats["decoded_seconds"] <= 2.0 + 5.5, stats


# ---------------------------------------------------------------------- per-utterance isolation
def test_frames_too_small_for_mtcnn_keep_the_row(tmp_path, detector):
    clip = write_av(tmp_path / "tiny.mp4", seconds=0.5, size=(8, 8), frame=lambda i: gray(40, (8, 8)))
    row, problems = process_utterance(custom(clip), CFG, detector)  # MTCNN raised here before
    check_flags(row)
    assert row["has_audio"] and row["has_visual"] and not row["has_face"]
    assert len(problems) == 1 and str(clip) in problems[0] and "too small" in problems[0], problems


class BrokenDetector(FaceDetector):
    """A detector that fails inside MTCNN, as a CUDA out-of-memory or a library bug would."""

    def detect(self, frames):
        raise RuntimeError("CUDA error: out of memory")


def test_an_error_inside_a_stage_becomes_a_problem(tmp_path):
    clip = write_av(tmp_path / "ok.mp4", seconds=0.5)
    row, problems = process_utterance(custom(clip), CFG, BrokenDetector(CFG))
    check_flags(row)
    assert row["has_audio"] and row["has_visual"] and not row["has_face"]
    assert len(problems) == 1
    assert problems[0].startswith(f"face detection failed on {clip}: RuntimeError: CUDA error: out of memory")
    assert "report" in problems[0]


def test_an_unexpected_error_anywhere_gives_an_empty_row(tmp_path):
    clip = write_av(tmp_path / "ok.mp4", seconds=0.5)
    bad = Utterance(
        corpus="custom",
        split="test",
        dialogue_id="d1",
        position=0,
        utterance_id="u1",
        speaker="A",
        text="x",
        label=None,
        clip=str(clip),
        start="0.1",
        end=0.4,
    )  # a str time
    row, problems = process_utterance(bad, CFG, None)
    check_flags(row)
    assert not (row["has_audio"] or row["has_visual"] or row["has_face"])
    assert len(problems) == 2 and all(str(clip) in p and "TypeError" in p for p in problems), problems
