"""bench/dialogue_ablation.py --holdout-dev: selection rules compared on halves of dev, test never read."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from pipeline.store.features import read_split, validate_features
from pipeline.testing.features_h5 import random_rows, write_features

REPO = Path(__file__).resolve().parents[3]
DIMS = {"t": 8, "a": 4, "v": 12}


def _ablation():
    path = REPO / "bench" / "dialogue_ablation.py"
    spec = importlib.util.spec_from_file_location("dialogue_ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _features(tmp_path: Path) -> Path:
    lengths = {"train": [3, 4, 5, 2], "dev": [3, 1, 4, 2, 5], "test": [2, 3]}
    rows = random_rows(DIMS, ["joy", "anger", "neutral"])
    return write_features(tmp_path / "f.h5", "sample", lengths, rows)


def _ablate(path: Path, *options: str) -> subprocess.CompletedProcess:
    """bench/dialogue_ablation.py on ``path``: text, default setting, 1 seed of 2 epochs, + ``options``."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "dialogue_ablation.py"), str(path), "--modalities", "t",
         "--settings", "position+speaker", "--causal", "off", "--seeds", "1", "--epochs", "2",
         "--batch-size", "2", "--jobs", "1", *options],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_dev_halves_split_dev_by_dialogue_both_ways_round_and_drop_test(tmp_path):
    path = _features(tmp_path)
    half0, half1 = _ablation().dev_halves(path, tmp_path / "halves")
    original = read_split(path, "dev")
    by_id = {u: i for i, u in enumerate(original.utt_id)}
    a_dev, a_test = read_split(half0, "dev"), read_split(half0, "test")
    b_dev, b_test = read_split(half1, "dev"), read_split(half1, "test")
    # the halves swap roles and together are the whole dev split, each dialogue whole and in one half
    assert list(a_dev.utt_id) == list(b_test.utt_id) and list(a_test.utt_id) == list(b_dev.utt_id)
    assert sorted([*a_dev.utt_id, *a_test.utt_id]) == sorted(original.utt_id)
    assert not set(a_dev.dialogue_id) & set(a_test.dialogue_id)
    assert len(set(a_dev.dialogue_id)) == 2 and len(set(a_test.dialogue_id)) == 3
    for half in (a_dev, a_test):  # rows are the original rows, embeddings and labels included
        rows = [by_id[u] for u in half.utt_id]
        assert rows == sorted(rows)
        np.testing.assert_array_equal(half.text_emb, original.text_emb[rows])
        assert list(half.label) == list(original.label[rows])
    # the original test split is gone, train is untouched, and both files are valid features files
    test_ids = set(read_split(path, "test").utt_id)
    assert not test_ids & {*a_dev.utt_id, *a_test.utt_id}
    np.testing.assert_array_equal(read_split(half0, "train").text_emb, read_split(path, "train").text_emb)
    for half in (half0, half1):
        assert validate_features(half) == []
        with h5py.File(half, "r") as f:
            assert sorted(f) == ["dev", "test", "train"]


def test_join_halves_averages_the_two_ways_round():
    base = {"setting": "none", "causal": False, "select": "loss", "seed": 0, "averaged_epochs": None}
    runs = [
        {**base, "best_epoch": 3, "dev": 0.6, "test": 0.5, "dev_loss": 1.0, "seconds": 2.0},
        {**base, "best_epoch": 5, "dev": 0.8, "test": 0.4, "dev_loss": 2.0, "seconds": 4.0},
        {**base, "seed": 1, "best_epoch": 1, "dev": 0.7, "test": 0.3, "dev_loss": 1.5, "seconds": 1.0},
        {**base, "seed": 1, "best_epoch": 2, "dev": 0.5, "test": 0.5, "dev_loss": 0.5, "seconds": 1.0},
    ]
    ablation = _ablation()
    joined = ablation.join_halves(runs)
    assert [(r["seed"], r["best_epochs"]) for r in joined] == [(0, [3, 5]), (1, [1, 2])]
    assert np.isclose(joined[0]["dev"], 0.7) and np.isclose(joined[0]["held_out_dev"], 0.45)
    assert joined[0]["test"] is None and np.isclose(joined[1]["dev_loss"], 1.0)
    summary = ablation.summarize(joined, by_select=True, holdout=True)["none --select loss"]
    assert summary["seeds"] == 2 and np.isclose(summary["held_out_dev"], 0.425) and "test" not in summary


def test_holdout_dev_end_to_end_never_reads_test(tmp_path):
    path = _features(tmp_path)
    with h5py.File(path, "r+") as f:  # a test split that would break any run that read it
        f["test"]["text_emb"][...] = np.nan
    out = tmp_path / "runs"
    proc = _ablate(path, "--selects", "wf1,loss", "--holdout-dev", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["holdout_dev"] is True
    for rule in ("wf1", "loss"):
        entry = result["settings"][f"position+speaker --select {rule}"]
        assert 0.0 <= entry["held_out_dev"] <= 1.0 and "test" not in entry
    assert all(r["halves"] == 2 and r["test"] is None for r in result["runs"])


def test_without_holdout_dev_the_runs_report_test(tmp_path):
    path = _features(tmp_path)
    proc = _ablate(path, "--head-residual")
    # the generated file has no text head logits: --head-residual reaches the trainer, which refuses it
    assert proc.returncode != 0 and "text_logits" in proc.stderr
    proc = _ablate(path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    entry = result["settings"]["position+speaker"]
    assert result["holdout_dev"] is False and 0.0 <= entry["test"] <= 1.0 and "held_out_dev" not in entry
