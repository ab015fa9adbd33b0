"""``m2f train-dialog --head-residual``: the fine-tuned text head's logits saved at extraction and added to
the dialogue model's, from features.h5 through training to export, predict and live use.

The pipeline is real: the sample corpus, text only, embedded by a tiny RoBERTa fine-tuned on it
(``tiny_finetuned`` in tests/conftest.py: a ``finetune_text`` folder with its head, past-only context).
"""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from pipeline.corpora.sample import prepare_sample
from pipeline.manifest import group_dialogues
from pipeline.store.features import read_split, validate_features
from pipeline.testing.features_h5 import random_rows, write_features
from pipeline.text.context import build_contexts, pad_batch
from pipeline.text.embedder import TextEmbedder, head_classes, load_text_model
from pipeline.text.finetune.heads import _pool_mask, full_logits
from trainer.dialogue.config import DialogueTrainConfig, resolve_config
from trainer.dialogue.data import FeaturesError, load_split
from trainer.dialogue.fit import predict_probs, read_metrics, train_dialogue
from trainer.dialogue.model import DialogueModel

SMALL = {"seeds": 1, "heads": 2, "hidden": 16, "fusion_layers": 1, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_finetuned):
    """features.h5 of the sample corpus, text only, made with the fine-tuned folder."""
    from pipeline.extract import ExtractOptions, run_extract

    root = tmp_path_factory.mktemp("residual")
    result = run_extract(
        ExtractOptions(
            dataset="sample",
            root=None,
            cache=root / "cache",
            modalities=("text",),
            text_model=str(tiny_finetuned),
            workers=1,
        )
    )
    return root, result.features


def test_saved_logits_are_the_heads_own_on_the_same_input(extracted, tiny_finetuned):
    _, features = extracted
    assert validate_features(features) == []
    classes = head_classes(tiny_finetuned)
    assert classes is not None and len(classes) == 7
    with h5py.File(features, "r") as f:
        assert json.loads(f.attrs["config"])["text_logits"] == list(classes)
    embedder = TextEmbedder(str(tiny_finetuned))
    tokenizer, model = load_text_model(str(tiny_finetuned), for_classification=len(classes))
    model.eval()
    dialogues = group_dialogues(prepare_sample())
    contexts = build_contexts(dialogues, tokenizer, embedder.max_length, embedder.context)
    checked = 0
    for split in ("train", "dev", "test"):
        arrays = read_split(features, split)
        assert arrays.text_logits_classes == classes and arrays.text_logits.shape == (len(arrays), 7)
        for utt_id, row in zip(arrays.utt_id, arrays.text_logits, strict=True):
            ids, mask = pad_batch([contexts[utt_id]], tokenizer.pad_token_id)
            pool = _pool_mask([contexts[utt_id]], embedder.head_pooling, embedder.layout, "cpu")
            with torch.no_grad():
                direct = full_logits(
                    model, torch.from_numpy(ids), torch.from_numpy(mask), embedder.head_pooling, pool
                )
            np.testing.assert_allclose(row, direct[0].numpy(), atol=1e-5)
            checked += 1
    assert checked == len(prepare_sample())


def test_a_folder_without_a_head_writes_no_logits_and_embeds_as_before(tiny_finetuned, tmp_path):
    # the same weights, m2f_text.json without its label map: no head is read, the embedding is unchanged
    plain = shutil.copytree(tiny_finetuned, tmp_path / "plain")
    meta = json.loads((plain / "m2f_text.json").read_text())
    del meta["config"]["label_map"]
    (plain / "m2f_text.json").write_text(json.dumps(meta))
    dialogues = group_dialogues(prepare_sample())[:2]
    with_head, without = TextEmbedder(str(tiny_finetuned)), TextEmbedder(str(plain))
    assert with_head.classes is not None and without.classes is None
    vectors, logits = with_head.embed_with_logits(dialogues)
    plain_vectors, no_logits = without.embed_with_logits(dialogues)
    assert no_logits == {} and set(logits) == set(vectors)
    for k, v in plain_vectors.items():
        np.testing.assert_allclose(vectors[k], v, atol=1e-6)


