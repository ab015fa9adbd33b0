"""The engine's pure parts: selection, partitions, cache keys, row packing, batch-invariant encoders."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from pipeline.encoders.checkpoint import load_encoder_set, save_encoder
from pipeline.encoders.network import build_encoder
from pipeline.extract import ExtractError, ExtractOptions, encoder_identity
from pipeline.extract.engine import balance, partition, split_even
from pipeline.extract.options import parse_list
from pipeline.extract.stage_embed import feature_config
from pipeline.extract.stage_media import rows_to_columns, write_problems
from pipeline.extract.stage_prepare import manifest_hash, order_by_split, select
from pipeline.manifest import Utterance
from pipeline.store.cache import ShardedWriter
from pipeline.store.h5rows import RowReader
from pipeline.testing.utterances import make_dialogues
from pipeline.utterance.embed import encode_images, encode_waveforms, feature_rows, fit_to_contract

torch.set_num_threads(1)


def _utts(split: str, dialogues: list[int]) -> list[Utterance]:
    return make_dialogues(dialogues, corpus="meld", split=split, speaker="Ross")


def test_select_keeps_splits_in_order_and_limits_per_split():
    utts = _utts("test", [2, 3]) + _utts("train", [3, 1, 4])
    sel = select(utts, ("train", "test"), limit=5)
    assert [u.split for u in sel] == ["train"] * 5 + ["test"] * 5
    train = [u.id for u in sel if u.split == "train"]
    assert train == [
        "meld/train/dia0_utt0",
        "meld/train/dia0_utt1",
        "meld/train/dia0_utt2",
        "meld/train/dia1_utt0",
        "meld/train/dia2_utt0",
    ]
    assert len(select(utts, ("dev",), None)) == 0
    assert len(select(utts, ("train",), None)) == 8


def test_partition_holds_whole_dialogues_of_one_split():
    utts = _utts("train", [3, 3, 3, 1, 7]) + _utts("dev", [2])
    parts = partition(utts, size=4)
    assert sum(len(p) for p in parts) == len(utts)
    for p in parts:
        assert len({u.split for u in p}) == 1
    # no dialogue is cut across partitions
    owner = {}
    for i, p in enumerate(parts):
        for u in p:
            assert owner.setdefault((u.split, u.dialogue_id), i) == i
    assert [len(p) for p in parts] == [6, 4, 7, 2]


def _whole_dialogues_of_one_split(parts, utts):
    assert sorted(u.id for p in parts for u in p) == sorted(u.id for u in utts)
    owner = {}
    for i, p in enumerate(parts):
        assert len({u.split for u in p}) == 1
        for u in p:
            assert owner.setdefault((u.split, u.dialogue_id), i) == i


def test_split_even_cuts_whole_dialogues_into_about_equal_parts():
    utts = _utts("dev", [4] * 50)  # the 200-clip bench: 50 dialogues of 4
    parts = split_even(utts, 14)
    _whole_dialogues_of_one_split(parts, utts)
    assert len(parts) == 14
    assert sorted(len(p) for p in parts) == [12] * 6 + [16] * 8
    mixed = _utts("train", [3, 3, 3, 1, 7]) + _utts("dev", [2, 2])
    _whole_dialogues_of_one_split(split_even(mixed, 4), mixed)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_balance_gives_every_worker_as_much_largest_first(workers):
    utts = _utts("dev", [4] * 50)
    before = partition(utts, 16)  # 13 partitions: on 2 workers one runs the 13th alone
    parts = balance(before, utts, workers)
    _whole_dialogues_of_one_split(parts, utts)
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes, reverse=True)
    assert len(parts) % workers == 0
    # partitions dealt in turn to the workers (as dask does, each taking the next when free): even loads
    loads = [sum(sizes[w::workers]) for w in range(workers)]
    assert max(loads) - min(loads) <= 4  # at most one dialogue (13 partitions of 16 on 2: 104 vs 96)
    assert max(sizes) <= 16
    few = partition(utts[:8], 4)  # no more partitions than workers: kept
    assert balance(few, utts[:8], 3) == sorted(few, key=len, reverse=True)


def test_keys_change_with_every_number_changing_option():
    utts = _utts("train", [2, 2])
    key = manifest_hash(utts)
    assert key == manifest_hash(list(utts))
    assert key != manifest_hash(utts[:3])
    opts = ExtractOptions("meld", None)
    base = feature_config(opts, key, {"n_frames": 15}, "random-seed0", "minilm")
    for changed in (
        feature_config(opts, key, {"n_frames": 8}, "random-seed0", "minilm"),
        feature_config(opts, key, {"n_frames": 15}, "abc", "minilm"),
        feature_config(opts, key, {"n_frames": 15}, "random-seed0", "other"),
        feature_config(
            ExtractOptions("meld", None, limit=3), key, {"n_frames": 15}, "random-seed0", "minilm"
        ),
        # a text model with a head: its logits are saved, never in a folder made before they were
        feature_config(opts, key, {"n_frames": 15}, "random-seed0", "minilm", ("joy", "anger")),
    ):
        assert json.dumps(changed, sort_keys=True) != json.dumps(base, sort_keys=True)
    # without a head the key is the one written before logits were saved (those caches are reused)
    assert "text_logits" not in base and set(base) == {
        "dataset",
        "manifest",
        "splits",
        "limit",
        "modalities",
        "media",
        "encoders",
        "text_model",
    }


def test_options_and_lists_reject_bad_values():
    assert parse_list("text, audio,text", ("text", "audio", "visual"), "--modalities") == ("text", "audio")
    with pytest.raises(ExtractError, match="--modalities"):
        parse_list("txt", ("text", "audio"), "--modalities")
    with pytest.raises(ExtractError, match="limit"):
        ExtractOptions("meld", None, limit=0)
    with pytest.raises(ExtractError, match="splits"):
        ExtractOptions("meld", None, splits=("val",))


def test_media_rows_round_trip_through_sharded_writer(tmp_path):
    rng = np.random.default_rng(0)

    def row(uid, k, f, n):
        return {
            "utt_id": uid,
            "label": None if k == 0 else "joy",
            "waveform": rng.normal(size=n).astype(np.float32),
            "has_audio": n > 0,
            "faces": rng.integers(0, 255, (k, 3, 8, 8), dtype=np.uint8),
            "face_frame": np.arange(k, dtype=np.int16),
            "scenes": np.zeros((f, 3, 8, 8), np.uint8),
            "has_face": k > 0,
            "problems": json.dumps(["no face"] if k == 0 else []),
        }

    rows = [row("a", 2, 3, 10), row("b", 0, 3, 0), row("c", 1, 0, 5)]
    w = ShardedWriter(tmp_path / "media.h5")
    w.append("train", rows_to_columns(rows))
    path = w.finalize({"train": ["c", "a", "b"]})
    with RowReader(path, "train") as r:
        assert list(r.utt_ids) == ["c", "a", "b"]
        b = r.row(2)
        assert b["label"] == "" and b["faces"].shape == (0, 3, 8, 8) and len(b["waveform"]) == 0
        np.testing.assert_array_equal(r.row(1)["faces"], rows[0]["faces"])
    counts = write_problems(path, tmp_path / "problems.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "problems.jsonl").read_text().splitlines()]
    assert counts == {"train": 1} and lines == [{"utt_id": "b", "split": "train", "problems": ["no face"]}]


def test_audio_embedding_does_not_depend_on_batch_neighbours():
    enc = build_encoder("audio", seed=0)
    rng = np.random.default_rng(1)
    waves = [rng.normal(size=n).astype(np.float32) * 0.1 for n in (4000, 8000, 4000, 0)]
    together = encode_waveforms(enc, waves, batch_size=8)
    alone = np.stack([encode_waveforms(enc, [w], batch_size=1)[0] for w in waves])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.all(together[3] == 0) and np.linalg.norm(together[0]) == pytest.approx(1, abs=1e-5)


def test_image_batches_and_feature_rows():
    enc = build_encoder("face", seed=1)
    imgs = np.random.default_rng(2).integers(0, 255, (5, 3, 112, 112), dtype=np.uint8)
    a = encode_images(enc, imgs, batch_size=2)
    assert a.shape == (5, 300) and encode_images(enc, imgs[:0], 4).shape == (0, 300)
    small = fit_to_contract(torch.from_numpy(imgs), 80)  # stored at 80 px, encoder wants 112
    assert small.shape == (5, 3, 80, 80) and small.dtype == torch.uint8
    up = encode_images(enc, small.numpy(), batch_size=5)
    expect = enc(fit_to_contract(small, 112)).detach().numpy()
    np.testing.assert_allclose(up, expect, atol=1e-5)
    utts = _utts("dev", [2])
    rows = feature_rows(utts, None, (a[:2], np.array([True, False])), None)
    assert rows["text_emb"].shape == (2, 0) and not rows["has_text"].any()
    assert rows["visual_emb"].shape == (2, 0) and not rows["has_face"].any()
    assert rows["label"] == ["joy", "joy"] and rows["utt_id"][1] == "meld/dev/dia0_utt1"


def test_order_by_split():
    utts = _utts("train", [1]) + _utts("dev", [2])
    assert order_by_split(utts) == {
        "train": ["meld/train/dia0_utt0"],
        "dev": ["meld/dev/dia0_utt0", "meld/dev/dia0_utt1"],
    }


def test_problems_file_is_rebuilt_from_media_without_duplicates(tmp_path):
    path = tmp_path / "media.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("test")
        g["utt_id"] = np.array(["x", "y"], dtype=object).astype("S")
        g["problems"] = np.array([json.dumps(["missing clip"]), "[]"], dtype=object).astype("S")
    live = tmp_path / "problems.jsonl"
    live.write_text('{"utt_id": "x", "problems": ["missing clip"]}\n' * 2)  # appended twice by a killed run
    write_problems(path, live)
    assert live.read_text().count("\n") == 1


def test_encoder_identity_matches_the_loaded_set_without_building_it(tmp_path):
    assert encoder_identity("random") == load_encoder_set("random").identity
    for i, m in enumerate(("audio", "face", "scene")):
        save_encoder(build_encoder(m, seed=10 + i), tmp_path / f"{m}.pt")
    ident = encoder_identity(str(tmp_path))
    assert ident == load_encoder_set(tmp_path).identity and ident != encoder_identity("random")
    assert encoder_identity(None) is None


def test_visual_embedding_pools_over_decoded_frames_only():
    """A clip shorter than n_frames: max-pool over its frames, not over zero padding."""
    import torch

    from pipeline.encoders.network import build_encoder
    from pipeline.utterance.embed import encode_images, visual_embeddings

    torch.set_num_threads(1)
    face, scene = build_encoder("face", seed=1, image_size=32), build_encoder("scene", seed=2, image_size=32)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (3, 3, 32, 32), dtype=np.uint8)
    scenes = rng.integers(0, 255, (3, 3, 32, 32), dtype=np.uint8)
    row = {
        "faces": crops,
        "face_frame": np.array([0, 1, 2], np.int16),
        "face_weight": np.ones(3, np.float32),
        "scenes": scenes,
        "has_visual": True,
        "has_face": True,
    }
    emb, has_visual, has_face = visual_embeddings(face, scene, [row], n_frames=15, batch_size=8)
    expected = encode_images(face, crops, 8, "cpu").max(axis=0)
    assert has_visual[0] and has_face[0]
    assert (expected < 0).any()  # so zero padding would have changed the result
    np.testing.assert_allclose(emb[0, :300], expected, rtol=1e-5, atol=1e-6)
