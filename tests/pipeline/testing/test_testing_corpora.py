"""The generated media files and miniature corpus trees of pipeline.testing: real files, decoded with PyAV."""

from __future__ import annotations

import hashlib
import wave

import av
import numpy as np
import pytest

from pipeline.testing.av_files import write_clip, write_split_screen_video, write_truncated, write_wav
from pipeline.testing.iemocap_tree import iemocap_dialogue_turns, make_iemocap_tree
from pipeline.testing.meld_tree import MELD_EMOTIONS, format_srt_time, make_meld_tree
from pipeline.testing.signals import LABEL_TONE_HZ


def _streams(path):
    with av.open(str(path)) as c:
        return {s.type: s.codec_context.name for s in c.streams}


def _audio_channels(path) -> int:
    with av.open(str(path)) as c:
        return c.streams.audio[0].codec_context.channels


def _first_frame(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_write_clip_mp4_streams_size_and_channels(tmp_path):
    p = write_clip(tmp_path / "a.mp4", duration=1.0, size=(160, 120), audio_channels=6)
    assert _streams(p) == {"video": "h264", "audio": "aac"}
    assert _audio_channels(p) == 6
    frame = _first_frame(p)
    assert frame.shape == (120, 160, 3)
    with av.open(str(p)) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert n == 24


def test_write_clip_5_1_centre_channel_is_loudest(tmp_path):
    p = write_clip(tmp_path / "a.mp4", duration=1.0, size=(64, 48), audio_channels=6)
    with av.open(str(p)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    rms = np.sqrt((audio**2).mean(axis=1))
    assert audio.shape[0] == 6
    assert int(np.argmax(rms)) == 2


def test_write_clip_video_only_audio_only_and_avi(tmp_path):
    assert _streams(write_clip(tmp_path / "v.mp4", duration=0.5, size=(64, 48), audio=False)) == {
        "video": "h264"
    }
    assert _streams(write_clip(tmp_path / "a.mp4", duration=0.5, video=False)) == {"audio": "aac"}
    assert _streams(write_clip(tmp_path / "c.avi", duration=0.5, size=(64, 48))) == {
        "video": "mpeg4",
        "audio": "pcm_s16le",
    }
    with pytest.raises(ValueError):
        write_clip(tmp_path / "x.mp4", video=False, audio=False)


def test_write_clip_is_byte_reproducible(tmp_path):
    a = write_clip(tmp_path / "a.mp4", duration=0.5, size=(96, 64), seed=3)
    b = write_clip(tmp_path / "b.mp4", duration=0.5, size=(96, 64), seed=3)
    c = write_clip(tmp_path / "c.mp4", duration=0.5, size=(96, 64), seed=4)
    md5 = [hashlib.md5(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert md5[0] == md5[1] != md5[2]


def test_silent_clip_is_silent_and_tone_has_the_pitch(tmp_path):
    p = write_clip(tmp_path / "s.mp4", duration=1.0, video=False, silent=True)
    with av.open(str(p)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert np.abs(audio).max() < 1e-3
    p = write_clip(tmp_path / "t.mp4", duration=1.0, video=False, tone_hz=440.0, audio_channels=1)
    with av.open(str(p)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)[0]
    spectrum = np.abs(np.fft.rfft(audio[:48000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over one second


def test_face_position_moves_the_face(tmp_path):
    left = _first_frame(
        write_clip(tmp_path / "l.mp4", duration=0.2, size=(160, 120), audio=False, face_pos=(0.25, 0.5))
    )
    right = _first_frame(
        write_clip(tmp_path / "r.mp4", duration=0.2, size=(160, 120), audio=False, face_pos=(0.75, 0.5))
    )
    bg = np.array((40, 60, 90))
    # columns where the frame differs from the background
    cols_l = np.where((np.abs(left.astype(int) - bg).sum(axis=2) > 60).any(axis=0))[0]
    cols_r = np.where((np.abs(right.astype(int) - bg).sum(axis=2) > 60).any(axis=0))[0]
    assert cols_l.mean() < 80 < cols_r.mean()


def test_write_wav_is_16k_mono_int16(tmp_path):
    p = write_wav(tmp_path / "x.wav", duration=0.5)
    with wave.open(str(p)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth(), w.getnframes()) == (1, 16000, 2, 8000)


def test_truncated_mp4_does_not_decode(tmp_path):
    src = write_clip(tmp_path / "a.mp4", duration=1.0, size=(64, 48))
    bad = write_truncated(src, tmp_path / "bad.mp4", keep_fraction=0.3)
    assert bad.stat().st_size == int(src.stat().st_size * 0.3)
    with pytest.raises(av.error.FFmpegError):
        with av.open(str(bad)) as c:
            for _ in c.decode(video=0):
                pass


def test_split_screen_video_halves(tmp_path):
    p = write_split_screen_video(tmp_path / "d.avi", duration=0.3, size=(120, 80), face=False)
    frame = _first_frame(p)
    assert frame.shape == (80, 120, 3)
    assert frame[:, :60, 0].mean() > 150 > frame[:, 60:, 0].mean()
    assert frame[:, 60:, 2].mean() > 150 > frame[:, :60, 2].mean()


def test_format_srt_time():
    assert format_srt_time(3661.5) == "01:01:01,500"
    assert format_srt_time(61.28, one_digit_hour=True, ms_digits=2) == "0:01:01,28"


def test_meld_tree_layout_and_traps(tmp_path):
    root = make_meld_tree(tmp_path, n_dialogues=2, utterances_per_dialogue=3, size=(64, 48), duration=0.5)
    raw = root / "MELD.Raw"
    train = (raw / "train_sent_emo.csv").read_bytes()
    assert train.startswith(
        b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,"
        b"Season,Episode,StartTime,EndTime\r\n"
    )
    assert train.endswith(b"\r\n")
    assert "\u2019".encode() in train
    assert b'"0:01:03,28"' in train  # one-digit hour and 2-digit ms
    names = sorted(p.name for p in (raw / "train_splits").iterdir())
    # dialogue ids 0, 2 (1 missing); dia0 has utterances 0, 1, 3 (gap); last clip missing
    assert names == [
        "._dia0_utt0.mp4",
        "dia0_utt0.mp4",
        "dia0_utt1.mp4",
        "dia0_utt3.mp4",
        "dia2_utt0.mp4",
        "dia2_utt1.mp4",
    ]
    assert (raw / "train_splits" / "dia0_utt1.mp4").stat().st_size == 0
    assert (raw / "dev_splits_complete" / "dia0_utt2.mp4").exists()  # extra clip, no row
    assert _audio_channels(raw / "dev_splits_complete" / "dia0_utt0.mp4") == 6
    test_dir = raw / "output_repeated_splits_test"
    assert (test_dir / "dia0_utt0.mp4").exists() and (test_dir / "final_videos_testdia0_utt0.mp4").exists()


def test_meld_tree_old_encoding_uses_c1_and_lf(tmp_path):
    make_meld_tree(tmp_path, n_dialogues=1, splits=("train",), clips=False, layout="flat", old_encoding=True)
    data = (tmp_path / "train_sent_emo.csv").read_bytes()
    assert b"\r\n" not in data
    assert "\x92".encode() in data and "\u2019".encode() not in data


def test_iemocap_tree_files(tmp_path):
    top = make_iemocap_tree(
        tmp_path,
        sessions=(1,),
        dialogues_per_session=2,
        utterances_per_dialogue=3,
        video_size=(96, 64),
        fps=10,
    )
    s1 = top / "Session1"
    emo = (s1 / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").read_text()
    assert emo.startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n[1.5000 - 2.5000]\t")
    assert "dom  2;" in emo
    trn = (s1 / "dialog" / "transcriptions" / "Ses01F_impro01.txt").read_text().splitlines()
    assert trn[1].startswith("Ses01F_impro01_MXX0 ")
    assert (s1 / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").exists()
    wav = s1 / "sentences" / "wav" / "Ses01M_impro01" / "Ses01M_impro01_M000.wav"
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
    assert _streams(s1 / "dialog" / "avi" / "DivX" / "Ses01M_impro01.avi")["video"] == "mpeg4"


def _pitch(samples: np.ndarray, rate: int) -> float:
    n = len(samples) - len(samples) % rate or len(samples)
    spectrum = np.abs(np.fft.rfft(samples[:n]))
    return float(np.argmax(spectrum)) * rate / n


def test_tone_for_label_makes_pitch_follow_the_label(tmp_path):
    from pipeline.corpora.meld import prepare_meld

    root = make_meld_tree(
        tmp_path / "m",
        n_dialogues=1,
        utterances_per_dialogue=7,
        splits=("dev",),
        traps=False,
        tone_for_label=True,
        duration=1.0,
        size=(64, 48),
    )
    utts = prepare_meld(root)
    assert {u.label for u in utts} == set(MELD_EMOTIONS)
    for u in utts:
        with av.open(u.clip) as c:
            audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1).mean(axis=0)
        assert abs(_pitch(audio, 48000) - LABEL_TONE_HZ[u.label]) <= 2, u.id
    top = make_iemocap_tree(
        tmp_path / "i",
        sessions=(1,),
        dialogues_per_session=1,
        utterances_per_dialogue=3,
        video=False,
        tone_for_label=True,
    )
    for wav_path in sorted((top / "Session1" / "sentences" / "wav" / "Ses01F_impro01").glob("S*.wav")):
        with wave.open(str(wav_path)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
        code = next(
            t["label"]
            for t in iemocap_dialogue_turns("Ses01F_impro01", 3, seed=0, offset=0)
            if t["utt_id"] == wav_path.stem
        )
        assert abs(_pitch(pcm, 16000) - LABEL_TONE_HZ[code]) <= 2, wav_path.name


def test_meld_tree_can_be_large_enough_for_a_benchmark(tmp_path):
    root = make_meld_tree(
        tmp_path,
        n_dialogues=5,
        utterances_per_dialogue=10,
        splits=("train",),
        traps=False,
        duration=0.2,
        size=(32, 24),
    )
    assert len(list((root / "MELD.Raw" / "train_splits").glob("*.mp4"))) == 50