def test_untrained_residual_model_predicts_the_heads_classes(extracted):
    _, features = extracted
    resolved = resolve_config(
        DialogueTrainConfig(features=str(features), out="unused", modalities="t", head_residual=True, **SMALL)
    )
    torch.manual_seed(0)
    model = DialogueModel(resolved.model_config()).eval()
    for split in ("dev", "test"):
        data = load_split(features, split, resolved.class_names, "t", head_residual=True)
        probs = predict_probs(model, data, 8, "cpu")
        arrays = read_split(features, split)
        column = [arrays.text_logits_classes.index(c) for c in resolved.class_names]
        head = arrays.text_logits[:, column]
        np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(head), -1).numpy(), atol=1e-6)
        assert (probs.argmax(1) == head.argmax(1)).all()


def test_head_classes_are_mapped_by_name(extracted, tmp_path):
    # the same logits with the columns and the class names permuted: the model sees the same residual
    _, features = extracted
    permuted = shutil.copy(features, tmp_path / "features.h5")
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    with h5py.File(permuted, "r+") as f:
        for split in f:
            ds = f[split]["text_logits"]
            classes = [c.decode() if isinstance(c, bytes) else c for c in ds.attrs["classes"]]
            values = ds[()][:, order]
            del f[split]["text_logits"]
            f[split].create_dataset("text_logits", data=values)
            f[split]["text_logits"].attrs.create(
                "classes", [classes[i] for i in order], dtype=h5py.string_dtype()
            )
    names = resolve_config(DialogueTrainConfig(features=str(features), out="x", modalities="t")).class_names
    a = load_split(features, "dev", names, "t", head_residual=True).residual
    b = load_split(permuted, "dev", names, "t", head_residual=True).residual
    assert a is not None and b is not None
    torch.testing.assert_close(a, b)


def test_refusals_are_one_line(extracted, tmp_path):
    _, features = extracted
    old = write_features(
        tmp_path / "old.h5",
        "sample",
        {"train": [3, 2], "dev": [3]},
        random_rows({"t": 8, "a": 4, "v": 4}, ["joy", "anger"]),
    )
    with pytest.raises(FeaturesError) as no_logits:
        resolve_config(DialogueTrainConfig(features=str(old), out="x", modalities="t", head_residual=True))
    message = str(no_logits.value)
    assert "\n" not in message and str(old) in message and "re-extract" in message
    assert "fine-tuned text folder" in message
    with pytest.raises(FeaturesError) as mismatch:
        resolve_config(
            DialogueTrainConfig(
                features=str(features), out="x", modalities="t", head_residual=True, class_map="iemocap"
            )
        )
    message = str(mismatch.value)
    assert "\n" not in message and str(features) in message and "classes" in message
    with pytest.raises(ValueError, match="no text"):
        resolve_config(
            DialogueTrainConfig(features=str(features), out="x", modalities="a", head_residual=True)
        )


def test_a_file_without_logits_still_trains_without_the_option(tmp_path):
    old = write_features(
        tmp_path / "old.h5",
        "custom",
        {"train": [3, 2, 4], "dev": [3, 2]},
        random_rows({"t": 8, "a": 4, "v": 4}, ["calm", "loud"]),
    )
    with h5py.File(old, "r") as f:
        assert "text_logits" not in f["train"]
    run = train_dialogue(DialogueTrainConfig(features=str(old), out=str(tmp_path / "run"), epochs=2, **SMALL))
    rows = read_metrics(run / "seed0")
    assert [r["epoch"] for r in rows] == [1, 2]  # no epoch 0 without --head-residual


@pytest.fixture(scope="module")
def residual_run(extracted):
    root, features = extracted
    run = root / "run"
    train_dialogue(
        DialogueTrainConfig(
            features=str(features),
            out=str(run),
            modalities="t",
            head_residual=True,
            causal=True,
            epochs=4,
            patience=4,
            lr=2e-3,
            **SMALL,
        )
    )
    return run


def test_epoch_zero_is_the_head_and_selection_never_falls_below_it(residual_run):
    seed = residual_run / "seed0"
    rows = read_metrics(seed)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["train_loss"] is None
    status = json.loads((seed / "status.json").read_text())
    assert status["head_residual"] is True
    best = max(rows, key=lambda r: (r["dev_weighted_f1"], -r["epoch"]))
    assert status["best_epoch"] == best["epoch"]  # the first epoch of the best dev wF1, 0 included
    assert status["best_dev_weighted_f1"] >= rows[0]["dev_weighted_f1"]
    assert json.loads((residual_run / "config.json").read_text())["head_residual"] is True
    from trainer.report.build import report
    from trainer.report.summary import summarize_run
    from trainer.report.tables import comparison_table

    report([residual_run])
    text = (residual_run / "report.md").read_text()
    assert "--head-residual" in text and "head_residual True" in text
    assert "| wf1 + head |" in comparison_table([summarize_run(residual_run)])


