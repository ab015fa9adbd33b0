"""pipeline.utterance.process.process_utterance: one row per utterance, whatever the media (faults included).

Real files (PyAV-encoded by ``pipeline.testing.av_files``) and the real MTCNN; each fault of the
extraction issue is one test, checking the row's flags, its arrays and the problem string.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.manifest import Utterance
from pipeline.testing.av_files import (
    encode_media,
    write_clip,
    write_split_screen_video,
    write_truncated,
    write_wav,
)
from pipeline.utterance.process import (
    MEDIA_FLAGS,
    MEDIA_RAGGED,
    MediaConfig,
    process_utterance,
    stored_bytes,
)

torch.set_num_threads(1)
CFG = MediaConfig()


@pytest.fixture(scope="module")
def detector(face_detector):
    return face_detector  # CFG's detection settings are MediaConfig's defaults


def meld(clip) -> Utterance:
    # MELD start/end are episode times: process_utterance must ignore them
    return Utterance(
        corpus="meld",
        split="train",
        dialogue_id="7",
        position=0,
        utterance_id="3",
        speaker="Joey",
        text="Hi.",
        label="joy",
        clip=None if clip is None else str(clip),
        start=1250.5,
        end=1253.5,
    )


def custom(clip, start, end, **kw) -> Utterance:
    return Utterance(
        corpus="custom",
        split="test",
        dialogue_id="d1",
        position=0,
        utterance_id="u1",
        speaker="A",
        text="x",
        label=None,
        clip=str(clip),
        start=start,
        end=end,
        **kw,
    )


def check_row(row: dict, cfg: MediaConfig = CFG) -> None:
    """Every row has every field with the contract's dtype and shape, whatever happened."""
    assert set(row) == {"utt_id", "label"} | set(MEDIA_RAGGED) | set(MEDIA_FLAGS)
    s, f = cfg.scene_size, cfg.face_size
    assert row["waveform"].dtype == np.float32 and row["waveform"].ndim == 1
    assert row["scenes"].dtype == np.uint8 and row["scenes"].shape[1:] == (3, s, s)
    assert row["faces"].dtype == np.uint8 and row["faces"].shape[1:] == (3, f, f)
    k = len(row["faces"])
    assert row["face_frame"].dtype == np.int16 and row["face_frame"].shape == (k,)
    assert row["face_weight"].dtype == np.float32 and row["face_weight"].shape == (k,)
    assert row["face_prob"].dtype == np.float32 and row["face_prob"].shape == (k,)
    assert row["face_box"].dtype == np.float32 and row["face_box"].shape == (k, 4)
    for name in MEDIA_FLAGS:
        assert isinstance(row[name], bool), name
    assert row["has_audio"] == (len(row["waveform"]) > 0)
    assert row["has_visual"] == (len(row["scenes"]) > 0)
    assert row["has_face"] == (k > 0)
    assert len(row["scenes"]) <= cfg.n_frames
    for i in np.unique(row["face_frame"]):
        assert 0 <= i < len(row["scenes"])
        assert np.isclose(row["face_weight"][row["face_frame"] == i].sum(), 1.0, atol=1e-5)
        assert (row["face_frame"] == i).sum() <= cfg.max_faces
    assert (row["face_prob"] >= cfg.min_face_prob).all()


def test_typical_clip_full_row(tmp_path, detector):
    clip = write_clip(tmp_path / "dia7_utt3.mp4", duration=3.0, size=(320, 240), audio_channels=2)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert problems == []
    assert row["utt_id"] == "meld/train/dia7_utt3" and row["label"] == "joy"
    assert row["has_audio"] and row["has_visual"] and row["has_face"] and not row["audio_cut"]
    assert 3.0 * 16000 <= len(row["waveform"]) <= 3.03 * 16000  # the whole clip, not the CSV times
    assert row["scenes"].shape[0] == 15
    assert sorted(set(row["face_frame"].tolist())) == list(range(15))  # one face in every frame
    assert (row["face_weight"] == 1.0).all() and (row["face_prob"] > 0.99).all()
    # the face box sits around the frame centre, where write_clip puts it
    cx = (row["face_box"][:, 0] + row["face_box"][:, 2]) / 2
    assert np.all(np.abs(cx - 160) < 30)


def test_config_roundtrip_and_budget_matches_a_real_row(tmp_path, detector):
    assert MediaConfig(**CFG.to_dict()) == CFG
    clip = write_clip(tmp_path / "two.mp4", duration=2.0, size=(320, 240), face_scale=0.45)
    row, _ = process_utterance(meld(clip), CFG, detector)
    arrays = sum(row[k].nbytes for k in MEDIA_RAGGED)
    k = len(row["faces"])
    assert k > 0
    estimate = stored_bytes(CFG, seconds=len(row["waveform"]) / CFG.sample_rate, faces_per_frame=k / 15)
    assert abs(estimate - arrays) <= 64
    # the defaults keep a typical MELD utterance (3.13 s, 2 faces per frame) under 15 GB / 13,708
    assert stored_bytes(CFG) * 13_708 < 15e9


