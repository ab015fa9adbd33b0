"""The bundled sample corpus: prepares through the MELD reader, clips decode, rebuilds bit-for-bit."""

from __future__ import annotations

from collections import Counter

import av
import pytest
from click.testing import CliRunner

from cli import main as m2f
from pipeline.corpora import PrepareReport, prepare_corpus
from pipeline.corpora.base import FOUND
from pipeline.corpora.meld import EMOTIONS
from pipeline.corpora.sample import SAMPLE_DIR, build_sample, md5_tree, prepare_sample
from pipeline.manifest import validate
from pipeline.testing.signals import LABEL_TONE_HZ


def test_sample_prepares_with_all_labels_and_clips():
    report = PrepareReport("sample")
    utts = prepare_corpus("sample", None, report)
    assert len(utts) == 25 and 20 <= len(utts) <= 30
    assert Counter(u.split for u in utts) == {"train": 14, "dev": 5, "test": 6}
    assert len({(u.split, u.dialogue_id) for u in utts}) == 4
    assert {u.label for u in utts if u.split == "train"} == set(EMOTIONS)
    assert {u.corpus for u in utts} == {"sample"} and utts[0].id == "sample/train/dia0_utt0"
    assert set(report.clip_status.values()) == {FOUND}
    assert validate(utts) == []
    assert prepare_sample() == utts


def test_sample_is_small_and_clips_decode():
    total = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert total < 2_000_000
    channels = Counter()
    for u in prepare_sample():
        with av.open(u.clip) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            channels[c.streams.audio[0].codec_context.channels] += 1
            n = sum(1 for _ in c.decode(video=0))
            assert n == 36  # 1.5 s at 24 fps
    assert channels == {2: 24, 6: 1}


def test_sample_audio_pitch_follows_the_label():
    import numpy as np

    for u in [x for x in prepare_sample() if x.split == "dev"]:
        with av.open(u.clip) as c:
            audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1).mean(axis=0)
        spectrum = np.abs(np.fft.rfft(audio[:48000]))  # 1 s at 48 kHz: 1 Hz bins
        assert abs(int(np.argmax(spectrum)) - LABEL_TONE_HZ[u.label]) <= 2, u.id


@pytest.mark.slow  # regenerates all 25 clips; quick: the bundled ones prepare, decode and carry their labels
def test_sample_rebuilds_bit_for_bit(tmp_path):
    assert md5_tree(build_sample(tmp_path)) == md5_tree(SAMPLE_DIR)


def test_cli_prepare_sample(tmp_path):
    out = tmp_path / "sample.jsonl"
    res = CliRunner().invoke(m2f, ["prepare", "--dataset", "sample", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "total" in res.output and "wrote 25 utterances" in res.output
    assert len(out.read_text().splitlines()) == 25


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_sample_csvs_are_real_meld_format(split):
    data = (SAMPLE_DIR / f"{split}_sent_emo.csv").read_bytes()
    assert data.startswith(b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,")
    assert data.endswith(b"\r\n")


def test_sample_media_is_the_whole_clip_not_the_csv_times():
    """The sample is MELD-layout: its CSV times are episode times, so media must use the whole clip."""
    from pipeline.utterance.process import FaceDetector, MediaConfig, process_utterance

    utt = prepare_sample()[0]
    assert utt.start is not None and utt.start > 2  # the CSV times lie past the clip's end
    cfg = MediaConfig()
    row, problems = process_utterance(utt, cfg, FaceDetector(cfg))
    assert problems == []
    assert row["has_audio"] and row["has_visual"] and row["has_face"]
    assert len(row["scenes"]) == cfg.n_frames