def _write_text_csv(path, utterances):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dialogue_id", "utterance_index", "speaker", "text", "label"])
        for u in utterances:
            w.writerow([u.dialogue_id, u.utterance_id, u.speaker, u.text, u.label])
    return path


def test_exported_residual_model_predicts_as_train_dialog_and_live(residual_run, tiny_finetuned, tmp_path):
    from trainer.apply.export import export_model
    from trainer.apply.live import LiveModel
    from trainer.apply.predict import predict

    model = export_model(residual_run, tmp_path / "model", text_model=str(tiny_finetuned))
    meta = json.loads((model / "m2f_model.json").read_text())
    assert meta["dialog_model"]["head_residual"] is True
    assert meta["text_head_classes"] == list(head_classes(tiny_finetuned))
    assert "`--head-residual`" in (model / "README.md").read_text()
    with open(residual_run / "seed0" / "predictions_test.csv", newline="") as f:
        theirs = list(csv.DictReader(f))
    test = [u for u in prepare_sample() if u.split == "test"]
    result = predict(model, _write_text_csv(tmp_path / "talk.csv", test), tmp_path / "preds.csv")
    classes = [c for c in theirs[0] if c.startswith("p_")]
    assert [r["predicted"] for r in result.rows] == [r["predicted"] for r in theirs]
    np.testing.assert_allclose(
        [[r[c] for c in classes] for r in result.rows],
        [[float(r[c]) for c in classes] for r in theirs],
        atol=1e-5,
    )
    ref = {r["utt_id"]: r for r in theirs}
    with LiveModel.load(model) as live:
        assert live.causal and live.residual_order is not None
        for dialogue in group_dialogues(test):
            talk = live.conversation(dialogue.dialogue_id)
            for u in dialogue.utterances:
                p = talk.add(speaker=u.speaker, text=u.text)
                assert p.predicted == ref[u.id]["predicted"]
                np.testing.assert_allclose(
                    [p.probabilities[c[2:]] for c in classes],
                    [float(ref[u.id][c]) for c in classes],
                    atol=1e-4,
                )


def test_a_residual_model_folder_without_the_head_is_refused(residual_run, tiny_finetuned, tmp_path):
    from pipeline.testing.model_folders import copy_folder, rewrite_checksums
    from trainer.apply.export import ModelFolderError, export_model, load_model_folder

    model = export_model(residual_run, tmp_path / "model", text_model=str(tiny_finetuned))
    bad = copy_folder(model, tmp_path / "bad")
    meta_file = bad / "text_model" / "m2f_text.json"
    meta = json.loads(meta_file.read_text())
    del meta["config"]["label_map"]
    meta_file.unlink()
    meta_file.write_text(json.dumps(meta))
    rewrite_checksums(bad)
    with pytest.raises(ModelFolderError) as e:
        load_model_folder(bad)
    assert "\n" not in str(e.value) and "--head-residual" in str(e.value)


def test_the_head_itself_is_kept_when_no_trained_epoch_beats_it_on_dev(extracted, tmp_path):
    # a learning rate too small to change any prediction: no epoch beats epoch 0, so best.pt is the head
    _, features = extracted
    run = train_dialogue(
        DialogueTrainConfig(
            features=str(features),
            out=str(tmp_path / "run"),
            modalities="t",
            head_residual=True,
            epochs=2,
            patience=2,
            lr=1e-12,
            weight_decay=0.0,
            **SMALL,
        )
    )
    status = json.loads((run / "seed0" / "status.json").read_text())
    assert status["best_epoch"] == 0
    assert torch.load(run / "seed0" / "best.pt", weights_only=True)["epoch"] == 0
    arrays = read_split(features, "test")
    head = {
        u: arrays.text_logits_classes[int(row.argmax())]
        for u, row in zip(arrays.utt_id, arrays.text_logits, strict=True)
    }
    with open(run / "seed0" / "predictions_test.csv", newline="") as f:
        predicted = {r["utt_id"]: r["predicted"] for r in csv.DictReader(f)}
    assert predicted == {u: head[u] for u in predicted} and predicted
    from trainer.dialogue.selection import selection_text

    assert "the text head itself" in selection_text(status)


