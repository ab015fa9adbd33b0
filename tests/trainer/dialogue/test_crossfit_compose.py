"""bench/meld_crossfit.py: each train row takes the features of the half model that did not see it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np

from pipeline.store.features import read_split, validate_features
from pipeline.testing.features_h5 import random_rows, write_features

REPO = Path(__file__).resolve().parents[3]
DIMS = {"t": 8, "a": 4, "v": 12}
CLASSES = ["joy", "anger", "neutral"]


def _crossfit():
    spec = importlib.util.spec_from_file_location("meld_crossfit", REPO / "bench" / "meld_crossfit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_logits(path: Path, shift: float) -> Path:
    """Add ``text_logits`` (3 columns from text_emb) and shift both by ``shift``."""
    with h5py.File(path, "r+") as f:
        for split in f:
            group = f[split]
            has = group["has_text"][()][:, None]
            emb = np.where(has, group["text_emb"][()] + shift, 0).astype(np.float32)
            group["text_emb"][...] = emb
            logits = group.create_dataset("text_logits", data=emb[:, :3])
            logits.attrs["classes"] = CLASSES
    return path


def test_compose_takes_out_of_fold_train_rows_and_full_or_mean_dev_test(tmp_path):
    lengths = {"train": [3, 2, 4, 2], "dev": [2, 3], "test": [3]}
    full = write_features(tmp_path / "full.h5", "sample", lengths, random_rows(DIMS, CLASSES))
    halves = []
    for k, shift in enumerate((1.0, 2.0)):
        halves.append(str(_with_logits(Path(shutil.copyfile(full, tmp_path / f"half{k}.h5")), shift)))
    _with_logits(full, 0.0)
    crossfit = _crossfit()
    fold_ids = [{"0", "1"}, {"2", "3"}]  # half 0 was fine-tuned on dialogues 0 and 1
    base = read_split(full, "train")
    has = base.has_text[:, None]

    oof = crossfit.compose(str(full), halves, fold_ids, tmp_path / "oof.h5", dev_test="full")
    train = read_split(oof, "train")
    seen_by_0 = np.isin(train.dialogue_id, ["0", "1"])[:, None]
    expected = np.where(has, base.text_emb + np.where(seen_by_0, 2.0, 1.0), 0)  # the other half's rows
    np.testing.assert_allclose(train.text_emb, expected, rtol=1e-6)
    np.testing.assert_allclose(train.text_logits, expected[:, :3], rtol=1e-6)
    np.testing.assert_array_equal(read_split(oof, "dev").text_emb, read_split(full, "dev").text_emb)
    assert validate_features(oof) == []

    mean = crossfit.compose(str(full), halves, fold_ids, tmp_path / "avg.h5", dev_test="avg")
    dev = read_split(full, "dev")
    np.testing.assert_allclose(
        read_split(mean, "dev").text_emb, np.where(dev.has_text[:, None], dev.text_emb + 1.5, 0), rtol=1e-6
    )

    logits = crossfit.compose(
        str(full), halves, fold_ids, tmp_path / "lg.h5", dev_test="full", logits_as_emb=True
    )
    for split in ("train", "dev", "test"):
        arrays = read_split(logits, split)
        np.testing.assert_array_equal(arrays.text_emb, arrays.text_logits)
    assert validate_features(logits) == []


def test_train_halves_cut_every_train_dialogue_once():
    class U:
        def __init__(self, split, dialogue_id):
            self.split, self.dialogue_id = split, dialogue_id

    utterances = [U("train", str(d)) for d in range(11) for _ in range(2)] + [U("dev", "0")]
    first, second = _crossfit().train_halves(utterances, seed=0)
    assert not first & second and first | second == {str(d) for d in range(11)}
    assert len(first) == 5
