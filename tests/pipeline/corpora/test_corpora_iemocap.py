"""IEMOCAP reader on miniature ``IEMOCAP_full_release`` trees in the real format (docs/CORPORA.md 3)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.corpora import PrepareReport, summarize
from pipeline.corpora.base import FOUND, MISSING, NO_FOLDER, ZERO_BYTE, CorpusError
from pipeline.corpora.iemocap import (
    choose_dev_dialogues,
    clean_text,
    parse_emo_evaluation,
    prepare_iemocap,
    speaker_and_side,
)
from pipeline.manifest import Utterance, validate
from pipeline.testing.iemocap_tree import make_iemocap_tree

SMALL = {
    "sessions": (1, 5),
    "dialogues_per_session": 2,
    "utterances_per_dialogue": 4,
    "video_size": (96, 64),
    "fps": 10.0,
}


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory) -> Path:
    return make_iemocap_tree(tmp_path_factory.mktemp("iemocap"), **SMALL)


def test_manifest_field_by_field(iemocap_root):
    report = PrepareReport("iemocap")
    utts = prepare_iemocap(iemocap_root, report=report)
    s1 = iemocap_root / "Session1"

    def u(split, dialogue, pos, utt, speaker, side, label, text, start, end):
        session = int(dialogue[4])
        sdir = iemocap_root / f"Session{session}"
        return Utterance(
            corpus="iemocap",
            split=split,
            dialogue_id=dialogue,
            position=pos,
            utterance_id=utt,
            speaker=speaker,
            text=text,
            label=label,
            sentiment=None,
            clip=os.path.abspath(sdir / "dialog" / "avi" / "DivX" / f"{dialogue}.avi"),
            start=start,
            end=end,
            session=session,
            side=side,
            audio=os.path.abspath(sdir / "sentences" / "wav" / dialogue / f"{utt}.wav"),
        )

    d1, d2 = "Ses01F_impro01", "Ses01M_impro01"
    # order = transcription order (EmoEvaluation lists F turns first); the _MXX0 line is skipped;
    # speaker from the last group; the dialogue letter's actor sits left; [LAUGHTER]/[BREATHING] removed
    expected_s1 = [
        u("train", d1, 0, f"{d1}_F000", "Ses01F", "left", "neu", "Excuse me.", 1.5, 2.5),
        u("train", d1, 1, f"{d1}_M000", "Ses01M", "right", "fru", "Do you have your forms?", 3.0, 4.0),
        u("train", d1, 2, f"{d1}_F001", "Ses01F", "left", "ang", "Yeah.", 4.5, 5.5),
        u("train", d1, 3, f"{d1}_M001", "Ses01M", "right", "sad", "I don't know.", 6.0, 7.0),
        u("dev", d2, 0, f"{d2}_F000", "Ses01F", "right", "hap", "Okay, so what do you want?", 1.5, 2.5),
        u("dev", d2, 1, f"{d2}_M000", "Ses01M", "left", "exc", "That's not fair!", 3.0, 4.0),
        u("dev", d2, 2, f"{d2}_F001", "Ses01F", "right", "xxx", "Excuse me.", 4.5, 5.5),  # xxx kept
        u("dev", d2, 3, f"{d2}_M001", "Ses01M", "left", "sur", "Do you have your forms?", 6.0, 7.0),
    ]
    assert utts[:8] == expected_s1
    assert [u.split for u in utts[8:]] == ["test"] * 8
    assert {u.session for u in utts[8:]} == {5}
    assert [u.utterance_id for u in utts[8:12]] == [
        "Ses05F_impro01_F000",
        "Ses05F_impro01_M000",
        "Ses05F_impro01_F001",
        "Ses05F_impro01_M001",
    ]
    assert set(report.clip_status.values()) == {FOUND} and set(report.audio_status.values()) == {FOUND}
    assert report.sources["dev dialogues"] == d2
    assert report.ignored == {"train": [], "dev": [], "test": []}
    assert report.unlabelled_lines == dict.fromkeys(
        {u.dialogue_id for u in utts}, 1
    )  # one _MXX0 per dialogue
    assert any(n.startswith("4 transcription line(s) without a label skipped") for n in report.notes)
    assert validate(utts) == []
    assert (s1 / "dialog" / "EmoEvaluation" / "Categorical").is_dir()  # present, and ignored


def test_nested_copy_and_parent_root(tmp_path):
    top = make_iemocap_tree(
        tmp_path,
        sessions=(2,),
        dialogues_per_session=1,
        utterances_per_dialogue=2,
        video=False,
        wavs=False,
        nested=True,
    )
    from_top = prepare_iemocap(top)
    from_parent = prepare_iemocap(tmp_path)
    assert from_top == from_parent and len(from_top) == 2
    assert all(u.clip is None and u.audio is None for u in from_top)


def test_missing_and_broken_media_are_reported(tmp_path):
    top = make_iemocap_tree(
        tmp_path,
        sessions=(1,),
        dialogues_per_session=2,
        utterances_per_dialogue=2,
        video_size=(64, 48),
        fps=5.0,
    )
    s1 = top / "Session1"
    (s1 / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M000.wav").unlink()
    (s1 / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F099.wav").write_bytes(b"RIFF")  # no label
    (s1 / "dialog" / "avi" / "DivX" / "Ses01M_impro01.avi").write_bytes(b"")
    report = PrepareReport("iemocap")
    utts = {u.utterance_id: u for u in prepare_iemocap(top, report=report)}
    assert utts["Ses01F_impro01_M000"].audio is None
    assert report.audio_status["iemocap/train/Ses01F_impro01_M000"] == MISSING
    assert utts["Ses01M_impro01_F000"].clip is None
    assert {report.clip_status[u.id] for u in utts.values() if u.dialogue_id == "Ses01M_impro01"} == {
        ZERO_BYTE
    }
    assert report.ignored["train"] == ["Ses01F_impro01_F099.wav"]
    text = summarize(list(utts.values()), report)
    assert "audio missing" in text and "clips zero-byte" in text


def test_no_media_folders(tmp_path):
    top = make_iemocap_tree(
        tmp_path, sessions=(5,), dialogues_per_session=1, utterances_per_dialogue=2, video=False, wavs=False
    )
    report = PrepareReport("iemocap")
    utts = prepare_iemocap(top, report=report)
    assert set(report.clip_status.values()) == {NO_FOLDER} == set(report.audio_status.values())
    assert {u.split for u in utts} == {"test"}
    assert report.sources["dev dialogues"].startswith("(none")


def test_annotation_errors_name_the_file(tmp_path):
    top = make_iemocap_tree(
        tmp_path, sessions=(1,), dialogues_per_session=1, utterances_per_dialogue=2, video=False, wavs=False
    )
    emo = top / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    good = emo.read_text()
    emo.write_text(good.replace("[1.5000 - 2.5000]\t", "[1.5000 2.5000]\t"))
    with pytest.raises(CorpusError, match=r"Ses01F_impro01\.txt:3: not an EmoEvaluation summary line"):
        prepare_iemocap(top)
    emo.write_text(good)
    (top / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt").unlink()
    with pytest.raises(CorpusError, match=r"transcriptions/Ses01F_impro01\.txt is missing"):
        prepare_iemocap(top)


def test_labelled_turn_without_transcription_is_skipped_and_noted(tmp_path):
    top = make_iemocap_tree(
        tmp_path, sessions=(1,), dialogues_per_session=1, utterances_per_dialogue=3, video=False, wavs=False
    )
    trn = top / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt"
    trn.write_text("".join(line + "\n" for line in trn.read_text().splitlines() if "_M000" not in line))
    report = PrepareReport("iemocap")
    utts = prepare_iemocap(top, report=report)
    assert [u.utterance_id for u in utts] == ["Ses01F_impro01_F000", "Ses01F_impro01_F001"]
    assert [u.position for u in utts] == [0, 1]
    assert any("Ses01F_impro01_M000" in n for n in report.notes)


def test_no_sessions_lists_what_is_expected(tmp_path):
    (tmp_path / "Documentation").mkdir()
    with pytest.raises(CorpusError) as e:
        prepare_iemocap(tmp_path)
    assert "Session1" in str(e.value) and "EmoEvaluation" in str(e.value) and "Documentation/" in str(e.value)


def test_units():
    assert speaker_and_side("Ses01F_impro01_M000") == ("Ses01M", "right")
    assert speaker_and_side("Ses03M_script02_1_M012") == ("Ses03M", "left")
    assert speaker_and_side("Ses05M_script01_1b_F003") == ("Ses05F", "right")
    with pytest.raises(ValueError):
        speaker_and_side("Ses01F_impro01_MXX0")
    assert clean_text("Yeah. [LAUGHTER]  okay [GARBAGE]") == "Yeah. okay"
    assert clean_text("[LAUGHTER]") == "[LAUGHTER]"
    full = [f"Ses0{s}{g}_impro{i:02d}" for s in range(1, 5) for g in "FM" for i in range(1, 16)]
    assert len(full) == 120  # Sessions 1-4 of the real corpus have 120 dialogues
    dev = choose_dev_dialogues(full)
    assert len(dev) == 20 and set(dev) <= set(full)
    assert dev == choose_dev_dialogues(list(reversed(full)))  # input order does not matter
    assert len(choose_dev_dialogues(full[:12])) == 2
    assert dev != choose_dev_dialogues(full, seed=1)
    assert choose_dev_dialogues(["a"]) == [] and len(choose_dev_dialogues(["a", "b"])) == 1


def test_emo_evaluation_blocks(iemocap_root):
    lines = parse_emo_evaluation(
        iemocap_root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    )
    assert [(e.utt_id[-4:], e.label, e.start, e.end) for e in lines] == [
        ("F000", "neu", 1.5, 2.5),
        ("F001", "ang", 4.5, 5.5),
        ("M000", "fru", 3.0, 4.0),
        ("M001", "sad", 6.0, 7.0),
    ]


def test_left_right_halves_of_the_dialogue_video(iemocap_root):
    utts = prepare_iemocap(iemocap_root)
    u = next(x for x in utts if x.side == "left")
    with av.open(u.clip) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    w = frame.shape[1]
    left, right = frame[:, : w // 2].reshape(-1, 3), frame[:, w // 2 :].reshape(-1, 3)
    # the generator paints the left half red and the right half blue (faces aside)
    assert np.median(left[:, 0]) > 150 > np.median(left[:, 2])
    assert np.median(right[:, 2]) > 150 > np.median(right[:, 0])