@pytest.mark.parametrize("pooling", ["target", "cls"])
def test_a_bert_style_head_gives_its_logits_with_the_pooling_it_was_trained_with(tmp_path, pooling):
    # BERT-style heads (MiniLM's CPU recipe: target pooling into dropout + classifier; cls: the pooler)
    from transformers import BertConfig, BertForSequenceClassification

    from pipeline.text.embedder import DEFAULT_TEXT_MODEL

    folder = tmp_path / "bert"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(f"{DEFAULT_TEXT_MODEL}/{name}", folder / name)
    classes = ["joy", "anger", "neutral"]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: i for i, c in enumerate(classes)}
    BertForSequenceClassification(config).save_pretrained(folder)
    recipe = {"max_length": 32, "pooling": pooling, "context": "full", "label_map": config.label2id}
    (folder / "m2f_text.json").write_text(json.dumps({"config": recipe}))
    embedder = TextEmbedder(str(folder))
    assert embedder.classes == tuple(classes) and embedder.head_pooling == pooling
    dialogues = group_dialogues(prepare_sample())[:2]
    vectors, logits = embedder.embed_with_logits(dialogues)
    tokenizer, model = load_text_model(str(folder), for_classification=3)
    model.eval()
    contexts = build_contexts(dialogues, tokenizer, embedder.max_length, embedder.context)
    for utt_id, ids_list in contexts.items():
        ids, mask = pad_batch([ids_list], tokenizer.pad_token_id)
        pool = _pool_mask([ids_list], pooling, embedder.layout, "cpu")
        with torch.no_grad():
            direct = full_logits(model, torch.from_numpy(ids), torch.from_numpy(mask), pooling, pool)
        np.testing.assert_allclose(logits[utt_id], direct[0].numpy(), atol=1e-5)
    # a folder whose m2f_text.json names a head its weights lack is refused, not given a random head
    from transformers import BertModel

    headless = tmp_path / "headless"
    shutil.copytree(folder, headless)
    for p in headless.glob("*.safetensors"):
        p.unlink()
    BertModel(config).save_pretrained(headless)
    with pytest.raises(ValueError, match="lack"):
        TextEmbedder(str(headless))
    assert vectors


def test_a_model_folder_with_a_head_residual_that_is_not_a_boolean_is_refused(
    residual_run, tiny_finetuned, tmp_path
):
    from pipeline.testing.model_folders import copy_folder, replace_file, rewrite_checksums
    from trainer.apply.export import ModelFolderError, export_model, load_model_folder

    model = export_model(residual_run, tmp_path / "model", text_model=str(tiny_finetuned))
    bad = copy_folder(model, tmp_path / "bad")
    meta = json.loads((bad / "m2f_model.json").read_text())
    meta["dialog_model"]["head_residual"] = "yes"
    replace_file(bad / "m2f_model.json", json.dumps(meta).encode())
    rewrite_checksums(bad)
    with pytest.raises(ModelFolderError, match="head_residual"):
        load_model_folder(bad)


def test_a_resumed_residual_run_follows_the_uninterrupted_path(extracted, tmp_path):
    # a run stopped after epoch 2 (its last.pt holds epoch 0's scores as the best so far) and continued
    _, features = extracted
    options = dict(modalities="t", head_residual=True, patience=4, checkpoint_seconds=0, lr=2e-3, **SMALL)
    reference = train_dialogue(
        DialogueTrainConfig(features=str(features), out=str(tmp_path / "ref"), epochs=4, **options)
    )
    out = tmp_path / "resumed"
    train_dialogue(DialogueTrainConfig(features=str(features), out=str(out), epochs=2, **options))
    status_file = out / "seed0" / "status.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "state": "training"}))
    train_dialogue(DialogueTrainConfig(features=str(features), out=str(out), epochs=4, **options))
    ref_rows, res_rows = read_metrics(reference / "seed0"), read_metrics(out / "seed0")
    assert [r["epoch"] for r in res_rows] == [0, 1, 2, 3, 4]
    for a, b in zip(ref_rows, res_rows, strict=True):
        assert (
            a["dev_weighted_f1"] == pytest.approx(b["dev_weighted_f1"], abs=1e-9) and a["best"] == b["best"]
        )
    ref_status = json.loads((reference / "seed0" / "status.json").read_text())
    assert json.loads(status_file.read_text())["best_epoch"] == ref_status["best_epoch"]
    for name in ("predictions_dev.csv", "predictions_test.csv"):
        assert (reference / "seed0" / name).read_text() == (out / "seed0" / name).read_text()
