"""Caches keyed by exactly what changes their content (issue 17, point 14).

A label fix must not re-decode the clips (the media key leaves labels out), yet must reach the default
encoders (trained on the manifest's labels, in a folder keyed by them); a new training recipe must never
pick up encoders an older recipe trained.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.encoders.checkpoint import save_encoder
from pipeline.encoders.network import build_encoder
from pipeline.extract import ExtractOptions, run_extract
from pipeline.extract.stage_encoders import cached_encoders, labels_key, stored_labels, training_labels
from pipeline.extract.stage_media import media_config_dict, media_key
from pipeline.extract.stage_prepare import load_manifest
from pipeline.store.features import read_split
from pipeline.store.layout import CacheLayout
from pipeline.testing.meld_tree import MELD_HEADER, make_meld_tree, write_meld_csv

SPLITS = ("train", "dev")


def _utterances(tmp_path: Path):
    root = make_meld_tree(
        tmp_path / "meld", n_dialogues=1, utterances_per_dialogue=3, splits=SPLITS, clips=False, traps=False
    )
    _, manifest = load_manifest(CacheLayout(tmp_path / "cache", "meld"), root)
    return manifest


def test_media_key_ignores_labels_text_and_speaker_but_not_what_is_decoded(tmp_path):
    utts = _utterances(tmp_path)
    cfg = media_config_dict(None)
    key = media_key(cfg, utts)
    relabelled = [
        replace(
            u, label="joy" if u.label != "joy" else "anger", text=u.text + "!", speaker="X", sentiment=None
        )
        for u in utts
    ]
    assert media_key(cfg, relabelled) == key  # on the old code the key hashed the whole manifest
    first = utts[0]
    for change in (
        {"clip": "/other/clip.mp4"},
        {"audio": "/x.wav"},
        {"start": 1.0},
        {"end": 9.0},
        {"side": "left"},
        {"position": 7},
    ):
        assert media_key(cfg, [replace(first, **change), *utts[1:]]) != key, change
    assert media_key(cfg, utts[:-1]) != key
    assert media_key(media_config_dict({"n_frames": 3}), utts) != key


def test_encoder_folder_is_keyed_by_recipe_version_and_training_labels(tmp_path, monkeypatch):
    utts = _utterances(tmp_path)
    opts = ExtractOptions("meld", None, cache=tmp_path / "cache")
    labels = training_labels(utts)
    folder, missing = cached_encoders(opts, "m", labels)
    assert missing == ["audio", "face", "scene"]
    assert folder == opts.layout.encoders_dir("m", labels_key(labels))
    import pipeline.encoders.recipe_version as recipe

    monkeypatch.setattr(recipe, "ENCODER_RECIPE_VERSION", recipe.ENCODER_RECIPE_VERSION + 1)
    bumped, _ = cached_encoders(opts, "m", labels)
    assert bumped != folder and bumped.parent == folder.parent  # same media, new recipe: a new folder
    monkeypatch.undo()
    fixed = dict(labels)
    fixed[next(iter(fixed))] = "disgust"
    assert cached_encoders(opts, "m", fixed)[0] != folder  # a train label fixed: trained again
    test_only = [replace(u, split="test") for u in utts[:1]]
    assert training_labels([*utts, *test_only]) == labels  # test labels are never trained on


def _set_first_train_label(root: Path, label: str) -> str:
    path = next(root.rglob("train_sent_emo.csv"))
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    old, rows[0]["Emotion"] = rows[0]["Emotion"], label
    write_meld_csv(path, [{c: r[c] for c in MELD_HEADER} for r in rows])
    return old


@pytest.mark.slow  # decodes 6 small clips once, embeds twice (~60 s on the shared machine)
def test_label_fix_reuses_the_decoded_media_and_retrains_the_encoders_on_the_new_label(
    tmp_path, monkeypatch, one_worker_client
):
    client = one_worker_client
    import pipeline.encoders.train as train

    root = make_meld_tree(
        tmp_path / "meld",
        n_dialogues=1,
        utterances_per_dialogue=3,
        splits=SPLITS,
        traps=False,
        size=(64, 48),
        duration=0.5,
    )
    calls: list[tuple[Path, dict]] = []

    def fake_train(config):  # records what training would learn
        out, labels = Path(config.out), config.labels
        calls.append((out, dict(labels) if labels is not None else None))
        sizes = {"face": {"image_size": 80}, "scene": {"image_size": 64}}  # the media's crop sizes
        for i, kind in enumerate(config.modalities):
            save_encoder(build_encoder(kind, seed=i, **sizes.get(kind, {})), out / f"{kind}.pt")
        return out

    monkeypatch.setattr(train, "train_encoders", fake_train)
    opts = ExtractOptions("meld", root, modalities=("audio",), splits=SPLITS, cache=tmp_path / "c")
    first = run_extract(opts, client=client)
    assert "media" in first.seconds and len(calls) == 1
    stamp = first.media.stat().st_mtime_ns
    old = _set_first_train_label(root, "disgust")
    assert old != "disgust"

    again = run_extract(opts, client=client)
    assert again.media == first.media and again.media.stat().st_mtime_ns == stamp  # nothing decoded again
    assert "media" not in again.seconds
    (out1, labels1), (out2, labels2) = calls
    uid = "meld/train/dia0_utt0"
    assert labels2[uid] == "disgust" and labels1[uid] == old  # the fix reached encoder training
    assert out2 != out1 and again.encoders == str(out2)  # in a folder keyed by the new labels
    assert stored_labels(again.media)[uid] == old  # the column keeps the decode-time label; not trained on
    assert again.features != first.features  # labels live in features.h5: a new features cache
    assert read_split(again.features, "train").label[0] == "disgust"
    assert set(CacheLayout(tmp_path / "c", "meld").all_encoders_dirs()) == {out1, out2}
