"""The decode matrix: one short talking-face clip in every encoding PyAV can write here (issue 11, item 9).

Each clip (0.5 s, astronaut face, 220 Hz tone) goes through
:func:`pipeline.utterance.process.process_utterance`
with the real MTCNN: the face and the audio must be found, with no problem line, and the frames must
come from the whole clip (a gray bar at the bottom of each frame tells its index), which catches
a wrongly estimated duration (MPEG-PS) or a start offset read as a span.

Not in the matrix because this PyAV wheel cannot write them: Theora (no encoder), AMR (3GP's usual
audio), and 5.1 layouts (covered by tests/test_decode.py with AAC).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.manifest import Utterance
from pipeline.testing.encodings import face_frame, write_av
from pipeline.utterance.process import FaceDetector, MediaConfig, process_utterance

torch.set_num_threads(1)
CFG = MediaConfig(n_frames=4)
SECONDS, FPS = 0.5, 24
X264 = {"preset": "ultrafast", "threads": "1"}
X265 = {"preset": "ultrafast", "x265-params": "log-level=error:pools=1:frame-threads=1"}
VPX = {"deadline": "realtime", "cpu-used": "8", "threads": "1"}

#: name -> write_av arguments; the suffix picks the container unless ``fmt`` says otherwise
ENCODINGS = {
    "h264_aac.mp4": {"vcodec": "libx264", "acodec": "aac", "vopts": X264},
    "h264_aac.ts": {"vcodec": "libx264", "acodec": "aac", "fmt": "mpegts", "vopts": X264},
    "h264_10bit_aac.mp4": {"vcodec": "libx264", "acodec": "aac", "pix_fmt": "yuv420p10le", "vopts": X264},
    "h264_444_aac.mov": {"vcodec": "libx264", "acodec": "aac", "pix_fmt": "yuv444p", "vopts": X264},
    "h264_vorbis.mkv": {"vcodec": "libx264", "acodec": "vorbis", "channels": 2, "vopts": X264},
    "h264_flac.mkv": {"vcodec": "libx264", "acodec": "flac", "vopts": X264},
    "h264_ac3.mkv": {"vcodec": "libx264", "acodec": "ac3", "vopts": X264},
    "h264_alac.mov": {"vcodec": "libx264", "acodec": "alac", "vopts": X264},
    "h264_1080p60_aac.mp4": {
        "vcodec": "libx264",
        "acodec": "aac",
        "vopts": X264,
        "size": (1920, 1080),
        "fps": 60,
    },
    "hevc_aac.mp4": {"vcodec": "libx265", "acodec": "aac", "vopts": X265},
    "av1_opus.mkv": {"vcodec": "libsvtav1", "acodec": "libopus", "vopts": {"preset": "12"}},
    "vp9_opus.webm": {"vcodec": "libvpx-vp9", "acodec": "libopus", "vopts": VPX},
    "vp8_vorbis.webm": {"vcodec": "libvpx", "acodec": "vorbis", "channels": 2, "vopts": VPX},
    "mpeg4_mp3.avi": {"vcodec": "mpeg4", "acodec": "libmp3lame"},
    "mpeg4_pcm.avi": {"vcodec": "mpeg4", "acodec": "pcm_s16le"},
    "mjpeg_pcm.avi": {"vcodec": "mjpeg", "acodec": "pcm_s16le", "pix_fmt": "yuvj420p"},
    "mjpeg_ulaw8k.mov": {
        "vcodec": "mjpeg",
        "acodec": "pcm_mulaw",
        "pix_fmt": "yuvj420p",
        "sample_rate": 8000,
    },
    "mpeg2_mp2.ts": {"vcodec": "mpeg2video", "acodec": "mp2", "fmt": "mpegts"},
    "mpeg2_mp2.vob": {"vcodec": "mpeg2video", "acodec": "mp2", "fmt": "vob"},
    "mpeg1_mp2.mpg": {"vcodec": "mpeg1video", "acodec": "mp2", "fmt": "mpeg"},
    "h263_aac8k.3gp": {"vcodec": "h263", "acodec": "aac", "size": (176, 144), "sample_rate": 8000},
    "flv_mp3.flv": {"vcodec": "flv", "acodec": "libmp3lame", "sample_rate": 44100},
    "wmv2_wma.wmv": {"vcodec": "wmv2", "acodec": "wmav2", "fmt": "asf", "sample_rate": 44100, "channels": 2},
    "dv_pcm.dv": {
        "vcodec": "dvvideo",
        "acodec": "pcm_s16le",
        "fmt": "dv",
        "size": (720, 576),
        "fps": 25,
        "channels": 2,
    },
    "prores_pcm24.mov": {"vcodec": "prores_ks", "acodec": "pcm_s24le", "pix_fmt": "yuv422p10le"},
    "ffv1_flac.mkv": {"vcodec": "ffv1", "acodec": "flac"},
    "png_pcm.mov": {"vcodec": "png", "acodec": "pcm_s16le", "pix_fmt": "rgb24"},
    "h264_aac_from_10s.mkv": {"vcodec": "libx264", "acodec": "aac", "vopts": X264, "start": 10.0},
    "h264_aac_phone_-90.mp4": {"vcodec": "libx264", "acodec": "aac", "vopts": X264, "rotation": -90},
}


def marked_face(i: int, n: int, size: tuple[int, int], sideways: bool) -> np.ndarray:
    """Frame ``i`` of ``n`` of the face clip, with a bar of gray ``10 + 200 i / (n - 1)`` at the bottom.

    ``sideways``: stored turned a quarter counter-clockwise (a phone's portrait video, size swapped).
    """
    w, h = (size[1], size[0]) if sideways else size
    frame = face_frame(i, (w, h), face_scale=0.6 if sideways else 0.7)
    frame[-h // 8 :] = round(10 + 200 * i / (n - 1))
    return np.ascontiguousarray(np.rot90(frame, k=1)) if sideways else frame


def bar_index(scene: np.ndarray, n: int) -> int:
    """The frame index from a stored scene (3, S, S): the gray of its bottom rows."""
    return int(round((float(scene[:, -3:].mean()) - 10) * (n - 1) / 200))


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(CFG)


#: rows that take seconds, not tenths (30 frames of 1080p to encode)
SLOW = {"h264_1080p60_aac.mp4"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ENCODINGS]
)
def test_face_and_audio_in_every_encoding(tmp_path, detector, name):
    kw = dict(ENCODINGS[name])
    size, fps = kw.pop("size", (160, 120)), kw.pop("fps", FPS)
    sideways = kw.get("rotation") == -90
    n = int(round(SECONDS * fps))
    clip = write_av(
        tmp_path / name,
        seconds=SECONDS,
        fps=fps,
        size=size,
        frame=lambda i: marked_face(i, n, size, sideways),
        **kw,
    )
    utt = Utterance(
        corpus="custom",
        split="test",
        dialogue_id="d1",
        position=0,
        utterance_id="u1",
        speaker="A",
        text="x",
        label=None,
        clip=str(clip),
        start=None,
        end=None,
    )
    row, problems = process_utterance(utt, CFG, detector)
    assert problems == []
    assert row["has_visual"] and row["has_face"] and row["has_audio"]
    assert len(row["scenes"]) == CFG.n_frames and len(np.unique(row["face_frame"])) >= CFG.n_frames - 1
    idx = [bar_index(s, n) for s in row["scenes"]]
    assert idx == sorted(idx) and idx[0] <= n // 4 and idx[-1] >= n - n // 4 - 1, idx  # the whole clip
    wave = row["waveform"]
    assert 0.44 * 16000 <= len(wave) <= 0.56 * 16000  # WMA drops its last partial frame: 0.464 s
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    assert abs(np.fft.rfftfreq(len(wave), 1 / 16000)[np.argmax(spec)] - 220) < 10
