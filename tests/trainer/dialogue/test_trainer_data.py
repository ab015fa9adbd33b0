"""trainer.dialogue.data: padded dialogue tensors, masks, class maps, on real generated features.h5 files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.store.features import read_split
from pipeline.testing.features_h5 import random_rows, write_features
from trainer.dialogue.data import (
    IGNORE,
    MELD_CLASSES,
    default_layers,
    inspect_features,
    load_split,
    normalize_modalities,
    preset_for_dataset,
    resolve_class_names,
)

DIMS = {"t": 6, "a": 4, "v": 5}


def labelled_rows(labels):
    """Random embeddings; labels cycle through ``labels``; every 3rd audio row missing."""
    base = random_rows(DIMS, ["x"])

    def make(rng, n):
        rows = base(rng, n)
        rows["label"] = np.array([labels[i % len(labels)] for i in range(n)], dtype=object)
        rows["has_audio"] = np.arange(n) % 3 != 2
        rows["audio_emb"][~rows["has_audio"]] = 0.0
        return rows

    return make


@pytest.fixture
def meld_file(tmp_path):
    lengths = {"train": [3, 1, 5], "dev": [2, 2], "test": [4]}
    return write_features(tmp_path / "f.h5", "meld", lengths, labelled_rows(list(MELD_CLASSES)))


def test_split_is_padded_per_dialogue_and_maps_back_to_file_rows(meld_file):
    split = load_split(meld_file, "train", MELD_CLASSES)
    arrays = read_split(meld_file, "train")
    assert split.features["t"].shape == (3, 5, DIMS["t"])
    assert split.lengths.tolist() == [3, 1, 5]
    assert split.mask.sum(dim=1).tolist() == [3, 1, 5]
    assert not split.mask[1, 1:].any()
    # every file row lands at its dialogue and position
    flat_t = split.features["t"].reshape(-1, DIMS["t"]).numpy()[split.flat_index]
    np.testing.assert_array_equal(flat_t, arrays.text_emb)
    flat_present = split.present["a"].reshape(-1).numpy()[split.flat_index]
    np.testing.assert_array_equal(flat_present, arrays.has_audio)
    assert not split.present["a"][~split.mask].any()
    labels = split.labels.reshape(-1).numpy()[split.flat_index]
    assert [MELD_CLASSES[i] for i in labels] == list(arrays.label)
    assert (split.labels[~split.mask] == IGNORE).all()
    assert split.n_scored == 9


def test_labels_outside_the_map_are_context_not_targets(tmp_path):
    raw = ["neu", "xxx", "hap", "sur", "fru"]
    path = write_features(tmp_path / "i.h5", "iemocap", {"train": [5, 5], "dev": [5]}, labelled_rows(raw))
    names = resolve_class_names(preset_for_dataset("iemocap"), [])
    split = load_split(path, "train", names)
    assert split.mask.sum() == 10  # all rows are fed as context
    assert split.n_scored == 6  # xxx and sur are excluded from loss and metrics
    assert split.excluded == {"xxx": 2, "sur": 2}
    assert split.labels[0].tolist() == [2, IGNORE, 0, IGNORE, 5]


def test_batch_cuts_to_the_requested_length(meld_file):
    split = load_split(meld_file, "train", MELD_CLASSES, modalities="av")
    assert set(split.features) == {"a", "v"}
    batch = split.batch(torch.tensor([0, 1]), max_len=3)
    assert batch["features"]["a"].shape == (2, 3, DIMS["a"])
    assert batch["mask"].sum().item() == 4


def test_class_maps():
    assert resolve_class_names("meld", []) == list(MELD_CLASSES)
    assert resolve_class_names("sample", []) == list(MELD_CLASSES)
    assert resolve_class_names("iemocap", []) == ["hap", "sad", "neu", "ang", "exc", "fru"]
    assert resolve_class_names("custom", ["b", "a", "", "b"]) == ["a", "b"]
    assert preset_for_dataset("mycorpus") == "custom"
    assert default_layers("iemocap") == 5 and default_layers("meld") == 1 and default_layers("custom") == 1
    with pytest.raises(ValueError, match="at least 2"):
        resolve_class_names("custom", ["only", "only"])
    with pytest.raises(ValueError, match="unknown class map"):
        resolve_class_names("emotions", [])


def test_modalities_are_validated_and_ordered():
    assert normalize_modalities("VAT") == "tav"
    assert normalize_modalities("at") == "ta"
    assert normalize_modalities("text,audio,visual") == "tav"
    assert normalize_modalities("visual, text") == "tv"
    assert normalize_modalities(("audio",)) == "a"
    for bad in ("", "tx", "text,smell", ","):
        with pytest.raises(ValueError, match="subset"):
            normalize_modalities(bad)


def test_inspect_reports_dims_and_refuses_a_file_without_dev(tmp_path, meld_file):
    info = inspect_features(meld_file)
    assert info.dims == DIMS and info.dataset == "meld" and set(info.splits) == {"train", "dev", "test"}
    no_dev = write_features(tmp_path / "nodev.h5", "meld", {"train": [2]}, labelled_rows(["joy"]))
    with pytest.raises(ValueError, match=r"nodev\.h5.*dev"):
        inspect_features(no_dev)
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        inspect_features(tmp_path / "absent.h5")


def test_training_refuses_a_class_map_that_matches_no_label(tmp_path):
    from trainer.dialogue.config import DialogueTrainConfig
    from trainer.dialogue.fit import train_dialogue

    path = write_features(
        tmp_path / "f.h5", "meld", {"train": [3], "dev": [2]}, labelled_rows(["hap", "xxx"])
    )
    with pytest.raises(ValueError, match=r"f\.h5: no train utterance has a label of the class map"):
        train_dialogue(
            DialogueTrainConfig(features=str(path), out=str(tmp_path / "run"), heads=1, progress=False)
        )
    assert not (tmp_path / "run").exists()
