"""The README path with the default (fine-tuned) text model: extract, train-dialog, export, predict.

`m2f extract` without --text-model fine-tunes the text model into ``text-model/<base>/<hash>/``; export must
find it there (through :class:`pipeline.store.layout.CacheLayout`) without being told. Text only and random
encoders keep it short; the text model is the point.
"""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner

from cli import main
from pipeline.corpora.sample import prepare_sample


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res.stdout.strip().splitlines()[-1]


def test_extract_train_export_predict_with_the_default_text_model(tmp_path):
    cache = tmp_path / "cache"
    features = _ok(
        [
            "extract",
            "--dataset",
            "sample",
            "--cache",
            str(cache),
            "--modalities",
            "text",
            "--encoders",
            "random",
            "--workers",
            "1",
        ]
    )
    assert (cache / "sample" / "text-model").is_dir()  # the default: fine-tuned into the cache
    _ok(
        [
            "train-dialog",
            "--features",
            features,
            "--out",
            str(tmp_path / "run"),
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--modalities",
            "t",
        ]
    )
    model = _ok(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert Path(model) == tmp_path / "model"
    talk = tmp_path / "talk.csv"
    with open(talk, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dialogue_id", "utterance_index", "speaker", "text"])
        for u in [u for u in prepare_sample() if u.split == "test"]:
            w.writerow([u.dialogue_id, u.utterance_id, u.speaker, u.text])
    res = CliRunner().invoke(main, ["predict", "--model", model, str(talk), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["predicted"] for r in rows)
