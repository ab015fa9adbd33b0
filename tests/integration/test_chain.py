"""The whole chain as a user runs it: prepare -> extract -> train-dialog -> report, through the CLI,
on generated corpora in the real MELD and IEMOCAP formats (with their traps)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.store.features import read_split, validate_features
from pipeline.testing.iemocap_tree import make_iemocap_tree
from pipeline.testing.meld_tree import make_meld_tree
from pipeline.text.embedder import DEFAULT_TEXT_MODEL


def _run(args: list[str]) -> str:
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("dataset", ["meld", "iemocap"])
def test_prepare_extract_train_report(dataset, tmp_path, dask_cli_cluster):
    if dataset == "meld":
        root = make_meld_tree(tmp_path / "corpus", n_dialogues=2, utterances_per_dialogue=3)
        classes = {"neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"}
    else:
        root = make_iemocap_tree(
            tmp_path / "corpus",
            sessions=(1, 5),
            dialogues_per_session=2,
            utterances_per_dialogue=4,
            video_size=(320, 240),
            fps=15.0,
        )
        classes = {"hap", "sad", "neu", "ang", "exc", "fru"}
    assert "total" in _run(["prepare", "--dataset", dataset, "--root", str(root)])
    out = _run(
        [
            "extract",
            "--dataset",
            dataset,
            "--root",
            str(root),
            "--cache",
            str(tmp_path / "cache"),
            "--encoders",
            "random",
            "--text-model",
            DEFAULT_TEXT_MODEL,
            *dask_cli_cluster.cli_args(),  # a long-lived cluster; m2f's own LocalCluster: test_readme_path
        ]
    )
    features = out.strip().splitlines()[-1]
    assert features.endswith("features.h5") and validate_features(features) == []
    assert read_split(features, "test").has_text.all()

    run = tmp_path / "run"
    _run(
        [
            "train-dialog",
            "--features",
            features,
            "--out",
            str(run),
            "--epochs",
            "3",
            "--seeds",
            "2",
            "--heads",
            "2",
            "--hidden",
            "32",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    table = _run(["report", str(run)])
    assert dataset in table
    report = json.loads((run / "report.json").read_text())
    assert 0.0 <= report["test"]["weighted_f1"] <= 1.0 and report["test"]["weighted_f1_std"] is not None
    assert set(report["test"]["per_class"]) == classes  # IEMOCAP: xxx/sur kept as context, not scored
    assert "paper" in (run / "report.md").read_text() and (run / "confusion.png").stat().st_size > 0
