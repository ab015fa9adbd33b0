"""Custom corpus CSV: a user's own videos, paths relative to the CSV, clear errors."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main as m2f
from pipeline.corpora import PrepareReport
from pipeline.corpora.base import FOUND, MISSING, NOT_GIVEN, ZERO_BYTE, CorpusError
from pipeline.corpora.custom import hash_split, prepare_custom
from pipeline.manifest import Utterance, validate
from pipeline.testing.av_files import write_clip

HEADER = "dialogue_id,utterance_index,speaker,text,label,clip,start,end,split\n"


def _corpus(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    csv_path = tmp_path / "corpus.csv"
    csv_path.write_text(header + body, encoding="utf-8")
    return csv_path


@pytest.fixture()
def videos(tmp_path) -> Path:
    write_clip(tmp_path / "videos" / "call1.mp4", duration=1.0, size=(64, 48))
    write_clip(tmp_path / "clips" / "c2_0.mp4", duration=0.5, size=(64, 48))
    (tmp_path / "clips" / "empty.mp4").write_bytes(b"")
    return tmp_path


def test_custom_csv_field_by_field(videos):
    csv_path = _corpus(
        videos,
        (
            "call1,5,Bob,Fine.,neutral,videos/call1.mp4,0.6,0.9,train\n"  # rows out of order
            'call1,0,Ann,"Hi, how are you?",joy,videos/call1.mp4,0.0,0.5,train\n'
            "call2,0,Ann,Where is it?,,clips/c2_0.mp4,,,test\n"  # no label, whole clip
            "call2,1,Bob,Here.,anger,clips/missing.mp4,,,test\n"
            "call2,2,Ann,Oh.,sadness,clips/empty.mp4,,,test\n"
            "call2,3,Bob,No video.,neutral,,,,test\n"
        ),
    )
    report = PrepareReport("custom")
    utts = prepare_custom(csv_path, report=report)

    def u(split, dia, pos, idx, speaker, text, label, clip, start=None, end=None):
        return Utterance(
            corpus="custom",
            split=split,
            dialogue_id=dia,
            position=pos,
            utterance_id=idx,
            speaker=speaker,
            text=text,
            label=label,
            clip=None if clip is None else os.path.abspath(videos / clip),
            start=start,
            end=end,
        )

    assert utts == [
        u("train", "call1", 0, "0", "Ann", "Hi, how are you?", "joy", "videos/call1.mp4", 0.0, 0.5),
        u("train", "call1", 1, "5", "Bob", "Fine.", "neutral", "videos/call1.mp4", 0.6, 0.9),
        u("test", "call2", 0, "0", "Ann", "Where is it?", None, "clips/c2_0.mp4"),
        u("test", "call2", 1, "1", "Bob", "Here.", "anger", None),
        u("test", "call2", 2, "2", "Ann", "Oh.", "sadness", None),
        u("test", "call2", 3, "3", "Bob", "No video.", "neutral", None),
    ]
    assert [report.clip_status[x.id] for x in utts] == [FOUND, FOUND, FOUND, MISSING, ZERO_BYTE, NOT_GIVEN]
    assert validate(utts) == []
    assert prepare_custom(videos) == utts  # the folder holding exactly one CSV works too


def test_without_split_column_dialogues_split_by_hash(tmp_path):
    rows = "".join(f"d{i},0,A,hello {i},,\n" for i in range(200))
    utts = prepare_custom(
        _corpus(tmp_path, rows, header="dialogue_id,utterance_index,speaker,text,label,clip\n")
    )
    splits = Counter(u.split for u in utts)
    assert all(u.split == hash_split(u.dialogue_id) for u in utts)
    assert 140 <= splits["train"] <= 180 and splits["dev"] >= 8 and splits["test"] >= 8
    assert hash_split("d0") == hash_split("d0")


def test_bom_and_extra_columns_are_fine(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(
        "\ufeffspeaker,text,dialogue_id,utterance_index,clip,notes\nA,Hi,x,0,,whatever\n".encode()
    )
    (u,) = prepare_custom(path)
    assert (u.dialogue_id, u.speaker, u.text, u.label) == ("x", "A", "Hi", None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("d,0,A,Hi,joy,/etc/passwd,,,train\n", r"corpus\.csv:2: clip '/etc/passwd' is an absolute path"),
        ("d,0,A,Hi,joy,../x.mp4,,,train\n", r"corpus\.csv:2: clip '../x.mp4' points outside"),
        ("d,0,A,Hi,joy,a/../../x.mp4,,,train\n", r"points outside"),
        ("d,0,A,Hi,joy,C:\\v\\x.mp4,,,train\n", r"is an absolute path"),
        ("d,0,A,Hi,joy,\\etc\\passwd,,,train\n", r"is an absolute path"),  # issue 17.7
        ("d,0,A,Hi,joy,\\\\host\\share\\x.mp4,,,train\n", r"is an absolute path"),
        ("d,0,A,Hi,joy,C:x.mp4,,,train\n", r"is an absolute path"),
        ("d,0,A,Hi,joy,a\\..\\..\\x.mp4,,,train\n", r"points outside"),
        ("d,0,A,Hi,happy,,,,train\n", r"corpus\.csv:2: unknown label 'happy'; allowed: joy, neutral"),
        ("d,x,A,Hi,joy,,,,train\n", r"corpus\.csv:2: utterance_index 'x'"),
        ("d,0,A,,joy,,,,train\n", r"corpus\.csv:2: empty text"),
        ("d,0,A,Hi,joy,,1.0,,train\n", r"give both start and end"),
        ("d,0,A,Hi,joy,,2.0,1.0,train\n", r"end 1.0 must be after start 2.0"),
        ("d,0,A,Hi,joy,,,,valid\n", r"corpus\.csv:2: split 'valid' must be one of train, dev, test"),
        (
            "d,0,A,Hi,joy,,,,train\nd,0,B,Yo,joy,,,,train\n",
            r"corpus\.csv:3: dialogue 'd' utterance_index 0 already",
        ),
        (
            "d,0,A,Hi,joy,,,,train\nd,1,B,Yo,joy,,,,test\n",
            r"corpus\.csv:3: dialogue 'd' is 'test' here but 'train'",
        ),
        ("d,0,A,Hi,joy,,,,train,extra\n", r"corpus\.csv:2: wrong number of fields"),
        ("a b,0,A,Hi,joy,,,,train\n", r"dialogue_id 'a b'"),
    ],
)
def test_errors_name_file_line_and_fix(tmp_path, body, message):
    with pytest.raises(CorpusError, match=message):
        prepare_custom(_corpus(tmp_path, body), labels={"joy", "neutral"})


def test_missing_columns_and_bad_roots(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus\.csv:1: missing column\(s\) utterance_index, clip"):
        prepare_custom(_corpus(tmp_path, "d,A,Hi\n", header="dialogue_id,speaker,text\n"))
    (tmp_path / "second.csv").write_text(HEADER)
    with pytest.raises(CorpusError, match="expected exactly one .csv.*corpus.csv, second.csv"):
        prepare_custom(tmp_path)
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_custom(tmp_path / "nope")
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no rows"):
        prepare_custom(_corpus(empty, ""))


def test_cli_custom(videos):
    _corpus(videos, "call1,0,Ann,Hi,joy,videos/call1.mp4,,,dev\n")
    res = CliRunner().invoke(m2f, ["prepare", "--dataset", "custom", "--root", str(videos / "corpus.csv")])
    assert res.exit_code == 0, res.output
    assert next(line for line in res.output.splitlines() if line.startswith("dev")).split()[:4] == [
        "dev",
        "1",
        "1",
        "1",
    ]
    res = CliRunner().invoke(m2f, ["prepare", "--dataset", "custom", "--root", str(videos / "missing.csv")])
    assert res.exit_code == 1 and "Error: custom corpus" in res.output
