"""trainer.report.build: numbers equal scikit-learn on the saved predictions; status, seeds, paper, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from cli import main
from pipeline.testing.features_h5 import random_rows, write_features
from trainer.dialogue.config import DialogueTrainConfig
from trainer.dialogue.data import MELD_CLASSES
from trainer.dialogue.fit import seed_dirs, train_dialogue
from trainer.dialogue.run_files import write_status
from trainer.report.build import report
from trainer.report.paper import PAPER_RESULTS, paper_reference
from trainer.report.summary import summarize_run

DIMS = {"t": 8, "a": 4, "v": 4}
SMALL = {
    "heads": 2,
    "hidden": 16,
    "batch_size": 8,
    "dropout": 0.1,
    "lr": 3e-3,
    "threads": 1,
    "progress": False,
}


@pytest.fixture(scope="module")
def meld_like(tmp_path_factory):
    """A tiny file labelled 'meld' (so the paper's MELD numbers apply) and two finished runs."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(3)
    lengths = {s: rng.integers(2, 8, n).tolist() for s, n in (("train", 24), ("dev", 10), ("test", 12))}
    path = write_features(root / "features.h5", "meld", lengths, random_rows(DIMS, list(MELD_CLASSES)))
    text = DialogueTrainConfig(
        features=str(path), out=str(root / "text"), modalities="t", epochs=3, seeds=2, **SMALL
    )
    fused = DialogueTrainConfig(
        features=str(path), out=str(root / "fused"), modalities="tav", epochs=2, fusion_layers=1, **SMALL
    )
    train_dialogue(text)
    train_dialogue(fused)
    return root, seed_dirs(text), seed_dirs(fused)


def read_pred(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["gold"] for r in rows], [r["predicted"] for r in rows]


def test_report_numbers_equal_sklearn_on_the_saved_predictions(meld_like):
    root, seeds, _ = meld_like
    report([root / "text"])
    saved = json.loads((root / "text" / "report.json").read_text())
    per_seed = {"test": [], "dev": []}
    for run in seeds:
        for split in per_seed:
            gold, pred = read_pred(run / f"predictions_{split}.csv")
            per_seed[split].append((gold, pred))
    for split, pairs in per_seed.items():
        wf1 = [
            f1_score(g, p, average="weighted", labels=list(MELD_CLASSES), zero_division=0) for g, p in pairs
        ]
        assert saved[split]["weighted_f1"] == pytest.approx(np.mean(wf1), abs=1e-12)
        assert saved[split]["weighted_f1_std"] == pytest.approx(np.std(wf1, ddof=1), abs=1e-12)
    test_pairs = per_seed["test"]
    acc = [accuracy_score(g, p) for g, p in test_pairs]
    assert saved["test"]["accuracy"] == pytest.approx(np.mean(acc), abs=1e-12)
    macro = [
        f1_score(g, p, average="macro", labels=list(MELD_CLASSES), zero_division=0) for g, p in test_pairs
    ]
    assert saved["test"]["macro_f1"] == pytest.approx(np.mean(macro), abs=1e-12)
    prf = [
        precision_recall_fscore_support(g, p, labels=list(MELD_CLASSES), zero_division=0)
        for g, p in test_pairs
    ]
    for i, c in enumerate(MELD_CLASSES):
        entry = saved["test"]["per_class"][c]
        assert entry["precision"] == pytest.approx(np.mean([x[0][i] for x in prf]), abs=1e-12)
        assert entry["recall"] == pytest.approx(np.mean([x[1][i] for x in prf]), abs=1e-12)
        assert entry["f1"] == pytest.approx(np.mean([x[2][i] for x in prf]), abs=1e-12)
        assert entry["support"] == int(prf[0][3][i])
    assert saved["state"] == "done" and saved["seeds_done"] == [0, 1]
    assert np.sum(saved["test"]["confusion"]) == 2 * len(test_pairs[0][0])
    assert saved["paper"] == PAPER_RESULTS[("meld", "t", None)]
    md = (root / "text" / "report.md").read_text()
    assert f"{100 * saved['test']['weighted_f1']:.2f} ± {100 * saved['test']['weighted_f1_std']:.2f}" in md
    assert "66.23" in md  # the paper's MELD text-only weighted F1 beside ours
    for png in ("confusion.png", "curves.png"):
        assert (root / "text" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_still_training_is_reported_as_such(meld_like, tmp_path):
    root, _, (fused,) = meld_like
    import shutil

    run = tmp_path / "running"
    shutil.copytree(root / "fused", run)
    seed = run / "seed0"
    for name in ("predictions_dev.csv", "predictions_test.csv"):
        (seed / name).unlink()
    write_status(seed, "training", epoch=1, epochs=50, seed=0, best_epoch=1, best_dev_weighted_f1=0.25)
    summary = summarize_run(run)
    assert summary["state"] == "training" and summary["test"] is None
    report([run])
    md = (run / "report.md").read_text()
    assert "STILL TRAINING" in md and "epoch 1/50" in md and "25.00" in md
    assert json.loads((run / "report.json").read_text())["test"] is None

    shutil.rmtree(seed)  # the command has started but no seed has reported yet
    report([run])
    assert "1 more seed(s) planned, not started yet" in (run / "report.md").read_text()


def test_paper_reference():
    assert paper_reference("meld", "meld", "tav", "attention")["weighted_f1"] == 66.71
    assert paper_reference("meld", "meld", "tav", "attention")["per_class_f1"]["fear"] == 3.45
    assert paper_reference("iemocap", "iemocap", "tav", "concat") == {"accuracy": 67.16, "weighted_f1": 67.12}
    assert paper_reference("iemocap", "iemocap", "a", "attention")["weighted_f1"] == 21.79
    assert paper_reference("meld", "meld", "ta", "attention")["note"] == (
        "not reported by the paper (meld, T+A attention fusion)"
    )
    toy = paper_reference("sample", "sample", "tav", "attention")
    assert "meaningless" in toy["note"] and toy["weighted_f1"] == 66.71  # MELD's, shown beside the toy run
    assert "weighted_f1" not in paper_reference("custom", "custom", "tav", "attention")


def test_cli_compares_several_runs(meld_like, tmp_path):
    root, _, _ = meld_like
    out = tmp_path / "compare.md"
    result = CliRunner().invoke(
        main, ["report", str(root / "text"), str(root / "fused"), "--compare-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith(f"| {root}")]
    assert len(rows) == 2 and "| t |" in rows[0] and "| tav | attention |" in rows[1]
    assert "67.85 / 66.71" in rows[1]
    assert (root / "fused" / "report.json").exists()
    bad = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert bad.exit_code != 0 and "not a run folder" in bad.output


def test_seed_ensemble_is_the_argmax_of_the_mean_probability(meld_like, tmp_path):
    from trainer.report.summary import read_probabilities

    root, _, _ = meld_like
    text = root / "text"
    summary = summarize_run(text)
    seeds = [s["dir"] for s in summary["per_seed"]]
    assert len(seeds) == 2
    for split in ("dev", "test"):
        read = [read_probabilities(f"{d}/predictions_{split}.csv") for d in seeds]
        ids, gold, _, names = read[0]
        mean = (read[0][2] + read[1][2]) / 2
        pred = [names[i] for i in mean.argmax(1)]
        ens = summary["ensemble"][split]
        assert ens["n_seeds"] == 2 and ens["n"] == len(ids)
        assert ens["weighted_f1"] == pytest.approx(
            f1_score(gold, pred, average="weighted", labels=names, zero_division=0)
        )
    md = report([text])
    assert "2-seed ensemble" in (text / "report.md").read_text() and "ensemble test wF1" in md


def test_no_ensemble_for_one_seed_or_mismatched_files(meld_like, tmp_path):
    import shutil

    from trainer.report.summary import ensemble_metrics

    root, _, _ = meld_like
    text, fused = root / "text", root / "fused"
    assert summarize_run(fused)["ensemble"] == {"dev": None, "test": None}  # one seed
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(text / "seed0", a)
    shutil.copytree(text / "seed1", b)
    rows = (b / "predictions_test.csv").read_text().splitlines()
    (b / "predictions_test.csv").write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    assert ensemble_metrics([a, b], "test") is None and ensemble_metrics([a, b], "dev") is not None
