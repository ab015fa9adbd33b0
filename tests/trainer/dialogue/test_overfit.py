"""Overfit one batch: a few steps of the dialogue model's training step on one tiny batch memorise it.

The quick part's check that the model learns at all, also with the order and speaker options on; that
it learns a label only fusion can see (``test_fusion_learns_a_label_that_needs_two_modalities``), the
previous utterance's or the speakers' (test_dialogue_context.py) takes many epochs: slow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.testing.features_h5 import random_rows, write_features
from trainer.dialogue.data import IGNORE, load_split
from trainer.dialogue.model import DialogueModel, DialogueModelConfig
from trainer.dialogue.steps import make_optimizer, predict_probs, train_epoch

DIMS = {"t": 8, "a": 8, "v": 8}
CLASSES = ["joy", "anger", "neutral"]


@pytest.mark.parametrize(
    "context",
    [{}, {"positions": "relative", "speakers": "same-other", "causal": True}],
    ids=["bag", "ordered-speakers-causal"],
)
def test_the_dialogue_model_memorises_one_batch(tmp_path, context):
    torch.manual_seed(0)
    path = write_features(tmp_path / "f.h5", "custom", {"train": [5, 4, 6, 3]}, random_rows(DIMS, CLASSES))
    split = load_split(path, "train", CLASSES, "tav")
    config = DialogueModelConfig(dims=DIMS, n_classes=3, heads=2, hidden=32, fusion_layers=1, dropout=0.0)
    model = DialogueModel(dataclasses.replace(config, **context))
    optimizer = make_optimizer(model, lr=1e-2, weight_decay=0.0, device="cpu")
    gen = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, optimizer, split, 4, gen, "cpu") for _ in range(30)]  # one batch an epoch
    assert losses[-1] < 0.05 < losses[0], losses[::10]  # random labels: memorised, not generalised
    labels = split.labels.reshape(-1).numpy()
    predicted = predict_probs(model, split, 4, "cpu").argmax(axis=1)
    np.testing.assert_array_equal(predicted, labels[labels != IGNORE])
