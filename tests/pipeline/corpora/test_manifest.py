"""Manifest records: deterministic ids, JSONL round-trip with the contract keys, validate()."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.corpora import prepare_corpus
from pipeline.manifest import (
    JSONL_KEYS,
    Utterance,
    group_dialogues,
    iter_splits,
    make_utterance_id,
    read_jsonl,
    validate,
    write_jsonl,
)


def _u(**kw) -> Utterance:
    base = {
        "corpus": "meld",
        "split": "train",
        "dialogue_id": "0",
        "position": 0,
        "utterance_id": "0",
        "speaker": "Joey",
        "text": "Hi.",
        "label": "joy",
        "sentiment": "positive",
    }
    base.update(kw)
    return Utterance(**base)


def test_ids():
    assert _u().id == "meld/train/dia0_utt0"
    assert make_utterance_id("iemocap", "test", "Ses05F_impro01", "Ses05F_impro01_M003") == (
        "iemocap/test/Ses05F_impro01_M003"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        _u().text = "x"


def test_jsonl_round_trip_keys_and_unicode(tmp_path):
    utts = prepare_corpus("sample", None)
    utts.append(
        _u(
            corpus="iemocap",
            dialogue_id="Ses01F_impro01",
            utterance_id="Ses01F_impro01_M000",
            label="xxx",
            sentiment=None,
            clip="/x/Ses01F_impro01.avi",
            start=1.5,
            end=2.25,
            session=1,
            side="right",
            audio="/x/Ses01F_impro01_M000.wav",
            text="It\u2019s \u201cfine\u201d\u2026",
        )
    )
    path = write_jsonl(utts, tmp_path / "sub" / "m.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(utts)
    first = json.loads(lines[0])
    assert tuple(first) == JSONL_KEYS  # exactly the contract keys, in order (no audio key when unset)
    last = json.loads(lines[-1])
    assert last["audio"] == "/x/Ses01F_impro01_M000.wav" and "\u2019" in lines[-1]  # not \\u-escaped
    assert read_jsonl(path) == utts
    assert not (tmp_path / "sub" / "m.jsonl.tmp").exists()


def test_read_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    good = json.dumps(_u().to_json())
    bad = json.loads(good)
    bad["id"] = "meld/train/dia9_utt9"
    path.write_text(good + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:3: .*does not match its fields"):
        read_jsonl(path)
    path.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        read_jsonl(path)


def test_validate_reports_each_problem_by_id():
    ok = [_u(), _u(position=1, utterance_id="3")]
    assert validate(ok) == []
    problems = validate(
        [
            _u(),
            _u(),  # duplicate id
            _u(dialogue_id="1", position=1),  # positions not 0..n-1
            _u(dialogue_id="2", text=" "),  # empty text
            _u(dialogue_id="3", speaker=""),  # empty speaker
            _u(dialogue_id="4", start=2.0, end=1.0),  # end before start
            _u(dialogue_id="5", split="valid"),  # unknown split
            _u(dialogue_id="6", side="middle"),  # bad side
        ]
    )
    joined = "\n".join(problems)
    assert "meld/train/dia0_utt0: duplicate id (2 times)" in joined
    assert "meld/train/1: positions [1] are not 0..0" in joined
    assert "meld/train/dia2_utt0: empty text" in joined
    assert "meld/train/dia3_utt0: empty speaker" in joined
    assert "meld/train/dia4_utt0: end 1.0 before start 2.0" in joined
    assert "meld/valid/dia5_utt0: unknown split 'valid'" in joined
    assert "meld/train/dia6_utt0: side 'middle'" in joined


def test_group_dialogues_and_splits():
    utts = [_u(split="test", position=1, utterance_id="1"), _u(split="test"), _u(dialogue_id="7")]
    dialogues = group_dialogues(utts)
    assert [d.id for d in dialogues] == ["meld/test/0", "meld/train/7"]
    assert [u.position for u in dialogues[0].utterances] == [0, 1] and len(dialogues[0]) == 2
    assert [s for s, _ in iter_splits(utts)] == ["train", "test"]
