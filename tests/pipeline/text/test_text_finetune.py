"""EmoBERTa-style text fine-tuning: learning, saving, the frozen-bottom cache, resume, labels, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.manifest import Utterance
from pipeline.text.embedder import TextEmbedder, load_text_model
from pipeline.text.finetune.examples import Examples, build_examples, default_label_map
from pipeline.text.finetune.heads import FrozenBottomCache, predict
from pipeline.text.finetune.loop import finetune_text
from pipeline.text.finetune.recipe import FinetuneConfig
from pipeline.text.finetune.state import META_FILE, read_finetune_meta

torch.set_num_threads(1)

KEYWORDS = {"joy": "happy joy", "anger": "angry mad", "sadness": "sad cry", "neutral": "hello the"}
FILLER = ("okay", "yes", "no", "we", "they", "you", "is", "are", "was", "me")


def keyword_corpus(n_train: int = 48, n_dev: int = 16, n_test: int = 16, seed: int = 0) -> list[Utterance]:
    """MELD-style dialogues of 4 turns; turn 2 carries an emotion keyword and the label, the rest are
    unlabelled filler (context only)."""
    rng = np.random.default_rng(seed)
    labels = sorted(KEYWORDS)
    out = []
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        for d in range(n):
            label = labels[d % len(labels)]
            for pos in range(4):
                words = list(rng.choice(FILLER, size=3))
                if pos == 2:
                    words.insert(int(rng.integers(0, 3)), KEYWORDS[label])
                out.append(
                    Utterance(
                        "meld",
                        split,
                        str(d),
                        pos,
                        str(pos),
                        ("Joey", "Ross")[pos % 2],
                        " ".join(words),
                        label if pos == 2 else None,
                    )
                )
    return out


@pytest.mark.slow  # quality gain over 3 epochs; quick: test_text_overfit.py
def test_finetune_learns_keywords_and_writes_a_loadable_folder(tmp_path):
    # the shipped MiniLM (a random tiny model needs far more steps to learn anything)
    utts = keyword_corpus()
    config = FinetuneConfig(
        out=tmp_path / "ft", max_length=32, epochs=3, batch_size=8, lr=2e-4, evals_per_epoch=1, seed=0
    )
    out = finetune_text(utts, config)
    assert out == tmp_path / "ft"  # the folder returned is the one written
    meta = read_finetune_meta(out)
    assert len(meta["history"]) == 3
    assert meta["dev_weighted_f1"] >= 0.9, meta["history"]
    assert meta["dev_weighted_f1"] == max(h["dev_weighted_f1"] for h in meta["history"])
    assert meta["test_weighted_f1"] >= 0.8
    assert meta["config"]["label_map"] == default_label_map(utts)
    assert meta["n_train"] == 48 and not (out / "resume" / "best.tmp").exists()
    # the folder is a TextEmbedder model; fine-tuned first-token embeddings separate the classes
    emb = TextEmbedder(str(out), max_length=32)
    assert emb.dim == 384 and emb.identity.startswith("ft:")
    from pipeline.manifest import group_dialogues

    dev = [d for d in group_dialogues(utts) if d.split == "dev"]
    vecs = emb.embed(dev)
    rows = [(vecs[u.id], u.label) for d in dev for u in d.utterances if u.label]
    x = np.stack([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    centroids = {lab: x[y == lab].mean(0) for lab in KEYWORDS}
    nearest = [min(centroids, key=lambda lab: np.linalg.norm(v - centroids[lab])) for v in x]
    assert np.mean(np.array(nearest) == y) >= 0.9


@pytest.mark.parametrize("which", ["minilm", "tiny_roberta"])
def test_frozen_bottom_cache_gives_the_full_models_logits(which, tiny_roberta):
    from pipeline.text.context import pad_batch
    from pipeline.text.finetune.heads import full_logits

    source = None if which == "minilm" else str(tiny_roberta)
    tok, model = load_text_model(source, for_classification=4)
    model.eval()
    utts = keyword_corpus(n_train=6, n_dev=2, n_test=0)
    ex = build_examples(utts, tok, 40, {k: i for i, k in enumerate(sorted(KEYWORDS))})["train"]
    pad = tok.pad_token_id
    full = predict(model, ex, 4, pad, "cpu")
    cache = FrozenBottomCache(model, ex, 1, pad, "cpu", batch_size=3, dtype=torch.float32)
    cached = predict(model, ex, 4, pad, "cpu", cache)
    np.testing.assert_allclose(cached, full, atol=1e-5)
    # cls through full_logits is the HF model's own head
    ids, mask = (torch.from_numpy(a) for a in pad_batch(ex.ids[:3], pad))
    with torch.no_grad():
        np.testing.assert_allclose(
            full_logits(model, ids, mask).numpy(),
            model(input_ids=ids, attention_mask=mask).logits.numpy(),
            atol=1e-6,
        )
    # mean pooling: cached and full paths agree, and differ from cls
    full_mean = predict(model, ex, 4, pad, "cpu", pooling="mean")
    np.testing.assert_allclose(predict(model, ex, 4, pad, "cpu", cache, pooling="mean"), full_mean, atol=1e-5)
    assert not np.allclose(full_mean, full, atol=1e-4)
    from pipeline.text.context import special_layout

    layout = special_layout(tok)
    full_target = predict(model, ex, 4, pad, "cpu", pooling="target", layout=layout)
    np.testing.assert_allclose(
        predict(model, ex, 4, pad, "cpu", cache, pooling="target", layout=layout), full_target, atol=1e-5
    )
    assert not np.allclose(full_target, full_mean, atol=1e-4)
    with pytest.raises(ValueError, match="layout"):
        predict(model, ex, 4, pad, "cpu", pooling="target")
    assert cache.nbytes == sum(len(i) for i in ex.ids) * model.config.hidden_size * 4


def _final_weights(folder: Path) -> dict:
    return torch.load(folder / "resume" / "state.pt", weights_only=True)["model"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_budget_stop_then_resume_equals_an_uninterrupted_run(tiny_roberta, tmp_path, device):
    # on cuda: the state file holds the CUDA generator (dropout) and its CPU one goes back on the CPU
    utts = keyword_corpus(n_train=24, n_dev=8, n_test=0)
    kw = {
        "base_model": str(tiny_roberta),
        "max_length": 32,
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "freeze_layers": 1,
        "evals_per_epoch": 1,
        "seed": 3,
        "eval_test": False,
        "device": device,
    }
    finetune_text(utts, FinetuneConfig(out=tmp_path / "a", **kw))
    finetune_text(utts, FinetuneConfig(out=tmp_path / "b", max_minutes=0.0, **kw))  # stops after a step
    stopped = read_finetune_meta(tmp_path / "b")
    assert stopped["stopped_early"] and stopped["history"][-1]["step"] == 1
    finetune_text(utts, FinetuneConfig(out=tmp_path / "b", **kw))  # same call without the budget: resumes
    resumed = read_finetune_meta(tmp_path / "b")
    assert not resumed["stopped_early"] and resumed["history"][-1]["step"] == 6
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    tol = {"rtol": 0, "atol": 0} if device == "cpu" else {"rtol": 1e-4, "atol": 1e-5}  # GPU atomics
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=k)
    state = torch.load(tmp_path / "b" / "resume" / "state.pt", weights_only=True)
    assert ("cuda_rng" in state) == (device == "cuda")
    with pytest.raises(ValueError, match="different configuration"):
        finetune_text(utts, FinetuneConfig(out=tmp_path / "b", **{**kw, "lr": 5e-4}))


def test_rng_states_round_trip_through_a_state_file(tmp_path):
    from pipeline.text.finetune.state import restore_rng_states, rng_states

    torch.manual_seed(5)
    saved = rng_states("cpu")
    assert set(saved) == {"torch_rng"}
    expected = torch.rand(4)
    torch.save(saved, tmp_path / "s.pt")
    torch.rand(10)
    restore_rng_states(torch.load(tmp_path / "s.pt", map_location="cpu", weights_only=True), "cuda")
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)  # no GPU here: CPU state only


def test_labels_default_maps_and_context_of_unlabelled_turns(tiny_roberta):
    utts = keyword_corpus(n_train=4, n_dev=2, n_test=0)
    assert default_label_map(utts)["neutral"] == 0 and len(default_label_map(utts)) == 7
    iemocap = [
        Utterance("iemocap", "train", "Ses01F_impro01", 0, "Ses01F_impro01_F000", "Ses01F", "hi", "xxx")
    ]
    assert default_label_map(iemocap) == {"hap": 0, "sad": 1, "neu": 2, "ang": 3, "exc": 4, "fru": 5}
    # a custom corpus: its train split's labels, sorted; none labelled is an error naming the fix
    custom = [
        Utterance("custom", s, "0", i, f"0_{i}", "A", "hi", lab)
        for i, (s, lab) in enumerate([("train", "x"), ("train", "b"), ("dev", "z"), ("train", "")])
    ]
    assert default_label_map(custom) == {"b": 0, "x": 1}
    with pytest.raises(ValueError, match="no labelled train utterance"):
        default_label_map([Utterance("custom", "train", "0", 0, "0", "A", "hi", "")])
    with pytest.raises(ValueError, match="label_map"):  # mixed corpora have no default
        default_label_map(iemocap + [Utterance("custom", "train", "0", 0, "0", "A", "hi", "x")])
    tok, _ = load_text_model(str(tiny_roberta))
    ex = build_examples(utts, tok, 64, default_label_map(utts))
    assert isinstance(ex["train"], Examples) and len(ex["train"]) == 4  # only the labelled turns
    # the unlabelled turns are in the context: the input holds more than the target's own tokens
    target = tok(f"{utts[2].speaker}: {utts[2].text}", add_special_tokens=False)["input_ids"]
    assert len(ex["train"].ids[0]) > len(target) + 6
    assert list(ex["train"].labels) == [
        default_label_map(utts)[u.label] for u in utts if u.label and u.split == "train"
    ]


def test_missing_dev_and_offline_hub_id_raise(tiny_roberta, tmp_path, monkeypatch):
    utts = [u for u in keyword_corpus(n_train=4, n_dev=1, n_test=0) if u.split == "train"]
    with pytest.raises(ValueError, match="no labelled dev"):
        finetune_text(
            utts, FinetuneConfig(out=tmp_path / "x", base_model=str(tiny_roberta), max_length=32, epochs=1)
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="local folder"):
        finetune_text(utts, FinetuneConfig(out=tmp_path / "y", base_model="m2f-test/not-a-model", epochs=1))
    with pytest.raises(FileNotFoundError, match="not a folder written by finetune_text"):
        read_finetune_meta(tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("freeze_layers", [0, 1])
def test_finetune_on_cuda_with_amp(tiny_roberta, tmp_path, freeze_layers):
    # the tiny random model (the MiniLM package is not on the GPU machine): it runs, selects, saves
    utts = keyword_corpus()
    out = finetune_text(
        utts,
        FinetuneConfig(
            out=tmp_path / "gpu",
            base_model=str(tiny_roberta),
            device="cuda",
            max_length=32,
            epochs=3,
            batch_size=8,
            lr=1e-3,
            freeze_layers=freeze_layers,
            evals_per_epoch=1,
        ),
    )
    meta = json.loads((out / META_FILE).read_text())
    assert meta["config"]["device"] == "cuda" and len(meta["history"]) == 3
    assert 0.0 <= meta["dev_weighted_f1"] <= 1.0 and "test_weighted_f1" in meta
    from pipeline.manifest import group_dialogues

    dialogues = group_dialogues(utts)[:3]
    on_gpu = TextEmbedder(str(out), device="cuda").embed(dialogues)
    on_cpu = TextEmbedder(str(out), device="cpu").embed(dialogues)
    for k in on_cpu:
        np.testing.assert_allclose(on_gpu[k], on_cpu[k], atol=1e-3)


def test_resolve_defaults_by_device_and_size(tiny_roberta):
    from pipeline.text.finetune.recipe import resolve_defaults

    _, minilm = load_text_model(None, for_classification=7)
    cpu = resolve_defaults(FinetuneConfig(device="cpu"), minilm)
    assert (cpu.freeze_layers, cpu.lr, cpu.max_length, cpu.epochs, cpu.pooling) == (2, 1e-4, 64, 2, "target")
    gpu = resolve_defaults(FinetuneConfig(device="cuda"), minilm)
    assert (gpu.freeze_layers, gpu.lr, gpu.max_length, gpu.epochs, gpu.pooling) == (0, 5e-5, 128, 5, "cls")
    given = resolve_defaults(FinetuneConfig(device="cpu", freeze_layers=1, lr=3e-5), minilm)
    assert (given.freeze_layers, given.lr) == (1, 3e-5)
    minilm.config.hidden_size = 1024  # a RoBERTa-large-sized model gets EmoBERTa's rate
    assert resolve_defaults(FinetuneConfig(device="cuda"), minilm).lr == 1e-5


def test_recipe_follows_the_base_full_finetuning_and_cls_for_a_non_minilm_base(tiny_roberta):
    from pipeline.text.finetune.recipe import resolve_defaults, uses_minilm_recipe

    _, model = load_text_model(str(tiny_roberta), for_classification=7)
    for device in ("cpu", "cuda"):  # the paper's recipe (EmoBERTa) on either device
        cfg = resolve_defaults(FinetuneConfig(base_model=str(tiny_roberta), device=device), model)
        assert (cfg.freeze_layers, cfg.pooling, cfg.lr) == (0, "cls", 5e-5), device
    # overridable: frozen layers bring target pooling unless pooling is given too
    cfg = resolve_defaults(FinetuneConfig(base_model=str(tiny_roberta), freeze_layers=1), model)
    assert (cfg.freeze_layers, cfg.pooling) == (1, "target")
    cfg = resolve_defaults(
        FinetuneConfig(base_model=str(tiny_roberta), freeze_layers=1, pooling="cls"), model
    )
    assert cfg.pooling == "cls"
    assert uses_minilm_recipe(None) and uses_minilm_recipe("sentence-transformers/all-MiniLM-L6-v2")
    from pipeline.text.embedder import DEFAULT_TEXT_MODEL

    assert uses_minilm_recipe(DEFAULT_TEXT_MODEL)
    assert not uses_minilm_recipe("roberta-large") and not uses_minilm_recipe(str(tiny_roberta))


def test_past_context_is_trained_recorded_and_embedded_with(tiny_roberta, tmp_path):
    from pipeline.extract import ExtractError, ExtractOptions
    from pipeline.extract.stage_text import finetune_key

    utts = keyword_corpus(n_train=4, n_dev=2, n_test=1)
    out = finetune_text(
        utts,
        FinetuneConfig(
            out=tmp_path / "ft",
            base_model=str(tiny_roberta),
            max_length=32,
            epochs=1,
            batch_size=8,
            evals_per_epoch=1,
            eval_test=False,
            context="past",
        ),
    )
    assert read_finetune_meta(out)["config"]["context"] == "past"
    emb = TextEmbedder(str(out))
    assert emb.context == "past" and "past|target" in emb.identity
    # cached apart from the full-context fine-tune; refused beside a frozen --text-model
    assert finetune_key(utts, "past") == finetune_key(utts) + "-past"
    with pytest.raises(ExtractError, match="--text-context"):
        ExtractOptions("sample", None, text_model=str(out), text_context="past")
    with pytest.raises(ExtractError, match="full or past"):
        ExtractOptions("sample", None, text_context="future")


def test_the_config_is_frozen_and_resolving_it_returns_a_copy(tiny_roberta, tmp_path):
    import dataclasses

    from pipeline.text.finetune.recipe import resolve_defaults

    config = FinetuneConfig(out=tmp_path, base_model=str(tiny_roberta))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    _, model = load_text_model(str(tiny_roberta), for_classification=2)
    resolved = resolve_defaults(config, model)
    assert config.epochs is None and resolved.epochs == 2
    # the run-only fields are not part of the recorded recipe (m2f_text.json keeps its keys)
    assert not {"out", "limit_train", "eval_test", "threads"} & resolved.recorded().keys()
    assert list(resolved.recorded())[:3] == ["base_model", "max_length", "epochs"]
    with pytest.raises(ValueError, match="unknown pooling"):
        FinetuneConfig(pooling="max")
    with pytest.raises(ValueError, match="config.out"):
        finetune_text([], FinetuneConfig())


def test_bad_recipe_settings_are_refused_before_any_training():
    from pipeline.text.finetune.recipe import param_groups

    with pytest.raises(ValueError, match="unknown context 'future'"):
        FinetuneConfig(context="future")
    with pytest.raises(ValueError, match="unknown pooling"):
        FinetuneConfig(pooling="mean-of-max")
    with pytest.raises(ValueError, match="lr is None"):  # an unresolved config never reaches the optimiser
        param_groups(None, FinetuneConfig())
