"""trainer.dialogue.selection (``m2f train-dialog --select``): the lowest dev loss, the weight average of the
last K epochs, resume with a lagging last.pt, refused combinations, and runs from before the option."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.testing.features_h5 import random_rows, write_features
from trainer.dialogue.config import DialogueTrainConfig, resolve_config
from trainer.dialogue.data import load_split
from trainer.dialogue.fit import train_dialogue
from trainer.dialogue.run_files import load_model, read_metrics, write_status
from trainer.dialogue.steps import predict_probs
from trainer.report.build import write_report

DIMS = {"t": 8, "a": 8, "v": 8}
TINY = {"heads": 2, "hidden": 16, "batch_size": 4, "dropout": 0.1, "lr": 3e-3, "threads": 1}


@pytest.fixture(scope="module")
def noise_file(tmp_path_factory):
    """Labels that are noise: the model overfits train, so dev loss falls, then rises."""
    rng = np.random.default_rng(5)
    lengths = {s: rng.integers(3, 8, n).tolist() for s, n in (("train", 20), ("dev", 8), ("test", 8))}
    path = tmp_path_factory.mktemp("noise") / "features.h5"
    return write_features(path, "custom", lengths, random_rows(DIMS, ["joy", "anger", "calm"]))


def run_seed(features, out, **options):
    config = DialogueTrainConfig(
        features=str(features), out=str(out), modalities="a", progress=False, **TINY, **options
    )
    return train_dialogue(config) / "seed0"


def saved_predictions_are_those_of_best_pt(run, features) -> bool:
    model, names = load_model(run / "best.pt")
    probs = predict_probs(model, load_split(features, "dev", names, "a"), 64, "cpu")
    with open(run / "predictions_dev.csv", newline="") as f:
        saved = [r["predicted"] for r in csv.DictReader(f)]
    return [names[i] for i in probs.argmax(axis=1)] == saved


def test_loss_selects_the_epoch_of_the_lowest_dev_loss_and_stops_on_it(noise_file, tmp_path):
    run = run_seed(noise_file, tmp_path / "run", epochs=40, patience=3, select="loss")
    rows = read_metrics(run)
    status = json.loads((run / "status.json").read_text())
    losses = [r["dev_loss"] for r in rows]
    assert status["state"] == "done" and status["stopped"] == "early_stopping" and status["select"] == "loss"
    assert status["best_epoch"] == int(np.argmin(losses)) + 1  # the first epoch of the lowest dev loss
    assert len(rows) == status["best_epoch"] + 3  # patience counts epochs without a lower dev loss
    lower = [r["epoch"] for i, r in enumerate(rows) if all(r["dev_loss"] < p for p in losses[:i])]
    assert [r["epoch"] for r in rows if r["best"]] == lower  # best.pt was written at each new low
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == status["best_epoch"]
    assert saved_predictions_are_those_of_best_pt(run, noise_file)
    assert json.loads((run / "config.json").read_text())["select"] == "loss"
    write_report(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "(--select loss, judged on dev, never test)" in md
    assert f"model: epoch {status['best_epoch']}, the lowest dev loss (--select loss)" in md


def test_average_is_the_mean_of_the_last_k_kept_states(noise_file, tmp_path):
    run = run_seed(noise_file, tmp_path / "run", epochs=6, patience=6, select="average", average_last=3)
    kept = sorted(p.name for p in (run / "average").iterdir())
    assert kept == ["epoch0004.pt", "epoch0005.pt", "epoch0006.pt"]  # K files, the last K epochs
    states = [torch.load(run / "average" / name, weights_only=True)["model"] for name in kept]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["averaged_epochs"] == [4, 5, 6] and best["epoch"] == 6
    for name, value in best["model"].items():
        mean = torch.stack([s[name].double() for s in states]).mean(dim=0)
        torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)
    assert any(not torch.equal(value, states[-1][name]) for name, value in best["model"].items())  # not last
    assert saved_predictions_are_those_of_best_pt(run, noise_file)
    status = json.loads((run / "status.json").read_text())
    assert status["averaged_epochs"] == [4, 6] and not any(r["best"] for r in read_metrics(run))
    write_report(tmp_path / "run")
    assert (
        "model: the mean of the weights of epochs 4-6 (--select average)"
        in (tmp_path / "run" / "report.md").read_text()
    )


def test_average_resumes_from_a_last_pt_older_than_the_kept_weights(noise_file, tmp_path):
    """A kill with last.pt several epochs behind (--checkpoint-seconds): the replay rewrites the epochs
    after it, and the average still takes the kept weights of the epoch before it."""
    options = {"select": "average", "average_last": 4, "patience": 50, "checkpoint_seconds": 0}
    reference = run_seed(noise_file, tmp_path / "ref", epochs=7, **options)

    run = run_seed(noise_file, tmp_path / "run", epochs=4, **options)
    shutil.copy(run / "last.pt", tmp_path / "last-epoch4.pt")
    write_status(run, "training", epoch=4)  # as if killed: train on to epoch 7
    run_seed(noise_file, tmp_path / "run", epochs=7, **options)
    shutil.copy(tmp_path / "last-epoch4.pt", run / "last.pt")  # killed at epoch 7, last.pt of epoch 4
    write_status(run, "training", epoch=7)
    run_seed(noise_file, tmp_path / "run", epochs=7, **options)

    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 8))
    assert len(list((run / "average").iterdir())) == 4
    ref_best, best = (torch.load(d / "best.pt", weights_only=True) for d in (reference, run))
    assert best["averaged_epochs"] == ref_best["averaged_epochs"] == [4, 5, 6, 7]
    for name, value in ref_best["model"].items():
        torch.testing.assert_close(best["model"][name], value, rtol=0, atol=1e-6)
    assert (reference / "predictions_test.csv").read_text() == (run / "predictions_test.csv").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"average_last": 3}, r"--average-last 3 goes with --select average only \(given: --select wf1\)"),
        ({"select": "loss", "average_last": 3}, r"given: --select loss"),
        ({"select": "average", "average_last": 0}, r"--average-last 0: average 1 to --epochs \(100\)"),
        ({"select": "average", "epochs": 4}, r"--average-last 5: average 1 to --epochs \(4\)"),
        ({"select": "best"}, r"--select 'best': choose one of wf1, loss, average"),
    ],
)
def test_an_invalid_selection_is_refused_in_one_line(noise_file, tmp_path, options, message):
    config = DialogueTrainConfig(features=str(noise_file), out=str(tmp_path / "run"), **options)
    with pytest.raises(ValueError, match=message) as err:
        train_dialogue(config)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_the_cli_refuses_average_last_without_average_in_one_line(tmp_path):
    args = ["train-dialog", "--features", str(tmp_path / "f.h5"), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, [*args, "--select", "loss", "--average-last", "3"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --average-last 3 goes with --select average only (given: --select loss); "
        "drop it or choose --select average"
    ]


def test_patience_zero_is_refused_before_any_training_in_one_line(tmp_path):
    """--patience 0 used to train nothing and then fail loading a best.pt never written."""
    args = ["train-dialog", "--features", str(tmp_path / "f.h5"), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, [*args, "--patience", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --seeds, --epochs, --batch-size and --patience must be at least 1"
    ]
    assert not (tmp_path / "run").exists()


def test_average_fills_in_k_and_records_it(noise_file, tmp_path):
    config = DialogueTrainConfig(features=str(noise_file), out=str(tmp_path), select="average")
    resolved = resolve_config(config)
    assert resolved.train.average_last == 5 and resolved.to_dict()["average_last"] == 5


def test_a_run_from_before_select_is_resumed_as_wf1_and_left_as_it_was(noise_file, tmp_path):
    """A run folder whose config.json predates --select: the default resumes it (a finished one is not
    trained again: same history bytes, same best.pt); another rule is refused."""
    out = tmp_path / "run"
    run = run_seed(noise_file, out, epochs=4)
    for config_path in (out / "config.json", run / "config.json"):
        old = json.loads(config_path.read_text())
        assert (old.pop("select"), old.pop("average_last")) == ("wf1", None)
        config_path.write_text(json.dumps(old))
    history, best = (run / "metrics.jsonl").read_bytes(), (run / "best.pt").read_bytes()
    run_seed(noise_file, out, epochs=4, select="wf1")
    assert (run / "metrics.jsonl").read_bytes() == history and (run / "best.pt").read_bytes() == best
    with pytest.raises(ValueError, match=r"different options \(select\)"):
        run_seed(noise_file, out, epochs=4, select="loss")


def test_wf1_history_keeps_its_fields_and_selects_the_best_dev_wf1(noise_file, tmp_path):
    run = run_seed(noise_file, tmp_path / "run", epochs=8, patience=8)
    rows = read_metrics(run)
    assert [list(r) for r in rows] == [
        ["epoch", "train_loss", "dev_loss", "dev_weighted_f1", "dev_accuracy", "best", "seconds"]
    ] * 8
    f1 = [r["dev_weighted_f1"] for r in rows]
    status = json.loads((run / "status.json").read_text())
    assert status["select"] == "wf1" and status["best_epoch"] == int(np.argmax(f1)) + 1
    assert not (run / "average").exists()


@pytest.mark.parametrize("select", ["loss", "wf1"])
def test_export_picks_the_seed_its_run_rule_prefers_on_dev(noise_file, tmp_path, select):
    """`m2f export RUN` without --seed: the lowest dev loss for --select loss (the saved predictions' cross-
    entropy is the training's own best_dev_loss, to the CSV's rounding), the best dev wF1 for wf1. Seeds
    3-5 of this file: the lowest dev loss (seed 3) and the best dev wF1 (seed 4) are different seeds."""
    from trainer.apply.export import choose_seed, dev_loss

    config = DialogueTrainConfig(
        features=str(noise_file),
        out=str(tmp_path / "run"),
        modalities="a",
        progress=False,
        seeds=3,
        first_seed=3,
        epochs=6,
        select=select,
        **TINY,
    )
    run = train_dialogue(config)
    seeds = range(3, 6)
    status = {k: json.loads((run / f"seed{k}" / "status.json").read_text()) for k in seeds}
    losses = {k: status[k]["best_dev_loss"] for k in seeds}
    f1 = {k: status[k]["best_dev_weighted_f1"] for k in seeds}
    by_loss, by_f1 = min(losses, key=lambda k: (losses[k], k)), max(f1, key=lambda k: (f1[k], -k))
    chosen, summary = choose_seed(run)
    if select == "loss":
        for k in seeds:
            assert dev_loss(run / f"seed{k}") == pytest.approx(losses[k], abs=1e-4)
        assert by_loss != by_f1  # the two rules disagree here, so the test tells them apart
        assert summary["seed"] == by_loss
    else:
        assert summary["seed"] == by_f1
    assert chosen == run / f"seed{summary['seed']}"
