"""trainer.apply.live: a causal exported model predicts each utterance as it is added, and those predictions
are the ones train-dialog wrote for the finished conversations; a bidirectional model is refused unless
revisions are allowed.

The pipeline is real (the ``live_models`` fixture in tests/conftest.py): the sample corpus's clips,
extraction with random encoders and a tiny text model marked as fine-tuned with the past-only context,
a causal and a bidirectional dialogue model, each exported.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pipeline.corpora.sample import prepare_sample
from trainer.apply.live import LiveError, LiveModel

pytestmark = pytest.mark.slow


def _test_dialogues():
    dialogues: dict[str, list] = {}
    for u in prepare_sample():
        if u.split == "test":
            dialogues.setdefault(u.dialogue_id, []).append(u)
    return dialogues


def test_causal_model_live_equals_the_finished_conversation(live_models):
    root, models = live_models
    with open(root / "run-causal" / "seed0" / "predictions_test.csv", newline="") as f:
        ref = {r["utt_id"]: r for r in csv.DictReader(f)}
    meta = json.loads((models["causal"] / "m2f_model.json").read_text())
    assert meta["live"] == {"causal": True, "dialog_causal": True, "text_context": "past"}
    assert "causal: each prediction" in (models["causal"] / "README.md").read_text()
    assert "live use needs `--allow-revisions`" in (models["bidirectional"] / "README.md").read_text()
    with LiveModel.load(models["causal"]) as live:
        assert live.causal
        checked = 0
        for dialogue_id, utts in _test_dialogues().items():
            talk = live.conversation(dialogue_id)
            for u in utts:
                p = talk.add(speaker=u.speaker, text=u.text, clip=u.clip)
                assert p.present == {"text": True, "audio": True, "visual": True} and not p.problems
                want = ref[u.id]
                assert p.predicted == want["predicted"]
                np.testing.assert_allclose(
                    [p.probabilities[c] for c in live.class_names],
                    [float(want[f"p_{c}"]) for c in live.class_names],
                    atol=1e-4,
                )
                checked += 1
            # later utterances changed nothing before them
            for early, late in zip(talk.predictions, talk.revised(), strict=True):
                np.testing.assert_allclose(
                    list(early.probabilities.values()), list(late.probabilities.values()), atol=1e-5
                )
        assert checked == len(ref)


def test_bidirectional_model_is_refused_unless_revisions_are_allowed(live_models):
    _, models = live_models
    with pytest.raises(LiveError, match="--allow-revisions"):
        LiveModel.load(models["bidirectional"])
    with LiveModel.load(models["bidirectional"], allow_revisions=True) as live:
        assert not live.causal
        talk = live.conversation("x")
        first = talk.add(speaker="Ann", text="fine, thanks")
        assert first.present["text"] and not first.present["audio"] and "audio" in first.present
        talk.add(speaker="Bob", text="you never listen to me")
        assert len(talk.revised()) == 2


def test_a_bad_clip_costs_only_its_media(live_models, tmp_path):
    _, models = live_models
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with LiveModel.load(models["causal"]) as live:
        p = live.conversation("y").add(speaker="Ann", text="hello", clip=bad)
        assert p.present == {"text": True, "audio": False, "visual": False}
        assert p.problems and str(bad) in p.problems[0]
        assert abs(sum(p.probabilities.values()) - 1) < 1e-5
