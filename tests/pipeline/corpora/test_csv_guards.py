"""CSV input caught at prepare with one line naming file, line and fix: NUL characters, huge fields (an
unclosed quote), non-finite or inverted times, duplicated header columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.corpora.base import CorpusError
from pipeline.corpora.custom import prepare_custom
from pipeline.corpora.meld import read_meld_csv
from pipeline.manifest import Utterance, validate

HEADER = "dialogue_id,utterance_index,speaker,text,label,clip,start,end,split\n"
MELD_HEADER = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
)


def _custom(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "corpus.csv"
    path.write_text(header + body, encoding="utf-8")
    return path


def _meld(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "dev_sent_emo.csv"
    path.write_text(MELD_HEADER + "".join(rows), encoding="utf-8")
    return path


def _meld_row(i: int, text: str = "Hi.") -> str:
    return f'{i + 1},{text},Ross,neutral,neutral,0,{i},1,1,"00:00:0{i},000","00:00:0{i},500"\n'


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_nul_in_a_custom_csv_is_caught_at_prepare(tmp_path):
    path = _custom(tmp_path, "d,0,Ann,Hi,joy,,,,train\nd,1,Bob,Fi\x00ne,joy,,,,train\n")
    with pytest.raises(CorpusError) as e:
        prepare_custom(path)
    msg = _one_line(e)
    assert "corpus.csv:3" in msg and "NUL" in msg and "text" in msg and "remove" in msg


def test_nul_in_a_meld_csv_is_caught_at_prepare(tmp_path):
    path = _meld(tmp_path, [_meld_row(0), _meld_row(1, "Fi\x00ne.")])
    with pytest.raises(CorpusError) as e:
        read_meld_csv(path)
    msg = _one_line(e)
    assert "dev_sent_emo.csv:3" in msg and "NUL" in msg and "Utterance" in msg


def test_a_field_over_128_kib_is_one_line_not_a_csv_error(tmp_path):
    # the usual cause: an unclosed quote swallows the rest of the file into one field
    body = 'd,0,Ann,"Hi there,joy,,,,train\n' + "d,1,Bob,Fine,joy,,,,train\n" * 8000
    with pytest.raises(CorpusError) as e:
        prepare_custom(_custom(tmp_path, body))
    msg = _one_line(e)
    assert "corpus.csv:" in msg and "131072" in msg and "quote" in msg
    path = _meld(tmp_path, [_meld_row(0, '"Hi' + "x" * 140_000)])
    with pytest.raises(CorpusError) as e:
        read_meld_csv(path)
    assert "dev_sent_emo.csv:" in _one_line(e)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("0", "inf", r"corpus\.csv:2: end 'inf' is not a finite number"),
        ("0", "nan", r"corpus\.csv:2: end 'nan' is not a finite number"),
        ("-inf", "1", r"corpus\.csv:2: start '-inf' is not a finite number"),
        ("0", "1e999", r"corpus\.csv:2: end '1e999' is not a finite number"),
        ("-1", "1", r"corpus\.csv:2: start '-1' must be >= 0"),
        ("2", "2", r"corpus\.csv:2: end 2.0 must be after start 2.0"),
    ],
)
def test_times_must_be_finite_non_negative_and_ordered(tmp_path, start, end, message):
    with pytest.raises(CorpusError, match=message):
        prepare_custom(_custom(tmp_path, f"d,0,Ann,Hi,joy,,{start},{end},train\n"))


def test_a_duplicated_header_column_is_an_error_naming_it(tmp_path):
    header = "dialogue_id,utterance_index,speaker,text,label,clip,text\n"
    with pytest.raises(CorpusError, match=r"corpus\.csv:1: column 'text' appears twice"):
        prepare_custom(_custom(tmp_path, "d,0,Ann,Hi,joy,,other\n", header=header))
    path = tmp_path / "dev_sent_emo.csv"
    path.write_text(MELD_HEADER.replace(",Season,", ",Emotion,") + _meld_row(0), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"dev_sent_emo\.csv:1: column 'Emotion' appears twice"):
        read_meld_csv(path)


def test_manifest_validate_flags_a_nul_character():
    u = Utterance(
        corpus="iemocap",
        split="train",
        dialogue_id="Ses01F_impro01",
        position=0,
        utterance_id="Ses01F_impro01_F000",
        speaker="Ses01F",
        text="a\x00b",
        label="neu",
    )
    assert any("NUL" in p for p in validate([u]))
