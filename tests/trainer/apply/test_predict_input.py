"""m2f predict's input and output handling (trainer/apply/predict.py, trainer/apply/timeline.py), without
extraction."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.corpora.subtitles import Cue, write_srt
from pipeline.testing.av_files import write_clip
from trainer.apply.predict import (
    PredictError,
    csv_utterances,
    modalities_to_extract,
    output_format,
    predict,
    subtitle_utterances,
    write_rows,
)
from trainer.apply.timeline import plot_timeline


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_rows_keep_file_order_whatever_their_split_and_clips_resolve(tmp_path):
    write_clip(tmp_path / "in" / "videos" / "b0.mp4", duration=0.5, size=(64, 48))
    src = _csv(
        tmp_path / "in" / "talk.csv",
        ["dialogue_id", "utterance_index", "speaker", "text", "label", "clip", "split"],
        [
            ["zeta", "1", "Bo", "Second.", "joy", "", "train"],
            ["alpha", "0", "Al", "Hi.", "", "videos/b0.mp4", "test"],
            ["zeta", "0", "Ann", "First.", "", "", "train"],
        ],
    )
    utts = csv_utterances(src, tmp_path / "work")
    assert [(u.dialogue_id, u.text) for u in utts] == [
        ("zeta", "First."),
        ("zeta", "Second."),
        ("alpha", "Hi."),
    ]
    clip = next(u.clip for u in utts if u.clip)  # the featurizer decodes this path as it is
    assert Path(clip).resolve() == (tmp_path / "in" / "videos" / "b0.mp4").resolve()


def test_csv_without_clip_column_is_text_only(tmp_path):
    src = _csv(
        tmp_path / "t.csv",
        ["dialogue_id", "utterance_index", "speaker", "text"],
        [["d", "0", "A", "Hello."], ["d", "1", "B", "Bye."]],
    )
    utts = csv_utterances(src, tmp_path / "work")
    assert [u.clip for u in utts] == [None, None]
    model = SimpleNamespace(modalities="tav")
    assert modalities_to_extract(model, utts) == ("text",)
    assert modalities_to_extract(SimpleNamespace(modalities="av"), utts) == ()


def test_bad_csv_is_a_one_line_error_naming_the_line(tmp_path):
    src = _csv(
        tmp_path / "t.csv",
        ["dialogue_id", "utterance_index", "speaker", "text", "clip"],
        [["d", "0", "A", "Hello.", "/abs/x.mp4"]],
    )
    with pytest.raises(PredictError, match=r"t\.csv:2: clip '/abs/x.mp4' is an absolute path"):
        csv_utterances(src, tmp_path / "work")


def test_subtitles_become_one_dialogue_of_spans_in_the_video(tmp_path):
    video = write_clip(tmp_path / "my talk.mp4", duration=1.0, size=(64, 48))
    srt = write_srt(tmp_path / "t.srt", [Cue(0.0, 0.4, "Ann", "Hi."), Cue(0.5, 0.9, "unknown", "Yes?")])
    utts = subtitle_utterances(video, srt)
    assert [(u.dialogue_id, u.position, u.speaker, u.start, u.end) for u in utts] == [
        ("my_talk", 0, "Ann", 0.0, 0.4),
        ("my_talk", 1, "unknown", 0.5, 0.9),
    ]
    assert all(Path(u.clip) == video.resolve() for u in utts)
    with pytest.raises(PredictError, match="no such video"):
        subtitle_utterances(tmp_path / "none.mp4", srt)


def test_wrong_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(PredictError, match="no such file"):
        predict(tmp_path / "m", tmp_path / "none.csv", tmp_path / "p.csv", model=SimpleNamespace())
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(PredictError, match="goes with a video"):
        predict(
            tmp_path / "m",
            tmp_path / "x.csv",
            tmp_path / "p.csv",
            subtitles=tmp_path / "s.srt",
            model=SimpleNamespace(),
        )
    with pytest.raises(PredictError, match="--format"):
        output_format(tmp_path / "p.csv", "xml")
    assert output_format(tmp_path / "p.jsonl", None) == "jsonl"
    assert output_format(tmp_path / "p", None) == "csv"


ROWS = [
    {
        "dialogue": "d",
        "position": 0,
        "speaker": "Ann",
        "start": 0.0,
        "end": 1.5,
        "text": "Hi, you.",
        "predicted": "joy",
        "p_anger": 0.1,
        "p_joy": 0.9,
        "has_text": True,
        "has_audio": False,
    },
    {
        "dialogue": "d",
        "position": 1,
        "speaker": "Bob",
        "start": 1.6,
        "end": 2.0,
        "text": "Go away",
        "predicted": "anger",
        "p_anger": 0.55,
        "p_joy": 0.45,
        "has_text": True,
        "has_audio": True,
    },
]


def test_rows_as_csv_and_jsonl(tmp_path):
    write_rows(ROWS, tmp_path / "p.csv", "csv")
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert got[0]["text"] == "Hi, you." and got[0]["p_joy"] == "0.9" and got[0]["has_audio"] == "false"
    write_rows(ROWS, tmp_path / "p.jsonl", "jsonl")
    assert [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()] == ROWS


def test_timeline_has_a_lane_per_speaker(tmp_path):
    path = plot_timeline(
        ROWS + [{**ROWS[0], "dialogue": "e", "start": None, "end": None}],
        ["anger", "joy"],
        tmp_path / "t.png",
    )
    assert path.stat().st_size > 5_000


def test_cli_help_of_export_predict_and_demo_fits_the_listing():
    out = CliRunner().invoke(main, ["--help"]).output
    for cmd in ("export", "predict", "demo"):
        line = next(x for x in out.splitlines() if x.strip().startswith(cmd + " "))
        assert not line.rstrip().endswith("..."), line
        res = CliRunner().invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and "[default:" in res.output


def test_inputs_reached_through_a_symlinked_folder_keep_their_clips(tmp_path):
    """Issue 17.8: a CSV or a video reached through a symlinked folder keeps its audio and video."""
    from trainer.apply.predict import input_utterances

    write_clip(tmp_path / "real" / "videos" / "b0.mp4", duration=0.5, size=(64, 48))
    _csv(
        tmp_path / "real" / "talk.csv",
        ["dialogue_id", "utterance_index", "speaker", "text", "clip"],
        [["d", "0", "Al", "Hi.", "videos/b0.mp4"]],
    )
    write_srt(tmp_path / "real" / "videos" / "b0.srt", [Cue(0.0, 0.4, "Al", "Hi.")])
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    for given, subs in [
        (tmp_path / "link" / "talk.csv", None),
        (tmp_path / "link" / "videos" / "b0.mp4", tmp_path / "link" / "videos" / "b0.srt"),
    ]:
        work = tmp_path / f"work-{given.suffix[1:]}"
        utts, _ = input_utterances(given, subs, work)
        assert Path(utts[0].clip).resolve() == (tmp_path / "real" / "videos" / "b0.mp4").resolve(), given
        assert Path(utts[0].clip).is_file()
