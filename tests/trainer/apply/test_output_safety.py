"""Issue 17.10: a predictions CSV holds no live spreadsheet formula; errors print names escaped."""

from __future__ import annotations

import csv

from click.testing import CliRunner

from cli import main
from trainer.apply.predict import write_rows

ROW = {
    "dialogue": "d",
    "position": 0,
    "speaker": "@boss",
    "start": 0.0,
    "end": 1.0,
    "text": '=HYPERLINK("http://evil.example","click")',
    "predicted": "joy",
    "p_joy": 0.9,
}


def test_formula_cells_are_neutralised_in_csv_but_kept_in_jsonl(tmp_path):
    rows = [
        ROW,
        {**ROW, "position": 1, "speaker": "+1", "text": "-2+3"},
        {**ROW, "position": 2, "speaker": "\tx", "text": "\rcmd"},
        {**ROW, "position": 3, "text": "fine"},
    ]
    write_rows(rows, tmp_path / "p.csv", "csv")
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert [r["text"] for r in got] == ["'" + ROW["text"], "'-2+3", "'\ncmd", "fine"]
    assert [r["speaker"] for r in got] == ["'@boss", "'+1", "'\tx", "'@boss"]
    assert got[0]["p_joy"] == "0.9" and got[0]["start"] == "0"
    write_rows(rows, tmp_path / "p.jsonl", "jsonl")
    import json

    assert json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["text"] == ROW["text"]


def test_error_messages_escape_terminal_codes_in_names(tmp_path):
    evil = tmp_path / "m\x1b[2J\x1b[32mverified\x1b[0m\nok"
    res = CliRunner().invoke(
        main, ["predict", "--model", str(evil), str(tmp_path / "in.csv"), "--out", str(tmp_path / "p.csv")]
    )
    assert res.exit_code == 1
    assert "\x1b" not in res.output and "\\x1b[2J" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_every_command_error_escapes_names(tmp_path):
    evil = tmp_path / "c\x1b]0;title\x07.csv"
    res = CliRunner().invoke(
        main,
        [
            "extract",
            "--dataset",
            "custom",
            "--root",
            str(evil),
            "--cache",
            str(tmp_path / "cache"),
            "--modalities",
            "text",
        ],
    )
    assert res.exit_code != 0
    assert "\x1b" not in res.output and "\x07" not in res.output and "\\x1b]0;title" in res.output
