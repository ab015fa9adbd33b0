"""The text fine-tuning's default class map covers custom corpora (their train labels), so `m2f extract
--dataset custom` without --text-model fine-tunes instead of stopping with a traceback."""

from __future__ import annotations

import pytest

from pipeline.manifest import Utterance
from pipeline.testing.utterances import make_utterance
from pipeline.text.finetune.examples import default_label_map


def _utt(split: str, pos: int, label: str) -> Utterance:
    return make_utterance(split=split, position=pos, label=label)


def test_custom_corpus_gets_its_train_labels_sorted():
    utts = [_utt("train", 0, "joy"), _utt("train", 1, "anger"), _utt("dev", 2, "fear"), _utt("train", 3, "")]
    assert default_label_map(utts) == {"anger": 0, "joy": 1}


def test_custom_corpus_without_train_labels_says_what_to_do():
    with pytest.raises(ValueError, match="--text-model"):
        default_label_map([_utt("test", 0, "")])
