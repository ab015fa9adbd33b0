"""Checks at the boundary of ``m2f extract`` (issue 11): the manifest follows the corpus, and weights the
user gives are loaded before the first task."""

from __future__ import annotations

import pytest
import torch

from pipeline.extract import ExtractError, ExtractOptions
from pipeline.extract.stage_encoders import check_encoder_weights
from pipeline.extract.stage_prepare import load_manifest
from pipeline.extract.stage_text import check_text_model, given_text_model, looks_like_path
from pipeline.store.layout import CacheLayout

torch.set_num_threads(1)
HEADER = "dialogue_id,utterance_index,speaker,text,label,clip,start,end,split\n"


def _csv(path, rows: list[str]):
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_manifest_follows_the_corpus_and_a_fixed_row_no_longer_breaks(tmp_path):
    csv = _csv(tmp_path / "corpus.csv", ["d,0,Ann,hi,joy,a.mp4,,,train", "d,1,Bob,yes,joy,a.mp4,,,train"])
    layout = CacheLayout(tmp_path / "cache", "custom")
    path, first = load_manifest(layout, csv)
    assert [u.label for u in first] == ["joy", "joy"] and path.exists()
    stamp = path.stat().st_mtime_ns
    assert load_manifest(layout, csv)[1] == first and path.stat().st_mtime_ns == stamp  # unchanged: kept
    _csv(csv, ["d,0,Ann,hi,anger,a.mp4,,,train", "d,1,Bob,yes,joy,a.mp4,,,train"])  # a corrected label
    assert [u.label for u in load_manifest(layout, csv)[1]] == ["anger", "joy"]
    assert '"anger"' in path.read_text()  # the cache too
    _csv(csv, ["d,0,Ann,hi,anger,a.mp4,0,inf,train"])  # a broken row
    with pytest.raises(ExtractError, match="inf"):
        load_manifest(layout, csv)
    _csv(csv, ["d,0,Ann,hi,anger,a.mp4,0,1.5,train"])  # fixed
    assert [u.end for u in load_manifest(layout, csv)[1]] == [1.5]


def test_text_model_paths_and_hub_ids(tmp_path):
    assert looks_like_path("./missing") and looks_like_path("/abs/model") and looks_like_path("a/b/c")
    assert not looks_like_path("roberta-base") and not looks_like_path("org/model")
    with pytest.raises(ExtractError, match=r"--text-model \./missing: no such folder"):
        given_text_model(ExtractOptions("sample", None, cache=tmp_path, text_model="./missing"))


def test_a_corrupt_text_model_folder_is_one_error_naming_it(tmp_path):
    from pipeline.testing.text_model import make_tiny_roberta

    folder = make_tiny_roberta(tmp_path / "tiny")
    assert check_text_model(str(folder))  # loads: its identity
    weights = next(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    with pytest.raises(ExtractError, match=rf"--text-model {folder} cannot be loaded"):
        check_text_model(str(folder))


def test_encoder_checkpoints_are_loaded_and_their_weights_checked(tmp_path):
    from pipeline.encoders.checkpoint import save_encoder
    from pipeline.encoders.network import build_encoder

    for i, kind in enumerate(("audio", "face", "scene")):
        save_encoder(build_encoder(kind, seed=i), tmp_path / f"{kind}.pt")
    check_encoder_weights(tmp_path)
    ckpt = torch.load(tmp_path / "scene.pt", weights_only=True)
    ckpt["state_dict"] = {k: v[..., :1] if v.ndim == 4 else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "scene.pt")  # loadable file, wrong shapes
    with pytest.raises(ExtractError, match=r"scene\.pt cannot be loaded \(RuntimeError"):
        check_encoder_weights(tmp_path)
