"""Embed tasks isolate each utterance: a failing or non-finite encoder output costs only that modality of
that utterance (zeros, ``has_*`` False, a problem line), never the partition (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.extract.options import EmbedSpec
from pipeline.extract.stage_media import rows_to_columns
from pipeline.extract.tasks import embed_partition
from pipeline.manifest import Utterance
from pipeline.store.cache import ShardedWriter
from pipeline.testing.utterances import make_utterance
from pipeline.utterance.featurize import finite_or_missing, isolated_embeddings

torch.set_num_threads(1)

S = 16  # stored crop size


def _utt(d: str, p: int, text: str, split: str = "train") -> Utterance:
    return make_utterance(split=split, dialogue_id=d, position=p, text=text, clip=f"/clips/{d}_{p}.mp4")


def _media_row(uid: str, waveform: np.ndarray, frames: int = 2) -> dict:
    rng = np.random.default_rng(len(uid))
    return {
        "utt_id": uid,
        "label": "joy",
        "waveform": waveform.astype(np.float32),
        "has_audio": len(waveform) > 0,
        "audio_cut": False,
        "scenes": rng.integers(0, 255, (frames, 3, S, S), dtype=np.uint8),
        "has_visual": frames > 0,
        "faces": rng.integers(0, 255, (1, 3, S, S), dtype=np.uint8),
        "face_frame": np.zeros(1, np.int16),
        "face_weight": np.ones(1, np.float32),
        "face_prob": np.ones(1, np.float32),
        "face_box": np.zeros((1, 4), np.float32),
        "has_face": True,
        "problems": "[]",
    }


def _media_file(tmp_path, utts, waves) -> str:
    w = ShardedWriter(tmp_path / "media.h5")
    w.append("train", rows_to_columns([_media_row(u.id, x) for u, x in zip(utts, waves, strict=True)]))
    return str(w.finalize({"train": [u.id for u in utts]}))


def test_one_failing_and_one_non_finite_audio_cost_only_their_own_audio(tmp_path, monkeypatch):
    import pipeline.utterance.featurize as featurize

    real_encode = featurize.encode_waveforms
    poison = 1234  # a waveform of this length makes the (real) audio encoder call raise

    def encode(encoder, waves, *args, **kwargs):
        if any(len(w) == poison for w in waves):
            raise RuntimeError("encoder failed on a poisoned waveform")
        return real_encode(encoder, waves, *args, **kwargs)

    monkeypatch.setattr(featurize, "encode_waveforms", encode)
    utts = [_utt("d0", 0, "hi"), _utt("d0", 1, "bye"), _utt("d0", 2, "so"), _utt("d0", 3, "ok")]
    tone = np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
    waves = [
        tone,
        tone[:poison],  # the encoder raises on this one (fault injection)
        np.full(16000, 3e38, np.float32),  # finite samples, but their power overflows: NaN vector
        tone[:8000],
    ]
    spec = EmbedSpec(("audio", "visual"), "cpu", 8, _media_file(tmp_path, utts, waves), "random", None, 2)
    out = embed_partition(utts, spec)
    rows = out["rows"]
    assert rows["utt_id"] == [u.id for u in utts]  # the partition's other utterances are all there
    assert rows["has_audio"].tolist() == [True, False, False, True]
    assert np.isfinite(rows["audio_emb"]).all() and np.isfinite(rows["visual_emb"]).all()
    assert not rows["audio_emb"][1:3].any() and rows["audio_emb"][[0, 3]].any()
    assert rows["has_visual"].all()  # the other modality of the bad utterances is kept
    by_utt = {(p["utt_id"], p["modality"]): p for p in out["problems"]}
    assert set(by_utt) == {(utts[1].id, "audio"), (utts[2].id, "audio")}
    failed, nan = by_utt[(utts[1].id, "audio")], by_utt[(utts[2].id, "audio")]
    assert "failed" in failed["problem"] and "RuntimeError" in failed["problem"]
    assert "not finite" in nan["problem"]
    for p in (failed, nan):
        assert p["file"].endswith(".mp4") and p["fix"] and p["split"] == "train" and p["stage"] == "embed"


def test_isolated_embeddings_retries_per_group_and_keeps_good_groups():
    calls = []

    def compute(idx):
        calls.append(list(idx))
        if 2 in idx:
            raise ValueError("bad input 2")
        return np.ones((len(idx), 3), np.float32) * np.array(idx)[:, None], np.ones(len(idx), bool)

    utts = [_utt("d", i, "x") for i in range(4)]
    problems: list[dict] = []
    emb, has = isolated_embeddings(compute, 4, 3, 1, [[0, 1], [2], [3]], problems, utts, "text", "m")
    assert calls == [[0, 1, 2, 3], [0, 1], [2], [3]]
    assert has.tolist() == [True, True, False, True] and emb[3, 0] == 3 and not emb[2].any()
    assert [p["utt_id"] for p in problems] == [utts[2].id] and "bad input 2" in problems[0]["problem"]


def test_finite_or_missing_clears_every_flag_of_a_non_finite_visual_row():
    emb = np.ones((3, 4), np.float32)
    emb[1, 2] = np.inf
    has_visual, has_face = np.ones(3, bool), np.ones(3, bool)
    problems: list[dict] = []
    utts = [_utt("d", i, "x") for i in range(3)]
    emb, has_visual, has_face = finite_or_missing(
        (emb, has_visual, has_face), utts, "visual", "random", problems
    )
    assert np.isfinite(emb).all() and not emb[1].any()
    assert has_visual.tolist() == [True, False, True] and has_face.tolist() == [True, False, True]
    assert len(problems) == 1


def _poisoned_text_model(folder, poison: str, clean: list[str]) -> str:
    """The tiny RoBERTa with NaN input embeddings for the tokens only ``poison`` uses."""
    from transformers import AutoTokenizer, RobertaModel

    from pipeline.testing.text_model import make_tiny_roberta

    make_tiny_roberta(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    used_clean = {i for t in clean for i in tok(t)["input_ids"]}
    only_poison = sorted(set(tok(poison)["input_ids"]) - used_clean)
    assert only_poison, "the poison text shares every token with the clean ones"
    model = RobertaModel.from_pretrained(folder)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[only_poison] = float("nan")
    model.save_pretrained(folder)
    return str(folder)


@pytest.mark.filterwarnings("ignore")
def test_a_text_model_giving_nan_for_one_dialogue_marks_only_its_text_missing(tmp_path):
    clean = ["Ann: hello there", "Ann: fine thanks", "Ann: see you"]
    utts = [
        _utt("d0", 0, "hello there"),
        _utt("d0", 1, "fine thanks"),
        _utt("d1", 0, "QZQZ"),
        _utt("d2", 0, "see you"),
    ]
    model = _poisoned_text_model(tmp_path / "tiny", "Ann: QZQZ", clean)
    out = embed_partition(utts, EmbedSpec(("text",), "cpu", 8, None, None, model))
    rows = out["rows"]
    assert rows["has_text"].tolist() == [True, True, False, True]
    assert np.isfinite(rows["text_emb"]).all() and not rows["text_emb"][2].any()
    assert [(p["utt_id"], p["modality"]) for p in out["problems"]] == [(utts[2].id, "text")]
    assert "not finite" in out["problems"][0]["problem"] and out["problems"][0]["file"] == model
