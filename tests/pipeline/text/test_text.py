"""Text modality: context input and TextEmbedder (a tiny random RoBERTa built here, the shipped MiniLM)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.manifest import Dialogue, Utterance
from pipeline.testing.text_model import make_tiny_roberta
from pipeline.text.context import (
    SpecialLayout,
    assemble_context,
    build_context,
    build_contexts,
    special_layout,
)
from pipeline.text.embedder import DEFAULT_TEXT_MODEL, TextEmbedder, load_text_model

torch.set_num_threads(1)


def make_dialogue(texts_and_speakers, split="train", dialogue_id="0", labels=None) -> Dialogue:
    """A MELD-style dialogue from ``[(speaker, text), ...]``."""
    utts = tuple(
        Utterance("meld", split, dialogue_id, i, str(i), spk, txt, None if labels is None else labels[i])
        for i, (spk, txt) in enumerate(texts_and_speakers)
    )
    return Dialogue("meld", split, dialogue_id, utts)


DIALOGUE = make_dialogue(
    [
        ("Joey", "hi"),
        ("Ross", "hey you"),
        ("Monica", "what why"),
        ("Ross", "oh my god"),
        ("Joey", "okay fine"),
    ]
)


# --- the context input ---------------------------------------------------------------------------


def test_assemble_context_layout_and_far_past_truncation():
    layout = SpecialLayout(prefix=(100,), mid=(101, 101), suffix=(102,))  # RoBERTa-like, 6 specials
    utts = [[1, 1], [2, 2, 2], [3], [4, 4], [5, 5, 5]]
    full = assemble_context(utts, 3, layout, max_length=64)
    assert full == [100, 1, 1, 2, 2, 2, 3, 101, 101, 4, 4, 101, 101, 5, 5, 5, 102]
    # budget 12 - 6 = 6 tokens: target (2) + future (3) leave 1 -> only the nearest past utterance (3)
    expected = [100, 3, 101, 101, 4, 4, 101, 101, 5, 5, 5, 102]
    assert assemble_context(utts, 3, layout, max_length=12) == expected
    # budget 10 - 6 = 4: no past; the future is cut before the target
    assert assemble_context(utts, 3, layout, max_length=10) == [100, 101, 101, 4, 4, 101, 101, 5, 5, 102]
    # first utterance: empty past segment; last: empty future segment; the target stays in segment 2
    assert assemble_context(utts, 0, layout, 64) == [100, 101, 101, 1, 1, 101, 101, 2, 2, 2, 102]
    assert assemble_context(utts, 4, layout, 64) == [
        100,
        1,
        1,
        2,
        2,
        2,
        3,
        4,
        4,
        101,
        101,
        5,
        5,
        5,
        101,
        101,
        102,
    ]
    with pytest.raises(IndexError):
        assemble_context(utts, 5, layout, 64)
    with pytest.raises(ValueError, match="no room"):
        assemble_context(utts, 0, layout, 6)


def test_assemble_context_keeps_whole_past_utterances_nearest_first():
    layout = SpecialLayout(prefix=(100,), mid=(101,), suffix=(102,))
    utts = [[1], [2] * 3, [3] * 2, [4], [9]]
    out = assemble_context(utts, 3, layout, max_length=10)  # 4 specials, target + future 2: room for 4
    # [3, 3] fits; [2, 2, 2] does not; [1] would fit but lies beyond it: the past stays contiguous
    assert out == [100, 3, 3, 101, 4, 101, 9, 102]


def test_build_context_minilm_speaker_prefix_and_separator():
    tok, _ = load_text_model(None)
    ids = build_context(DIALOGUE, 2, tok, max_length=128)
    text = tok.decode(ids)
    assert text == "[CLS] joey : hi ross : hey you [SEP] monica : what why [SEP] ross : oh my god [SEP]"
    short = tok.decode(build_context(DIALOGUE, 2, tok, max_length=19))  # room for one past
    assert short == "[CLS] ross : hey you [SEP] monica : what why [SEP] ross : oh my god [SEP]"
    assert len(build_context(DIALOGUE, 2, tok, max_length=8)) == 8


def test_build_context_roberta_layout(tiny_roberta):
    tok, _ = load_text_model(str(tiny_roberta))
    layout = special_layout(tok)
    assert layout == SpecialLayout((tok.bos_token_id,), (tok.eos_token_id,) * 2, (tok.eos_token_id,))
    ids = build_context(DIALOGUE, 4, tok, max_length=128)
    assert tok.decode(ids) == (
        "<s>Joey: hiRoss: hey youMonica: what whyRoss: oh my god</s></s>Joey: okay fine</s></s></s>"
    )
    assert max(len(v) for v in build_contexts([DIALOGUE], tok, 20).values()) <= 20


# --- loading -------------------------------------------------------------------------------------


def test_hub_id_offline_raises_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="pass that local folder"):
        TextEmbedder("m2f-test/no-such-model")


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEmbedder(str(tmp_path / "nope"))


def test_folder_without_model_raises(tmp_path):
    with pytest.raises(OSError, match="could not load a text model from folder"):
        TextEmbedder(str(tmp_path))


# --- embeddings ----------------------------------------------------------------------------------


def test_tiny_roberta_embeddings_deterministic_and_padding_free(tiny_roberta):
    d2 = make_dialogue([("Phoebe", "sad cry tears " * 6), ("Joey", "hi")], dialogue_id="1")
    emb = TextEmbedder(str(tiny_roberta), batch_size=3)
    out = emb.embed([DIALOGUE, d2])
    assert emb.dim == 32 and set(out) == {u.id for u in DIALOGUE.utterances + d2.utterances}
    assert all(v.shape == (32,) and v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())
    # padding must not change a row: batch of one vs mixed-length batches
    single = TextEmbedder(str(tiny_roberta), batch_size=1).embed([DIALOGUE, d2])
    for k in out:
        np.testing.assert_allclose(out[k], single[k], atol=1e-5)
    # the same text with another context gets another embedding; every row differs
    keys = sorted(out)
    assert len({out[k].tobytes() for k in keys}) == len(keys)
    # equals the model's own first-token state for an unpadded input
    tok, model = load_text_model(str(tiny_roberta))
    ids = torch.tensor([build_context(DIALOGUE, 1, tok, 128)])
    with torch.inference_mode():
        ref = model.eval()(input_ids=ids).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(out[DIALOGUE.utterances[1].id], ref, atol=1e-5)


def test_pooling_option_and_identity(tiny_roberta, tmp_path):
    cls = TextEmbedder(str(tiny_roberta), pooling="cls")
    mean = TextEmbedder(str(tiny_roberta), pooling="mean")
    a, b = cls.embed([DIALOGUE]), mean.embed([DIALOGUE])
    k = DIALOGUE.utterances[0].id
    assert not np.allclose(a[k], b[k])
    assert cls.identity != mean.identity
    assert cls.identity == TextEmbedder(str(tiny_roberta)).identity  # stable across loads
    other = make_tiny_roberta(tmp_path / "other", seed=1)
    assert TextEmbedder(str(other)).identity.split("|")[0] != cls.identity.split("|")[0]
    with pytest.raises(ValueError, match="pooling"):
        TextEmbedder(str(tiny_roberta), pooling="max")


def test_shipped_minilm_default():
    assert os.path.isdir(DEFAULT_TEXT_MODEL) and DEFAULT_TEXT_MODEL.endswith("model")
    emb = TextEmbedder(batch_size=4, pooling="mean")
    assert emb.dim == 384 and "model:" in emb.identity
    texts = ["I love you so much", "I adore you", "the meeting is at noon"]
    ds = [make_dialogue([("Joey", t)], dialogue_id=str(i)) for i, t in enumerate(texts)]
    out = emb.embed(ds)
    v = [out[d.utterances[0].id] / np.linalg.norm(out[d.utterances[0].id]) for d in ds]
    assert all(x.shape == (384,) for x in v)
    # a trained sentence model: the two "love" sentences are closer than love vs the meeting
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


def test_context_none_and_one_pass_for_several_poolings(tiny_roberta):
    tok, _ = load_text_model(str(tiny_roberta))
    alone = build_contexts([DIALOGUE], tok, 128, context="none")
    assert tok.decode(alone[DIALOGUE.utterances[2].id]) == "<s>Monica: what why</s>"
    with pytest.raises(ValueError, match="context"):
        build_contexts([DIALOGUE], tok, 128, context="future")
    both = TextEmbedder(str(tiny_roberta)).embed_poolings([DIALOGUE], ("cls", "mean"))
    for pooling in ("cls", "mean"):
        single = TextEmbedder(str(tiny_roberta), pooling=pooling).embed([DIALOGUE])
        for k, v in single.items():
            np.testing.assert_allclose(both[pooling][k], v, atol=1e-6)
    no_ctx = TextEmbedder(str(tiny_roberta), context="none")
    assert no_ctx.identity != TextEmbedder(str(tiny_roberta)).identity
    k = DIALOGUE.utterances[2].id
    assert not np.allclose(no_ctx.embed([DIALOGUE])[k], both["cls"][k])


def test_max_length_and_pooling_follow_the_finetuned_folder(tiny_roberta, tmp_path):
    import shutil

    folder = tmp_path / "ft"
    shutil.copytree(tiny_roberta, folder)
    (folder / "m2f_text.json").write_text('{"config": {"max_length": 40, "pooling": "mean"}}')
    assert (TextEmbedder(str(folder)).max_length, TextEmbedder(str(folder)).pooling) == (40, "mean")
    assert TextEmbedder(str(folder), max_length=64, pooling="cls").max_length == 64
    assert TextEmbedder(str(folder), pooling="cls").pooling == "cls"
    plain = TextEmbedder(str(tiny_roberta))
    assert (plain.max_length, plain.pooling) == (128, "cls")
    (folder / "m2f_text.json").write_text('{"config": {}}')
    with pytest.raises(ValueError, match="m2f_text.json"):
        TextEmbedder(str(folder))


@pytest.mark.parametrize("which", ["minilm", "tiny_roberta"])
def test_target_span_and_target_pooling(which, tiny_roberta):
    from pipeline.text.context import target_mask_batch, target_span

    tok, _ = load_text_model(None if which == "minilm" else str(tiny_roberta))
    layout = special_layout(tok)
    expected = "monica : what why" if which == "minilm" else "Monica: what why"
    for max_length in (128, 14):
        ids = build_context(DIALOGUE, 2, tok, max_length)
        start, end = target_span(ids, layout)
        assert tok.decode(ids[start:end]).strip() == expected
    first = build_context(DIALOGUE, 0, tok, 128)  # empty past segment
    f_start, f_end = target_span(first, layout)
    assert tok.decode(first[f_start:f_end]).strip() == ("joey : hi" if which == "minilm" else "Joey: hi")
    masks = target_mask_batch([ids, first], layout, width=max(len(ids), len(first)))
    assert masks.sum(1).tolist() == [end - start, f_end - f_start]
    assert masks[1, f_start:f_end].all() and masks[1].sum() == f_end - f_start
    emb = TextEmbedder(None if which == "minilm" else str(tiny_roberta))
    out = emb.embed_poolings([DIALOGUE], ("mean", "target"))
    k = DIALOGUE.utterances[2].id
    assert not np.allclose(out["mean"][k], out["target"][k])


# --- the causal context ("past") -------------------------------------------------------------------


def test_past_context_leaves_the_future_segment_empty():
    layout = SpecialLayout(prefix=(100,), mid=(101, 101), suffix=(102,))
    utts = [[1, 1], [2, 2, 2], [3], [4, 4], [5, 5, 5]]
    assert assemble_context(utts, 3, layout, 64, future=False) == [
        100,
        1,
        1,
        2,
        2,
        2,
        3,
        101,
        101,
        4,
        4,
        101,
        101,
        102,
    ]
    # the room the future would take goes to the past
    assert assemble_context(utts, 3, layout, 10, future=False) == [100, 3, 101, 101, 4, 4, 101, 101, 102]


def test_past_context_embedding_ignores_later_utterances(tiny_roberta):
    later = make_dialogue(
        [
            ("Joey", "hi"),
            ("Ross", "hey you"),
            ("Monica", "what why"),
            ("Ross", "sad cry tears"),
            ("Joey", "angry no"),
        ]
    )
    past = TextEmbedder(str(tiny_roberta), context="past")
    full = TextEmbedder(str(tiny_roberta), context="full")
    assert past.identity != full.identity and past.describe()["context"] == "past"
    a, b = past.embed([DIALOGUE]), past.embed([later])
    for i in range(3):  # utterances 0-2 are the same, and only what follows them differs
        np.testing.assert_allclose(a[f"meld/train/dia0_utt{i}"], b[f"meld/train/dia0_utt{i}"], atol=1e-6)
    fa, fb = full.embed([DIALOGUE]), full.embed([later])
    assert not np.allclose(fa["meld/train/dia0_utt2"], fb["meld/train/dia0_utt2"], atol=1e-4)


def test_a_folder_fine_tuned_with_past_embeds_with_past_and_refuses_full(tiny_roberta, tmp_path):
    import json
    import shutil

    folder = tmp_path / "ft"
    shutil.copytree(tiny_roberta, folder)
    (folder / "m2f_text.json").write_text(
        json.dumps({"config": {"max_length": 48, "pooling": "cls", "context": "past"}})
    )
    emb = TextEmbedder(str(folder))
    assert emb.context == "past" and emb.identity.endswith("past|target-speaker-v1")
    with pytest.raises(ValueError, match="fine-tuned with context 'past'"):
        TextEmbedder(str(folder), context="full")


def test_model_identity_hashes_every_file_the_model_loads(tiny_roberta, tmp_path):
    """Issue 17.13: a changed tokenizer file, an index or a shard must change the identity (cache key)."""
    import shutil

    from pipeline.text.embedder import model_identity

    folder = tmp_path / "m"
    shutil.copytree(tiny_roberta, folder)
    before = model_identity(str(folder), True)
    (folder / "m2f-finetuned.json").write_text('{"path": "/somewhere/else"}')  # extract's marker: not loaded
    assert model_identity(str(folder), True) == before
    seen = {before}
    for name, text in [
        ("tokenizer_config.json", None),
        ("special_tokens_map.json", '{"x": 1}'),
        ("model.safetensors.index.json", '{"weight_map": {}}'),
        ("pytorch_model-00001-of-00002.bin", "x"),
        ("added_tokens.json", "{}"),
    ]:
        path = folder / name
        if text is None:
            data = path.read_text()
            path.unlink()
            path.write_text(data.replace("}", ' , "x": 1}', 1))
        else:
            path.write_text(text)
        identity = model_identity(str(folder), True)
        assert identity not in seen, name
        seen.add(identity)
