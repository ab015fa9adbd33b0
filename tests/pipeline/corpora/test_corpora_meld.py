"""MELD reader: miniature trees in the real format (every trap of docs/CORPORA.md 7), the real CSVs."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main as m2f
from pipeline.corpora import PrepareReport, prepare_corpus, run_prepare, summarize
from pipeline.corpora.base import FOUND, MISSING, NO_FOLDER, ZERO_BYTE, CorpusError
from pipeline.corpora.meld import normalize_text, parse_time, prepare_meld, read_meld_csv
from pipeline.manifest import Utterance, read_jsonl, validate
from pipeline.testing.meld_tree import make_meld_tree, meld_rows, write_meld_csv

REAL_MELD = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "meld"
SMALL = {"n_dialogues": 2, "utterances_per_dialogue": 3, "duration": 0.4, "size": (64, 48)}


@pytest.fixture(scope="module")
def meld_tree(tmp_path_factory) -> Path:
    return make_meld_tree(tmp_path_factory.mktemp("meld"), **SMALL)


def test_train_manifest_field_by_field(meld_tree):
    report = PrepareReport("meld")
    utts = prepare_meld(meld_tree, report=report)
    train = [u for u in utts if u.split == "train"]
    clips = meld_tree / "MELD.Raw" / "train_splits"

    def u(dia, pos, utt, speaker, text, label, sentiment, clip, start, end):
        return Utterance(
            corpus="meld",
            split="train",
            dialogue_id=dia,
            position=pos,
            utterance_id=utt,
            speaker=speaker,
            text=text,
            label=label,
            sentiment=sentiment,
            clip=None if clip is None else os.path.abspath(clips / clip),
            start=start,
            end=end,
        )

    expected = [
        u(
            "0",
            0,
            "0",
            "Joey",
            "Oh my God, he\u2019s lost it. He\u2019s totally lost it.",
            "neutral",
            "neutral",
            "dia0_utt0.mp4",
            60.0,
            61.5,
        ),
        # zero-byte clip -> None; one-digit hour; 2-digit ms ",28" = 0.28 s
        u("0", 1, "1", "Rachel", "What?", "surprise", "negative", None, 62.0, 63.28),
        # Utterance_ID gap (2 missing): position 2 is utterance 3; doubled quotes unescaped
        u(
            "0",
            2,
            "3",
            "Richard\u2019s Date",
            'I\u2019m thinkin\u2019 she\u2019ll say, "Hey, you\u2019re not Bob."',
            "fear",
            "negative",
            "dia0_utt3.mp4",
            63.78,
            65.78,
        ),
        # Dialogue_ID 1 is missing: the next dialogue is 2
        u("2", 0, "0", "Rachel", "Well\u2026 no  way.", "sadness", "negative", "dia2_utt0.mp4", 120.0, 121.5),
        u(
            "2",
            1,
            "1",
            "Richard\u2019s Date",
            "Okay \u2014 fine, let\u2019s go.",
            "joy",
            "positive",
            "dia2_utt1.mp4",
            122.0,
            123.75,
        ),
        u(
            "2", 2, "2", "Monica", "\u2018Yes\u2019 she said.", "disgust", "negative", None, 124.25, 126.25
        ),  # missing
    ]
    assert train == expected
    assert [report.clip_status[x.id] for x in train] == [FOUND, ZERO_BYTE, FOUND, FOUND, FOUND, MISSING]
    assert validate(utts) == []


def test_dev_test_extras_twins_and_junk(meld_tree):
    report = PrepareReport("meld")
    utts = prepare_meld(meld_tree, report=report)
    # "._dia0_utt0.mp4" junk in train is neither used nor counted
    assert report.ignored == {
        "train": [],
        "dev": ["dia0_utt2.mp4"],
        "test": ["final_videos_testdia99_utt0.mp4"],
    }
    test0 = next(u for u in utts if u.id == "meld/test/dia0_utt0")
    assert Path(test0.clip).name == "final_videos_testdia0_utt0.mp4"
    assert Counter(u.split for u in utts) == {"train": 6, "dev": 6, "test": 6}
    assert [u.utterance_id for u in utts if u.split == "dev" and u.dialogue_id == "0"] == ["0", "1", "3"]
    assert any("final_videos_test" in n for n in report.notes)


def test_old_c1_csvs_normalise_to_the_same_text(tmp_path):
    new = prepare_meld(make_meld_tree(tmp_path / "new", clips=False, layout="flat"))
    old = prepare_meld(make_meld_tree(tmp_path / "old", clips=False, layout="flat", old_encoding=True))
    assert (tmp_path / "old" / "train_sent_emo.csv").read_bytes() != (
        tmp_path / "new" / "train_sent_emo.csv"
    ).read_bytes()
    assert old == new


def test_csvs_alone_and_other_layouts(tmp_path):
    report = PrepareReport("meld")
    utts = prepare_meld(make_meld_tree(tmp_path / "csv", clips=False), report=report)
    assert len(utts) == 3 * 3 * 4 and all(u.clip is None for u in utts)
    assert set(report.clip_status.values()) == {NO_FOLDER}
    for layout in ("flat", "kaggle"):
        report = PrepareReport("meld")
        root = make_meld_tree(tmp_path / layout, splits=("dev",), layout=layout, **SMALL)
        utts = prepare_meld(root, report=report)
        assert {u.split for u in utts} == {"dev"}
        assert Counter(report.clip_status.values())[FOUND] == 6, layout
        assert any(n.startswith("test: no test_sent_emo.csv") for n in report.notes)


def test_prepare_corpus_and_summary(meld_tree):
    report = PrepareReport("meld")
    utts = prepare_corpus("meld", meld_tree, report)
    text = summarize(utts, report)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("split"))
    assert "clips found" in header and "clips zero-byte" in header and "extras ignored" in header
    train = next(line for line in lines if line.startswith("train ")).split()
    assert train == ["train", "2", "6", "4", "1", "1", "0"]  # found, missing, zero-byte, extras
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[:3] == ["total", "6", "18"]
    assert "neutral 1" in text


def test_parse_time_and_normalize():
    assert parse_time("00:20:57,256") == pytest.approx(1257.256)
    assert parse_time("0:06:47,28") == pytest.approx(407.28)  # 2-digit ms = fraction of a second
    assert parse_time("1:00:00,5") == pytest.approx(3600.5)
    with pytest.raises(ValueError):
        parse_time("00:20:57.256")
    assert (
        normalize_text("He\x92s \x93here\x94\x85 \x97 \x91x\x92\xa0y")
        == "He\u2019s \u201chere\u201d\u2026 \u2014 \u2018x\u2019 y"
    )


def _rows_csv(tmp_path: Path, edit) -> Path:
    rows = meld_rows("dev", n_dialogues=1, utterances_per_dialogue=3, traps=False, seed=0)
    edit(rows)
    return write_meld_csv(tmp_path / "dev_sent_emo.csv", rows)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[1].update(Emotion="happy"), ":3: unknown Emotion 'happy'"),
        (lambda rows: rows[2].update(StartTime="00:01:02.000"), ":4: timestamp '00:01:02.000'"),
        (
            lambda rows: rows[2].update(Utterance_ID="0"),
            ":4: Dialogue_ID 0 / Utterance_ID 0 already on line 2",
        ),
        (lambda rows: rows[0].update(Dialogue_ID="x"), ":2: Dialogue_ID 'x'"),
        (lambda rows: rows[0].update(Utterance=" "), ":2: empty Utterance"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, edit, message):
    path = _rows_csv(tmp_path, edit)
    with pytest.raises(
        CorpusError, match="dev_sent_emo.csv" + message.replace("(", r"\(").replace(".", r"\.")
    ):
        read_meld_csv(path)


def test_bad_csv_files(tmp_path):
    path = _rows_csv(tmp_path, lambda rows: None)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"Emotion,", b"Emo,", 1))
    with pytest.raises(CorpusError, match=r"dev_sent_emo\.csv:1: missing column\(s\) Emotion"):
        read_meld_csv(path)
    lines = data.split(b"\r\n")
    lines[2] = lines[2] + b",extra"
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(CorpusError, match=r":3: 12 fields, expected 11"):
        read_meld_csv(path)
    lines = data.split(b"\r\n")
    lines[3] = lines[3][: lines[3].rfind(b',"')]  # EndTime dropped: 10 fields
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(CorpusError, match=r":4: 10 fields, expected 11"):
        read_meld_csv(path)
    path.write_bytes(data.replace("\u2019".encode(), b"\x92"))  # cp1252 bytes: not UTF-8
    with pytest.raises(CorpusError, match=r"dev_sent_emo\.csv:2: not UTF-8"):
        read_meld_csv(path)


def test_root_without_corpus_lists_expected_and_found(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CorpusError) as e:
        prepare_meld(tmp_path)
    msg = str(e.value)
    assert "train_sent_emo.csv" in msg and "train_splits" in msg and "notes.txt, videos/" in msg
    with pytest.raises(CorpusError, match="is not a folder"):
        prepare_meld(tmp_path / "nope")


def test_two_copies_at_the_same_depth_is_an_error(tmp_path):
    make_meld_tree(tmp_path / "a", clips=False, splits=("dev",), layout="flat")
    make_meld_tree(tmp_path / "b", clips=False, splits=("dev",), layout="flat")
    with pytest.raises(CorpusError, match="several dev_sent_emo.csv"):
        prepare_meld(tmp_path)
    shutil.copy(tmp_path / "a" / "dev_sent_emo.csv", tmp_path / "dev_sent_emo.csv")  # shallower wins
    report = PrepareReport("meld")
    prepare_meld(tmp_path, report=report)
    assert report.sources["dev csv"] == str(tmp_path / "dev_sent_emo.csv")


def test_cli_prepare_writes_manifest_and_rejects_empty_root(meld_tree, tmp_path):
    out = tmp_path / "m.jsonl"
    res = CliRunner().invoke(
        m2f, ["prepare", "--dataset", "meld", "--root", str(meld_tree), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "wrote 18 utterances" in res.output
    assert read_jsonl(out) == prepare_meld(meld_tree)
    res = CliRunner().invoke(m2f, ["prepare", "--dataset", "meld", "--root", str(tmp_path / "empty")])
    assert res.exit_code != 0 and "not a folder" in res.output
    res = CliRunner().invoke(m2f, ["prepare", "--dataset", "meld"])
    assert res.exit_code != 0 and "--root is required" in res.output


# --- the real annotation files --------------------------------------------------------------------

needs_real = pytest.mark.skipif(
    not (REAL_MELD / "train_sent_emo.csv").exists(), reason="no ../shared/data/meld"
)


@needs_real
def test_real_meld_counts():
    utts = prepare_meld(REAL_MELD)
    counts = {
        s: (len({u.dialogue_id for u in utts if u.split == s}), sum(u.split == s for u in utts))
        for s in ("train", "dev", "test")
    }
    assert counts == {"train": (1038, 9989), "dev": (114, 1109), "test": (280, 2610)}
    assert validate(utts) == []
    train = Counter(u.label for u in utts if u.split == "train")
    assert train == {
        "neutral": 4710,
        "joy": 1743,
        "surprise": 1205,
        "anger": 1109,
        "sadness": 683,
        "disgust": 271,
        "fear": 268,
    }
    by_id = {u.id: u for u in utts}
    assert by_id["meld/train/dia437_utt2"].end == pytest.approx(407.28)
    assert [u.utterance_id for u in utts if u.split == "dev" and u.dialogue_id == "49"][3:5] == ["3", "6"]
    assert "meld/train/dia60_utt0" not in by_id
    assert sum("\u2019" in u.text for u in utts) > 3000 and not any("\x92" in u.text for u in utts)


@needs_real
def test_real_meld_cli_prints_counts():
    res = CliRunner().invoke(m2f, ["prepare", "--dataset", "meld", "--root", str(REAL_MELD)])
    assert res.exit_code == 0, res.output
    rows = {
        line.split()[0]: line.split()
        for line in res.output.splitlines()
        if line[:5] in ("train", "dev  ", "test ", "total")
    }
    assert rows["train"][1:3] == ["1038", "9989"]
    assert rows["dev"][1:3] == ["114", "1109"]
    assert rows["test"][1:3] == ["280", "2610"]
    assert rows["total"][1:3] == ["1432", "13708"]
    assert "clips no-folder" in res.output


def test_run_prepare_returns_utterances(meld_tree, capsys):
    utts = run_prepare("meld", meld_tree, None)
    assert len(utts) == 18
    assert "train" in capsys.readouterr().out
