"""Issue 17.9: bad input is one line naming the file and what to do, never a traceback."""

from __future__ import annotations

import json

import pytest

from pipeline.corpora.subtitles import SubtitleError, read_subtitles
from pipeline.testing.model_folders import copy_folder, replace_file, rewrite_checksums
from trainer.apply.export import ModelFolderError, load_model_folder
from trainer.apply.timeline import plot_timeline


@pytest.mark.parametrize("body", ['{"info": 1, "events": [{"x": 1}]}', '{"events": 3}', "[1, 2]"])
def test_a_json_file_named_srt_is_one_line(tmp_path, body):
    path = tmp_path / "talk.srt"
    path.write_text(body)
    with pytest.raises(SubtitleError, match="talk.srt") as err:
        read_subtitles(path)
    assert "\n" not in str(err.value)


def test_a_nul_byte_in_a_cue_blames_the_subtitle_file(tmp_path):
    path = tmp_path / "talk.srt"
    path.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\0there\n\n", encoding="utf-8")
    with pytest.raises(SubtitleError, match=r"talk\.srt.*cue 1") as err:
        read_subtitles(path)
    assert "\n" not in str(err.value)


def test_dollar_signs_in_speakers_and_classes_are_drawn_as_text(tmp_path):
    rows = [
        {
            "dialogue": "$\\x$",
            "position": 0,
            "speaker": "$\\x$",
            "start": 0.0,
            "end": 1.0,
            "text": "hi",
            "predicted": "$\\y$",
            "p_$\\y$": 0.9,
            "p_ok": 0.1,
        }
    ]
    assert plot_timeline(rows, ["$\\y$", "ok"], tmp_path / "t.png").stat().st_size > 1000


def _with_meta(model_dir, tmp_path, change):
    folder = copy_folder(model_dir, tmp_path / "m")
    meta = json.loads((folder / "m2f_model.json").read_text())
    replace_file(folder / "m2f_model.json", json.dumps(change(meta)).encode())
    return rewrite_checksums(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: [m], "not a JSON object"),
        (lambda m: {k: v for k, v in m.items() if k != "class_names"}, "class_names"),
        (lambda m: {**m, "class_names": m["class_names"][:2]}, "2 class_names for a dialogue model of 3"),
        (lambda m: {**m, "dialog_model": {**m["dialog_model"], "hidden": 1 << 40}}, "hidden"),
        (lambda m: {**m, "dialog_model": {**m["dialog_model"], "bogus": 1}}, "not a dialogue-model config"),
    ],
)
def test_a_bad_m2f_model_json_is_one_line(model_dir, tmp_path, change, message):
    with pytest.raises(ModelFolderError, match=message) as err:
        load_model_folder(_with_meta(model_dir, tmp_path, change))
    assert "\n" not in str(err.value) and "m2f_model.json" in str(err.value)


@pytest.mark.parametrize("broken", ["{not json", '{"pooling": "bogus", "max_length": 48}'])
def test_export_of_a_text_model_with_a_broken_m2f_text_json_is_one_line(tmp_path, tiny_finetuned, broken):
    """export's text check loads the copied folder: a broken m2f_text.json names the source, no traceback."""
    import shutil

    from pipeline.text.embedder import TextEmbedder
    from trainer.apply.export import check_text_identity

    recorded = TextEmbedder(str(tiny_finetuned)).identity
    copy = tmp_path / "text_model"
    shutil.copytree(tiny_finetuned, copy)
    same = check_text_identity(recorded, copy, tiny_finetuned)  # the copy as it was: its settings agree
    assert same.split("|", 1)[1] == recorded.split("|", 1)[1]
    (copy / "m2f_text.json").write_text(broken, encoding="utf-8")
    with pytest.raises(ModelFolderError, match=str(tiny_finetuned)) as err:
        check_text_identity(recorded, copy, tiny_finetuned)
    assert "\n" not in str(err.value)
