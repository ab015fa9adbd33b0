"""m2f export -> m2f predict on real media: the sample corpus extracted, trained, exported, predicted.

Consistency is the test: the test split given back as a custom CSV must get the predictions that
train-dialog wrote for it; a video of the test clips joined end to end plus an SRT predicts end to end;
a CSV without clips predicts from text alone.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.corpora.sample import SAMPLE_DIR, prepare_sample
from pipeline.corpora.subtitles import Cue, write_srt
from pipeline.text.embedder import DEFAULT_TEXT_MODEL
from trainer.apply.export import export_model
from trainer.apply.predict import ExtractOptions, predict, run_extract
from trainer.demo.corpus import join_clips
from trainer.dialogue.fit import DialogueTrainConfig, train_dialogue


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dask_cli_cluster):
    root = tmp_path_factory.mktemp("predict")
    result = run_extract(
        ExtractOptions(
            dataset="sample",
            root=None,
            cache=root / "cache",
            encoders="random",
            text_model=DEFAULT_TEXT_MODEL,
            media_config={"n_frames": 4},
            **dask_cli_cluster.options(),
        )
    )
    train_dialogue(
        DialogueTrainConfig(
            features=str(result.features),
            out=str(root / "run"),
            seeds=2,
            epochs=4,
            patience=4,
            heads=2,
            hidden=16,
            fusion_layers=2,
            progress=False,
            threads=1,
        )
    )
    model = export_model(root / "run", root / "model")
    seed = json.loads((model / "m2f_model.json").read_text())["source"]["seed"]
    return root, model, root / "run" / f"seed{seed}"


def _test_utterances():
    return [u for u in prepare_sample() if u.split == "test"]


def _write_csv(folder, clips: bool):
    folder.mkdir()
    (folder / "media").symlink_to(SAMPLE_DIR, target_is_directory=True)
    header = ["dialogue_id", "utterance_index", "speaker", "text", "label"] + (["clip"] if clips else [])
    with open(folder / "talk.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for u in _test_utterances():
            row = [u.dialogue_id, u.utterance_id, u.speaker, u.text, u.label]
            w.writerow(row + (["media/" + os.path.relpath(u.clip, SAMPLE_DIR)] if clips else []))
    return folder / "talk.csv"


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_custom_csv_of_the_test_split_gives_train_dialogues_predictions(exported, tmp_path):
    _, model, seed_dir = exported
    result = predict(model, _write_csv(tmp_path / "in", clips=True), tmp_path / "preds.csv")
    assert result.modalities == ("text", "audio", "visual")
    ours, theirs = _read_csv(tmp_path / "preds.csv"), _read_csv(seed_dir / "predictions_test.csv")
    ids = [f"sample/test/dia{r['dialogue']}_utt{r['position']}" for r in ours]
    assert ids == [r["utt_id"] for r in theirs]
    assert [r["predicted"] for r in ours] == [r["predicted"] for r in theirs]
    classes = [c for c in theirs[0] if c.startswith("p_")]
    np.testing.assert_allclose(
        [[float(r[c]) for c in classes] for r in ours],
        [[float(r[c]) for c in classes] for r in theirs],
        atol=1e-5,
        rtol=0,
    )
    assert all(r["has_audio"] == r["has_visual"] == "true" for r in ours)


def test_joined_video_with_subtitles_predicts_end_to_end(exported, tmp_path):
    _, model, _ = exported
    utts = _test_utterances()
    spans = join_clips([u.clip for u in utts], tmp_path / "talk.mp4")
    assert spans[0][0] == 0.0 and all(abs(b[0] - a[1]) < 1e-9 for a, b in zip(spans, spans[1:], strict=False))
    cues = [Cue(s, e, u.speaker, u.text) for u, (s, e) in zip(utts, spans, strict=True)]
    srt = write_srt(tmp_path / "talk.srt", cues)
    res = CliRunner().invoke(
        main,
        [
            "predict",
            "--model",
            str(model),
            str(tmp_path / "talk.mp4"),
            "--subtitles",
            str(srt),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--plot",
            str(tmp_path / "t.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["speaker"] for r in rows] == [u.speaker for u in utts]
    assert [r["text"] for r in rows] == [u.text for u in utts]
    assert [(r["dialogue"], r["position"]) for r in rows] == [("talk", i) for i in range(len(utts))]
    np.testing.assert_allclose([(r["start"], r["end"]) for r in rows], spans, atol=1e-3)
    assert all(r["has_audio"] and r["has_visual"] for r in rows)
    for r in rows:
        probs = {k[2:]: v for k, v in r.items() if k.startswith("p_")}
        assert len(probs) == 7 and abs(sum(probs.values()) - 1) < 1e-4
        assert r["predicted"] == max(probs, key=probs.get)
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_csv_without_clips_predicts_from_text_alone(exported, tmp_path):
    _, model, _ = exported
    result = predict(model, _write_csv(tmp_path / "in", clips=False), tmp_path / "p.csv")
    assert result.modalities == ("text",)
    rows = _read_csv(tmp_path / "p.csv")
    assert len(rows) == 6 and all(
        r["has_text"] == "true" and r["has_audio"] == r["has_visual"] == "false" for r in rows
    )
    assert [r["speaker"] for r in rows] == [u.speaker for u in _test_utterances()]


def test_worker_processes_give_the_same_predictions(exported, tmp_path):
    _, model, _ = exported
    src = _write_csv(tmp_path / "in", clips=True)
    here = predict(model, src, tmp_path / "here.csv", workers=0)
    spread = predict(model, src, tmp_path / "spread.csv", workers=2)
    assert [r["predicted"] for r in here.rows] == [r["predicted"] for r in spread.rows]
    keys = [k for k in here.rows[0] if k.startswith(("p_", "has_"))]
    np.testing.assert_allclose(
        [[float(r[k]) for k in keys] for r in here.rows],
        [[float(r[k]) for k in keys] for r in spread.rows],
        atol=1e-5,
    )
