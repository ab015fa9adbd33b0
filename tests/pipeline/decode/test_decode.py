"""pipeline.decode and pipeline.utterance.audio on real files encoded with PyAV."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode.container import MediaError, probe
from pipeline.decode.frames import decode_frames, frame_targets
from pipeline.decode.waveform import decode_audio
from pipeline.testing.av_files import encode_media, write_clip, write_wav
from pipeline.testing.signals import tone
from pipeline.utterance.audio import centre_cut, centre_window, downmix, is_silent, resample

SR = 16000


def dominant_hz(wave: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spec)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def gray_frames(size=(64, 48)):
    """Frame i is flat gray ``3 * i`` (mod 256): the decoded value tells which frame came back."""
    w, h = size
    return lambda i: np.full((h, w, 3), (3 * i) % 256, np.uint8)


def frame_index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 3))


def write_gop_clip(path: Path, seconds: float, fps: int = 24, gop: int = 48, size=(64, 48)) -> Path:
    """A video-only H.264 clip with a fixed keyframe interval; frame i shows gray ``3 * (i // fps)``
    (its second, mod 80)."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {
            "preset": "ultrafast",
            "threads": "1",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        frame = gray_frames(size)
        for i in range(int(seconds * fps)):
            vf = av.VideoFrame.from_ndarray(frame((i // fps) % 80), format="rgb24")
            vf.pts = i
            c.mux(vs.encode(vf))
        c.mux(vs.encode())
    return path


# --------------------------------------------------------------------------------- audio compute
def test_downmix_centre_of_51_mean_of_stereo_mono_as_is():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert np.array_equal(downmix(x, ["FL", "FR", "FC", "LFE", "BL", "BR"]), x[2])
    assert np.array_equal(downmix(x[:2], ["FL", "FR"]), x[:2].mean(0))
    assert np.array_equal(downmix(x[:1], ["FC"]), x[0])
    assert np.allclose(downmix(x[:4], ["FL", "FR", "BL", "BR"]), x[:4].mean(0))  # no centre: mean
    with pytest.raises(ValueError, match="channel names"):
        downmix(x, ["FL", "FR"])


def test_centre_window_and_cut():
    assert centre_window(0.0, 4.0, 10.0) == (0.0, 4.0, False)
    assert centre_window(100.0, 130.0, 10.0) == (110.0, 120.0, True)
    w, cut = centre_cut(np.arange(30, dtype=np.float32), sr=1, max_seconds=10)
    assert cut and w[0] == 10 and len(w) == 10
    w, cut = centre_cut(np.arange(5, dtype=np.float32), sr=1, max_seconds=10)
    assert not cut and len(w) == 5


def test_resample_keeps_pitch_and_length():
    x = tone(1.0, 48000, 440.0, noise=0.0)
    y = resample(x, 48000, SR)
    assert y.dtype == np.float32 and len(y) == SR
    assert abs(dominant_hz(y) - 440.0) < 2.0
    assert is_silent(np.zeros(10, np.float32)) and not is_silent(y)


# --------------------------------------------------------------------------------- audio decode
def test_51_48k_decodes_to_16k_centre_channel(tmp_path):
    path = write_clip(tmp_path / "c51.mp4", duration=2.0, audio_channels=6, tone_hz=440.0, video=False)
    info = probe(path)
    assert (info.audio_channels, info.audio_rate, info.audio_layout) == (6, 48000, "5.1")
    wave, cut = decode_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1 and not cut
    # trimmed to the stream's duration, not the decoder's padded last frame
    assert abs(len(wave) - round(info.audio_duration * SR)) <= 2
    assert 2.0 * SR <= len(wave) <= 2.03 * SR
    assert abs(dominant_hz(wave) - 440.0) < 3
    # the centre channel carries amplitude 0.3 (rms ~0.21); a mean of the 6 channels would be ~0.06
    assert 0.17 < rms(wave[SR // 4 : -SR // 4]) < 0.25


def test_stereo_is_the_mean_of_both_channels(tmp_path):
    left = tone(2.0, 48000, 330.0, amplitude=0.4, noise=0.0)
    audio = np.stack([left, np.zeros_like(left)])
    path = encode_media(
        tmp_path / "st.mp4", frames=None, n_frames=0, fps=24, size=(64, 48), audio=audio, sample_rate=48000
    )
    wave, _ = decode_audio(path)
    assert abs(rms(wave[SR // 4 : -SR // 4]) - 0.2 / np.sqrt(2)) < 0.02  # half the left channel's amplitude


def test_wav_16k_mono_roundtrips(tmp_path):
    path = write_wav(tmp_path / "u.wav", duration=1.5, tone_hz=220.0)
    wave, cut = decode_audio(path)
    ref = (tone(1.5, SR, 220.0) * 32767).astype("<i2").astype(np.float32) / 32768
    assert not cut and len(wave) == len(ref)
    assert np.max(np.abs(wave - ref)) < 1e-6


def test_span_and_long_audio_keep_the_centre(tmp_path):
    sr = 48000
    a, b = tone(1.0, sr, 200.0, noise=0.0), tone(10.0, sr, 600.0, noise=0.0)
    audio = np.concatenate([a, b, a])[None, :]  # 12 s: 200 Hz | 600 Hz (10 s) | 200 Hz
    path = encode_media(
        tmp_path / "long.mp4",
        frames=None,
        n_frames=0,
        fps=24,
        size=(64, 48),
        audio=np.ascontiguousarray(audio),
        sample_rate=sr,
    )
    wave, cut = decode_audio(path, max_seconds=10.0)
    assert cut and len(wave) == 10 * SR
    assert abs(dominant_hz(wave[2000:6000]) - 600) < 10 and abs(dominant_hz(wave[-6000:-2000]) - 600) < 10
    span, cut = decode_audio(path, start=0.25, end=0.75)
    assert not cut and len(span) == SR // 2 and abs(dominant_hz(span) - 200) < 40
    empty, cut = decode_audio(path, start=3.0, end=3.0)
    assert len(empty) == 0 and not cut


def test_audio_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaError, match="missing file: .*nope.mp4"):
        decode_audio(missing)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="zero-byte file: .*empty.mp4"):
        decode_audio(empty)
    silent_video = write_clip(tmp_path / "v.mp4", duration=0.5, audio=False, size=(64, 48))
    with pytest.raises(MediaError, match="no audio stream in .*v.mp4"):
        decode_audio(silent_video)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match="cannot open .*junk.mp4"):
        decode_audio(junk)


# --------------------------------------------------------------------------------- frames
def test_frame_targets_are_bin_centres():
    assert np.allclose(frame_targets(0.0, 3.0, 3), [0.5, 1.5, 2.5])
    assert np.allclose(frame_targets(2.0, 2.0, 15), [2.0])


def test_15_frames_spread_uniformly_over_the_clip(tmp_path):
    path = encode_media(
        tmp_path / "g.mp4",
        frames=gray_frames(),
        n_frames=72,
        fps=24,
        size=(64, 48),
        audio=None,
        sample_rate=48000,
    )
    frames = decode_frames(path, n=15)
    assert frames.shape == (15, 48, 64, 3) and frames.dtype == np.uint8
    expected = [round(24 * t) for t in frame_targets(0.0, 3.0, 15)]  # nearest frame to each centre
    assert [frame_index(f) for f in frames] == expected


def test_span_inside_a_longer_video_and_zero_length_span(tmp_path):
    path = encode_media(
        tmp_path / "g.mp4",
        frames=gray_frames(),
        n_frames=72,
        fps=24,
        size=(64, 48),
        audio=None,
        sample_rate=48000,
    )
    frames = decode_frames(path, n=5, start=1.0, end=2.0)
    assert [frame_index(f) for f in frames] == [round(24 * t) for t in frame_targets(1.0, 2.0, 5)]
    one = decode_frames(path, n=15, start=1.5, end=1.5)
    assert one.shape[0] == 1 and frame_index(one[0]) == 36
    with pytest.raises(MediaError, match="past the end of the video"):
        decode_frames(path, start=10.0, end=11.0)


def test_short_clip_gives_each_frame_once(tmp_path):
    path = encode_media(
        tmp_path / "s.mp4",
        frames=gray_frames(),
        n_frames=8,
        fps=24,
        size=(64, 48),
        audio=None,
        sample_rate=48000,
    )
    frames = decode_frames(path, n=15)
    assert [frame_index(f) for f in frames] == list(range(8))


def test_frames_errors(tmp_path):
    audio_only = write_clip(tmp_path / "a.mp4", duration=0.5, video=False)
    with pytest.raises(MediaError, match="no video stream in .*a.mp4"):
        decode_frames(audio_only)
    with pytest.raises(MediaError, match="end 1.0 before start 2.0"):
        decode_frames(audio_only, start=2.0, end=1.0)


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    # 150 s at 128x96 (all frames held in memory: 133 MB as RGB), a keyframe every 10 s (x264's default)
    return (
        write_gop_clip(d / "long.mp4", seconds=150.0, size=(128, 96), gop=240),
        write_gop_clip(d / "short.mp4", seconds=3.0, size=(128, 96), gop=240),
    )


def test_long_clip_costs_about_what_a_short_one_does(long_and_short):
    long_clip, short_clip = long_and_short
    short_stats, long_stats = {}, {}
    t = time.perf_counter()
    decode_frames(short_clip, n=15, stats=short_stats)
    t_short = time.perf_counter() - t
    _reset_peak_rss()
    before = _peak_rss_kb()
    t = time.perf_counter()
    frames = decode_frames(long_clip, n=15, stats=long_stats)
    t_long = time.perf_counter() - t
    grew_mb = (_peak_rss_kb() - before) / 1024
    # bins of 10 s centred at 5, 15, ...: each frame within a quarter bin (2.5 s) of its centre
    seconds = [frame_index(f) for f in frames]
    for sec, t in zip(seconds, frame_targets(0.0, 150.0, 15), strict=True):
        assert abs((sec - int(t) + 40) % 80 - 40) <= 3, (seconds, t)
    # 3600 frames; each seek lands on the keyframe 5 s before its target and decodes 2.5 s (60 frames)
    assert long_stats["seeks"] == 15 and long_stats["decoded"] <= 15 * 62, long_stats
    assert short_stats["seeks"] == 0 and short_stats["decoded"] <= 72
    assert grew_mb < 30, f"peak RSS grew {grew_mb:.1f} MB decoding 15 frames of a 150 s clip"
    assert t_long < max(1.0, 20 * t_short), (t_long, t_short)


def test_exact_nearest_frames_without_tolerance(long_and_short):
    long_clip, _ = long_and_short
    stats: dict = {}
    frames = decode_frames(long_clip, n=15, seek_tolerance=0.0, stats=stats)
    assert [frame_index(f) for f in frames] == [int(t) % 80 for t in frame_targets(0.0, 150.0, 15)]
    assert stats["decoded"] > 15 * 100  # exactness costs: 5 s of frames per target
