"""Fixtures of the model-folder tests: a run trained on generated features, and its exported folder.

The features.h5's config says it was made with random encoders and the shipped MiniLM (frozen), so export
finds and packs the real things without an extraction.
"""

from __future__ import annotations

import json

import h5py
import pytest

from pipeline.testing.features_h5 import random_rows, write_features
from pipeline.text.embedder import DEFAULT_TEXT_MODEL, TextEmbedder
from pipeline.utterance.process import MediaConfig
from trainer.apply.export import export_model
from trainer.dialogue.fit import DialogueTrainConfig, train_dialogue

DIMS = {"t": 384, "a": 300, "v": 600}


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    features = write_features(
        root / "cache" / "custom" / "0123abcd" / "features.h5",
        "custom",
        {"train": [4, 3, 5], "dev": [3, 4], "test": [4]},
        random_rows(DIMS, ["calm", "loud", "odd"]),
    )
    config = {
        "dataset": "custom",
        "modalities": ["audio", "text", "visual"],
        "media": MediaConfig().to_dict(),
        "encoders": "random-seed0",
        "text_model": TextEmbedder(DEFAULT_TEXT_MODEL).identity,
    }
    with h5py.File(features, "r+") as f:
        f.attrs["config"] = json.dumps(config)
    out = root / "run"
    train_dialogue(
        DialogueTrainConfig(
            features=str(features),
            out=str(out),
            seeds=2,
            epochs=2,
            patience=2,
            heads=2,
            hidden=8,
            fusion_layers=1,
            progress=False,
            threads=1,
        )
    )
    return out


@pytest.fixture(scope="session")
def model_dir(run, tmp_path_factory):
    return export_model(run, tmp_path_factory.mktemp("models") / "model")
