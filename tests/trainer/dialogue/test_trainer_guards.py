"""train-dialog checks its features.h5 before anything else (one line naming file, split, dataset, row),
stops on a diverging loss keeping the last good checkpoints, and report warns about non-finite numbers."""

from __future__ import annotations

import csv
import json
import logging

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.testing.features_h5 import write_features, xor_rows
from trainer.dialogue.config import DialogueTrainConfig
from trainer.dialogue.data import FeaturesError
from trainer.dialogue.fit import TrainingDivergedError, train_dialogue
from trainer.report.build import report

DIMS = {"t": 8, "a": 4, "v": 6}
TINY = ["--heads", "2", "--hidden", "16", "--threads", "1", "--no-progress", "--epochs", "2"]


@pytest.fixture()
def features(tmp_path):
    lengths = {"train": [4] * 8, "dev": [4] * 3, "test": [3] * 2}
    return write_features(tmp_path / "f.h5", "custom", lengths, xor_rows(DIMS))


def _replace(path, name, data):
    with h5py.File(path, "a") as f:
        del f[name]
        f[name] = data


def _edit(path, name, fn):
    with h5py.File(path, "a") as f:
        arr = f[name][()]
        fn(arr)
        f[name][...] = arr


def _not_hdf5(p):
    p.write_text("utt_id,text\nx,hello\n")


def _no_audio(p):
    with h5py.File(p, "a") as f:
        del f["train/audio_emb"]


def _one_d(p):
    _replace(p, "dev/text_emb", np.zeros(12, np.float32))


def _widths(p):
    _replace(p, "dev/visual_emb", np.zeros((12, 5), np.float32))


def _positions(p):
    _edit(p, "train/position", lambda a: a.__setitem__(slice(4, 6), [1, 0]))


def _nan(p):
    _edit(p, "train/text_emb", lambda a: a.__setitem__((6, 2), np.nan))


def _inf(p):
    _edit(p, "dev/audio_emb", lambda a: a.__setitem__((3, 0), np.inf))


def _short(p):
    _replace(p, "test/label", np.array(["neg"], dtype=object).astype(h5py.string_dtype()))


@pytest.mark.parametrize(
    ("break_file", "expected"),
    [
        (_not_hdf5, ["not a readable HDF5 file"]),
        (_no_audio, ["split 'train'", "audio_emb", "missing"]),
        (_one_d, ["split 'dev'", "text_emb", "2-D"]),
        (_widths, ["split 'dev'", "visual_emb", "width 5", "6"]),
        (_positions, ["split 'train'", "position", "row 5", "dialogue '1'"]),
        (_nan, ["split 'train'", "text_emb", "row 6", "custom/train/dia1_utt2", "not finite"]),
        (_inf, ["split 'dev'", "audio_emb", "row 3", "not finite"]),
        (_short, ["split 'test'", "label", "1 rows, utt_id has 6"]),
    ],
    ids=["not-hdf5", "missing-audio", "1-d", "widths", "positions", "nan", "inf", "short"],
)
def test_train_dialogue_refuses_a_malformed_features_file_in_one_line(
    features, tmp_path, break_file, expected
):
    break_file(features)
    out = tmp_path / "run"
    with pytest.raises(FeaturesError) as e:
        train_dialogue(
            DialogueTrainConfig(features=str(features), out=str(out), heads=2, hidden=16, progress=False)
        )
    msg = str(e.value)
    assert str(features) in msg and "\n" not in msg and "m2f extract" in msg
    for word in expected:
        assert word in msg, msg
    assert not out.exists()  # stopped before anything was written
    res = CliRunner().invoke(main, ["train-dialog", "--features", str(features), "--out", str(out), *TINY])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: ") and len(res.output.strip().splitlines()) == 1, res.output


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoints(features, tmp_path):
    """lr 30 on this file: epoch 1 is finite, the weights blow up after it (measured: NaN by epoch 2-3)."""
    out = tmp_path / "run"
    config = DialogueTrainConfig(
        features=str(features),
        out=str(out),
        lr=30.0,
        epochs=20,
        patience=20,
        heads=2,
        hidden=16,
        threads=1,
        progress=False,
        checkpoint_seconds=0,
    )
    with pytest.raises(TrainingDivergedError) as e:
        train_dialogue(config)
    msg = str(e.value)
    assert "not finite" in msg and "--lr" in msg and "\n" not in msg
    seed = out / "seed0"
    rows = [json.loads(line) for line in (seed / "metrics.jsonl").read_text().splitlines()]
    assert rows, "at least one good epoch is expected before the divergence"
    assert all(np.isfinite([r["train_loss"], r["dev_loss"]]).all() for r in rows)
    last = torch.load(seed / "last.pt", weights_only=True)
    best = torch.load(seed / "best.pt", weights_only=True)
    assert last["loop"]["epoch"] == rows[-1]["epoch"]  # the resume point is the last good epoch
    for ckpt in (last, best):
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    status = json.loads((seed / "status.json").read_text())
    assert status["state"] == "failed" and "not finite" in status["reason"]
    assert f"epoch {rows[-1]['epoch'] + 1}" in msg
    assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0
    assert "FAILED" in (out / "report.md").read_text()


def test_report_warns_about_non_finite_probabilities(features, tmp_path, caplog):
    out = tmp_path / "run"
    train_dialogue(
        DialogueTrainConfig(
            features=str(features), out=str(out), epochs=1, heads=2, hidden=16, threads=1, progress=False
        )
    )
    pred = out / "seed0" / "predictions_test.csv"
    with open(pred, newline="") as f:
        rows = list(csv.reader(f))
    rows[2][3] = "nan"
    with open(pred, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with caplog.at_level(logging.WARNING):
        report([out])
    text = (out / "report.md").read_text()
    assert "WARNING" in text and "predictions_test.csv" in text and "not finite" in text
    assert any("not finite" in r.getMessage() for r in caplog.records)
