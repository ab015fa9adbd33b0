"""trainer.dialogue.fit: learning a cross-modal label, dev-only selection, determinism, resume after
SIGKILL."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.testing.features_h5 import random_rows, write_features, xor_rows
from trainer.dialogue.config import DialogueTrainConfig, resolve_config
from trainer.dialogue.data import IGNORE, MELD_CLASSES, load_split
from trainer.dialogue.fit import seed_dirs, train_dialogue
from trainer.dialogue.run_files import load_model, read_metrics
from trainer.dialogue.steps import predict_probs

DIMS = {"t": 8, "a": 8, "v": 8}
SMALL = {
    "heads": 2,
    "hidden": 32,
    "batch_size": 8,
    "dropout": 0.1,
    "lr": 3e-3,
    "threads": 1,
    "progress": False,
}


def dialogue_lengths(seed, counts=(("train", 60), ("dev", 20), ("test", 20))):
    rng = np.random.default_rng(seed)
    return {split: rng.integers(3, 10, n).tolist() for split, n in counts}


@pytest.fixture(scope="module")
def xor_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("xor") / "features.h5"
    return write_features(path, "custom", dialogue_lengths(0), xor_rows(DIMS, missing_rate=0.2))


def accuracy_of(run_dir: Path, split: str = "test") -> float:
    with open(run_dir / f"predictions_{split}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(np.mean([r["gold"] == r["predicted"] for r in rows]))


@pytest.mark.slow  # quality gain, 4 runs of 25 epochs; quick: test_overfit.py
def test_fusion_learns_a_label_that_needs_two_modalities(xor_file, tmp_path):
    """Acceptance: label = sign(audio) XOR sign(visual); text is noise. Only the fused model can learn it."""
    acc = {}
    for mods in ("tav", "t", "a", "v"):
        config = DialogueTrainConfig(
            features=str(xor_file), out=str(tmp_path / mods), modalities=mods, epochs=25, patience=25, **SMALL
        )
        run = train_dialogue(config) / "seed0"
        acc[mods] = accuracy_of(run)
    assert acc["tav"] >= 0.9, acc
    for single in ("t", "a", "v"):
        assert acc[single] <= 0.65, acc
        assert acc["tav"] - acc[single] >= 0.3, acc


def test_epoch_is_selected_on_dev_and_early_stopping_works(tmp_path):
    path = write_features(
        tmp_path / "noise.h5",
        "sample",
        dialogue_lengths(1, (("train", 20), ("dev", 8), ("test", 8))),
        random_rows(DIMS, ["joy", "anger", "neutral"]),
    )
    config = DialogueTrainConfig(
        features=str(path), out=str(tmp_path / "run"), modalities="a", epochs=40, patience=3, **SMALL
    )
    run = train_dialogue(config) / "seed0"
    metrics = read_metrics(run)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["stopped"] == "early_stopping"
    assert len(metrics) < 40
    dev = [m["dev_weighted_f1"] for m in metrics]
    assert status["best_epoch"] == int(np.argmax(dev)) + 1  # first epoch with the highest dev wF1
    assert len(metrics) == status["best_epoch"] + 3
    # the saved best model reproduces the saved dev predictions
    model, names = load_model(run / "best.pt")
    assert names == list(MELD_CLASSES)  # sample uses MELD's class map
    label_map = json.loads((run / "label_map.json").read_text())
    assert label_map["classes"] == names
    probs = predict_probs(model, load_split(path, "dev", names, "a"), 64, "cpu")
    labels = load_split(path, "dev", names, "a").labels.reshape(-1).numpy()
    with open(run / "predictions_dev.csv", newline="") as f:
        saved = [r["predicted"] for r in csv.DictReader(f)]
    assert len(saved) == (labels != IGNORE).sum()
    assert [names[i] for i in probs.argmax(axis=1)] == saved


def m2f_command() -> list[str]:
    exe = Path(sys.executable).with_name("m2f")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from cli import main; main()"]


@pytest.mark.parametrize("select", ["wf1", "loss", "average"])
def test_killed_run_resumes_and_matches_an_uninterrupted_one(xor_file, tmp_path, select):
    """For every --select rule: the same history, best.pt and predictions as an uninterrupted run."""
    epochs = 10
    rule = {"select": select, "average_last": 3 if select == "average" else None}
    options = dict(modalities="tav", epochs=epochs, patience=epochs, checkpoint_seconds=0, **rule, **SMALL)
    reference_config = DialogueTrainConfig(features=str(xor_file), out=str(tmp_path / "ref"), **options)
    reference = train_dialogue(reference_config) / "seed0"

    out = tmp_path / "killed"
    cmd = m2f_command() + [
        "train-dialog",
        "--features",
        str(xor_file),
        "--out",
        str(out),
        "--modalities",
        "tav",
        "--epochs",
        str(epochs),
        "--patience",
        str(epochs),
        "--heads",
        "2",
        "--hidden",
        "32",
        "--batch-size",
        "8",
        "--dropout",
        "0.1",
        "--lr",
        "0.003",
        "--threads",
        "1",
        "--no-progress",
        "--checkpoint-seconds",
        "0",
    ]
    cmd += ["--select", select] + (["--average-last", "3"] if select == "average" else [])
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    status_file = out / "seed0" / "status.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if status_file.exists() and json.loads(status_file.read_text())["epoch"] >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    status = json.loads(status_file.read_text())
    assert status["state"] == "training" and 3 <= status["epoch"] < epochs

    resumed = train_dialogue(DialogueTrainConfig(features=str(xor_file), out=str(out), **options)) / "seed0"
    ref_rows, res_rows = read_metrics(reference), read_metrics(resumed)
    assert [r["epoch"] for r in res_rows] == list(range(1, epochs + 1))
    for a, b in zip(ref_rows, res_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["dev_weighted_f1"] == pytest.approx(b["dev_weighted_f1"], abs=1e-9)
    assert (reference / "predictions_test.csv").read_text() == (resumed / "predictions_test.csv").read_text()
    ref_best, res_best = (torch.load(d / "best.pt", weights_only=True) for d in (reference, resumed))
    assert ref_best["epoch"] == res_best["epoch"] and ref_best.get("averaged_epochs") == res_best.get(
        "averaged_epochs"
    )
    for name, tensor in ref_best["model"].items():
        torch.testing.assert_close(res_best["model"][name], tensor, rtol=0, atol=1e-6)
    if select == "average":
        assert res_best["averaged_epochs"] == [8, 9, 10]
        assert sorted(p.name for p in (resumed / "average").iterdir()) == [
            "epoch0008.pt",
            "epoch0009.pt",
            "epoch0010.pt",
        ]

    # a finished seed is not trained again; other options are refused, not mixed in
    before = (resumed / "metrics.jsonl").read_text()
    train_dialogue(DialogueTrainConfig(features=str(xor_file), out=str(out), **options))
    assert (resumed / "metrics.jsonl").read_text() == before
    with pytest.raises(ValueError, match=r"different options \(lr"):
        train_dialogue(DialogueTrainConfig(features=str(xor_file), out=str(out), **{**options, "lr": 1e-3}))


@pytest.mark.parametrize("given", ["tav", "VAT", "text,audio,visual", ("visual", "text", "audio")])
def test_modalities_take_letters_or_names(xor_file, tmp_path, given):
    resolved = resolve_config(
        DialogueTrainConfig(features=str(xor_file), out=str(tmp_path), modalities=given)
    )
    assert resolved.train.modalities == "tav" and resolved.model_config().modalities == "tav"
    with pytest.raises(ValueError, match="--modalities"):
        resolve_config(
            DialogueTrainConfig(features=str(xor_file), out=str(tmp_path), modalities="text,smell")
        )


def test_run_directory_holds_what_a_reader_needs(xor_file, tmp_path):
    config = DialogueTrainConfig(
        features=str(xor_file),
        out=str(tmp_path / "run"),
        modalities="visual,audio",  # names as extract takes them; stored as letters in canonical order
        fusion="concat",
        epochs=2,
        seeds=2,
        **SMALL,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # one frozen config in
    assert train_dialogue(config) == tmp_path / "run"  # the run folder out
    runs = seed_dirs(config)
    assert [r.name for r in runs] == ["seed0", "seed1"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "seed0", "seed1"]
    for run in runs:
        for name in (
            "config.json",
            "environment.json",
            "label_map.json",
            "status.json",
            "metrics.jsonl",
            "best.pt",
            "last.pt",
            "predictions_dev.csv",
            "predictions_test.csv",
        ):
            assert (run / name).exists(), name
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["class_names"] == ["neg", "pos"] and cfg["layers"] == 1 and cfg["dims"] == DIMS
        assert cfg["modalities"] == "av"
        env = json.loads((run / "environment.json").read_text())
        assert env["device"] == "cpu" and env["torch"] == torch.__version__
        ckpt = torch.load(run / "best.pt", weights_only=True)
        assert ckpt["model_config"]["modalities"] == "av"
        with open(run / "predictions_test.csv", newline="") as f:
            header = next(csv.reader(f))
        assert header == ["utt_id", "gold", "predicted", "p_neg", "p_pos"]
    first, second = (read_metrics(r) for r in runs)
    assert first[0]["train_loss"] != second[0]["train_loss"]  # seeds differ


@pytest.mark.gpu
def test_cuda_fast_path(xor_file, tmp_path):
    options = dict(SMALL, threads=None)
    config = DialogueTrainConfig(
        features=str(xor_file),
        out=str(tmp_path / "gpu"),
        modalities="tav",
        epochs=25,
        patience=25,
        device="cuda",
        **options,
    )
    run = train_dialogue(config) / "seed0"
    assert json.loads((run / "environment.json").read_text())["device"] == "cuda"
    assert accuracy_of(run) >= 0.9
    compiled = dataclasses.replace(config, out=str(tmp_path / "gpu_compiled"), epochs=3, compile=True)
    run = train_dialogue(compiled) / "seed0"
    assert json.loads((run / "status.json").read_text())["state"] == "done"