def test_no_detector_skips_faces_silently(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", duration=1.0, size=(160, 120))
    row, problems = process_utterance(meld(clip), CFG, None)
    check_row(row)
    assert problems == [] and row["has_visual"] and not row["has_face"]


def test_missing_clip(tmp_path, detector):
    row, problems = process_utterance(meld(tmp_path / "dia1_utt1.mp4"), CFG, detector)
    check_row(row)
    assert not row["has_audio"] and not row["has_visual"] and not row["has_face"]
    assert len(problems) == 1 and "missing file" in problems[0] and "dia1_utt1.mp4" in problems[0]
    assert "utterance kept" in problems[0]
    row, problems = process_utterance(meld(None), CFG, detector)
    check_row(row)
    assert problems == ["no clip for this utterance (utterance kept, audio/visual marked missing)"]


def test_zero_byte_clip(tmp_path, detector):
    clip = tmp_path / "dia125_utt3.mp4"
    clip.write_bytes(b"")
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert not row["has_audio"] and not row["has_visual"]
    assert len(problems) == 1 and "zero-byte file" in problems[0] and str(clip) in problems[0]


def test_truncated_mp4(tmp_path, detector):
    whole = write_clip(tmp_path / "whole.mp4", duration=2.0, size=(160, 120))
    clip = write_truncated(whole, tmp_path / "cut.mp4", keep_fraction=0.5)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    # the mp4 index (moov) is written last, so half a file cannot be opened at all
    assert not row["has_audio"] and not row["has_visual"]
    assert len(problems) == 1 and "cannot open" in problems[0] and str(clip) in problems[0]


def test_truncated_avi_keeps_what_decoded(tmp_path, detector):
    whole = write_clip(tmp_path / "whole.avi", duration=3.0, size=(160, 120))
    clip = write_truncated(whole, tmp_path / "cut.avi", keep_fraction=0.5)
    row, problems = process_utterance(custom(clip, None, None), CFG, detector)
    check_row(row)
    # the AVI header promises 3 s; half the bytes hold about 1.5 s, which is kept and reported
    assert row["has_visual"] and len(row["scenes"]) == 15 and row["has_audio"]
    assert 1.2 * 16000 < len(row["waveform"]) < 1.6 * 16000
    assert len(problems) == 1 and problems[0].startswith(f"truncated clip {clip}: its header promises 3.00 s")


def test_clip_without_audio_stream(tmp_path, detector):
    clip = write_clip(tmp_path / "v.mp4", duration=1.0, size=(160, 120), audio=False)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert not row["has_audio"] and row["has_visual"] and row["has_face"]
    assert len(problems) == 1 and problems[0].startswith(f"no audio stream in {clip}")


def test_clip_without_video_stream(tmp_path, detector):
    clip = write_clip(tmp_path / "a.mp4", duration=1.0, video=False)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert row["has_audio"] and not row["has_visual"] and not row["has_face"]
    assert len(problems) == 1 and problems[0].startswith(f"no video stream in {clip}")


def test_silent_audio_is_marked_missing(tmp_path, detector):
    clip = write_clip(tmp_path / "s.mp4", duration=1.0, size=(160, 120), silent=True)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert not row["has_audio"] and row["has_visual"]
    assert len(problems) == 1 and problems[0].startswith(f"silent audio in {clip}")


def test_six_channel_48k_audio(tmp_path, detector):
    clip = write_clip(tmp_path / "c51.mp4", duration=2.0, size=(160, 120), audio_channels=6)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert problems == [] and row["has_audio"]
    wave = row["waveform"]
    assert 2.0 * 16000 <= len(wave) <= 2.03 * 16000
    # centre channel (amplitude 0.3) rather than the 6-channel mean (~0.08)
    assert 0.17 < float(np.sqrt(np.mean(wave[4000:-4000] ** 2))) < 0.25


def test_no_face_in_any_frame(tmp_path, detector):
    clip = write_clip(tmp_path / "nf.mp4", duration=1.0, size=(160, 120), face=False)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert row["has_visual"] and row["scenes"].shape[0] == 15 and not row["has_face"]
    assert len(problems) == 1 and problems[0] == f"no face in any of the 15 frames of {clip} (has_face False)"


def test_clip_shorter_than_15_frames(tmp_path, detector):
    clip = write_clip(tmp_path / "short.mp4", duration=8 / 24, fps=24, size=(160, 120))
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert row["has_visual"] and row["scenes"].shape[0] == 8 and row["has_face"]
    assert len(problems) == 1 and problems[0].startswith(f"short clip {clip}: only 8 distinct frames")


def test_zero_length_span(tmp_path, detector):
    clip = write_clip(tmp_path / "dialogue.mp4", duration=3.0, size=(160, 120))
    row, problems = process_utterance(custom(clip, 1.5, 1.5), CFG, detector)
    check_row(row)
    assert row["has_visual"] and row["scenes"].shape[0] == 1 and row["has_face"]
    assert not row["has_audio"]
    assert len(problems) == 1 and problems[0].startswith(f"zero-length span [1.5, 1.5] in {clip}")


def test_span_past_the_end_of_the_video(tmp_path, detector):
    clip = write_clip(tmp_path / "dialogue.mp4", duration=1.0, size=(160, 120))
    row, problems = process_utterance(custom(clip, 5.0, 6.0), CFG, detector)
    check_row(row)
    assert not row["has_audio"] and not row["has_visual"]
    assert len(problems) == 2 and all("past the end" in p and str(clip) in p for p in problems)


def test_clip_many_minutes_long(tmp_path, detector):
    clip = write_clip(tmp_path / "dia38_utt4.mp4", duration=200.0, fps=8, size=(96, 64), face=False)
    row, problems = process_utterance(meld(clip), CFG, detector)
    check_row(row)
    assert row["has_audio"] and row["audio_cut"] and len(row["waveform"]) == 10 * 16000
    assert row["has_visual"] and row["scenes"].shape[0] == 15
    assert any(p.startswith(f"long audio in {clip}: kept the centre 10 s") for p in problems)


def test_iemocap_half_frame_span_and_wav(tmp_path, detector):
    video = write_split_screen_video(tmp_path / "Ses01F_impro01.avi", duration=4.0, fps=30, size=(360, 240))
    wav = write_wav(tmp_path / "Ses01F_impro01_M000.wav", duration=1.2)
    utt = Utterance(
        corpus="iemocap",
        split="train",
        dialogue_id="Ses01F_impro01",
        position=1,
        utterance_id="Ses01F_impro01_M000",
        speaker="Ses01M",
        text="Hi.",
        label="neu",
        clip=str(video),
        start=1.0,
        end=2.2,
        session=1,
        side="right",
        audio=str(wav),
    )
    row, problems = process_utterance(utt, CFG, detector)
    check_row(row)
    assert problems == []
    assert len(row["waveform"]) == round(1.2 * 16000)  # the utterance's own wav, all of it
    assert row["scenes"].shape[0] == 15 and row["has_face"]
    corner = row["scenes"][:, :, 2, 2]  # right half: blue background
    assert (corner[:, 2] > 150).all() and (corner[:, 0] < 90).all()
    assert (row["face_box"][:, 2] <= 180 + 1).all()  # boxes in the half frame's coordinates
    left = Utterance(**{**utt.__dict__, "utterance_id": "Ses01F_impro01_F000", "side": "left"})
    row_l, _ = process_utterance(left, CFG, None)
    assert (row_l["scenes"][:, 0, 2, 2] > 150).all()  # left half: red


def test_iemocap_missing_video_keeps_the_wav(tmp_path, detector):
    wav = write_wav(tmp_path / "u.wav", duration=1.0)
    utt = Utterance(
        corpus="iemocap",
        split="train",
        dialogue_id="Ses01F_impro01",
        position=0,
        utterance_id="Ses01F_impro01_F000",
        speaker="Ses01F",
        text="Hi.",
        label="neu",
        clip=str(tmp_path / "missing.avi"),
        start=0.0,
        end=1.0,
        side="left",
        audio=str(wav),
    )
    row, problems = process_utterance(utt, CFG, detector)
    check_row(row)
    assert row["has_audio"] and not row["has_visual"]
    assert len(problems) == 1 and "missing.avi" in problems[0] and "visual marked missing" in problems[0]


def test_stereo_mean_through_process_utterance(tmp_path):
    t = np.arange(48000) / 48000
    left = (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    clip = encode_media(
        tmp_path / "st.mp4",
        frames=None,
        n_frames=0,
        fps=24,
        size=(64, 48),
        audio=np.stack([left, -left]),
        sample_rate=48000,
    )
    row, problems = process_utterance(meld(clip), CFG, None)
    # L and -R cancel in the mean: silent, hence marked missing (a centre pick would not cancel)
    assert not row["has_audio"] and problems[0].startswith("silent audio")
