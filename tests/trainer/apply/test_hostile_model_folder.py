"""Issue 17: a crafted model folder cannot run code, read outside itself, unpickle, or change after its check.

Every folder here has its ``checksums.json`` rewritten to match (the attacker owns the folder), so the
checksums alone would pass; each case must be refused with one line naming the file, or (a folder changed
after loading) have no effect.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch

from pipeline.testing.model_folders import copy_folder, replace_file, rewrite_checksums
from pipeline.text.embedder import TextEmbedder, load_text_model
from trainer.apply.export import ModelFolderError, load_model_folder

EVIL_PY = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import BertModel as EvilModel
"""


def _load_and_embed(folder):
    """What predict does with a folder: load it, then build its text model. Returns the refusal or None."""
    try:
        loaded = load_model_folder(folder)
        TextEmbedder(str(loaded.text_model))
    except ModelFolderError as e:
        assert "\n" not in str(e)
        return str(e)
    except Exception:  # noqa: BLE001 - anything but a clean refusal is the old behaviour
        return None
    return None


def _auto_map_folder(model_dir, tmp_path):
    folder = copy_folder(model_dir, tmp_path / "m")
    marker = tmp_path / "code-ran"
    text = folder / "text_model"
    config = json.loads((text / "config.json").read_text())
    config.update(
        model_type="evil-unknown",
        auto_map={"AutoModel": "evil_model.EvilModel", "AutoConfig": "evil_model.EvilConfig"},
    )
    replace_file(text / "config.json", json.dumps(config).encode())
    (text / "evil_model.py").write_text(
        EVIL_PY.format(marker=str(marker)) + "from transformers import BertConfig as EvilConfig\n"
    )
    return rewrite_checksums(folder), marker


def test_auto_map_folder_never_runs_its_code_even_if_the_user_says_yes(model_dir, tmp_path, monkeypatch):
    folder, marker = _auto_map_folder(model_dir, tmp_path)
    monkeypatch.setattr(builtins, "input", lambda *a, **k: "y")
    refused = _load_and_embed(folder)
    assert not marker.exists()
    assert refused is not None and ("evil_model.py" in refused or "auto_map" in refused)


def test_text_model_loader_never_trusts_remote_code(model_dir, tmp_path, monkeypatch):
    folder, marker = _auto_map_folder(model_dir, tmp_path)
    monkeypatch.setattr(builtins, "input", lambda *a, **k: "y")
    with pytest.raises((OSError, ValueError)):
        load_text_model(folder / "text_model")
    assert not marker.exists()


def _index_folder(model_dir, tmp_path, shard: str, shard_bytes: bytes | None):
    folder = copy_folder(model_dir, tmp_path / "m")
    text = folder / "text_model"
    from safetensors import safe_open

    with safe_open(str(text / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    (text / "model.safetensors").unlink()
    (text / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": dict.fromkeys(keys, shard)})
    )
    if shard_bytes is not None:
        (text / shard).write_bytes(shard_bytes)
    return folder


def test_index_naming_a_pickle_shard_is_refused_before_anything_is_loaded(model_dir, tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    folder = rewrite_checksums(_index_folder(model_dir, tmp_path, "weights.dat", buf.getvalue()))
    refused = _load_and_embed(folder)
    assert refused is not None and "weights.dat" in refused


def test_index_naming_a_file_outside_the_folder_is_refused(model_dir, tmp_path):
    outside = tmp_path / "x.safetensors"
    shutil.copyfile(model_dir / "text_model" / "model.safetensors", outside)
    folder = rewrite_checksums(_index_folder(model_dir, tmp_path, "../../x.safetensors", None))
    refused = _load_and_embed(folder)
    assert refused is not None and "x.safetensors" in refused


def test_symlinked_text_model_folder_is_refused(model_dir, tmp_path):
    folder = copy_folder(model_dir, tmp_path / "m")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(folder / "text_model", elsewhere)
    (folder / "text_model").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ModelFolderError, match="symlink") as err:
        load_model_folder(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name", ["/etc/hostname", "../outside.txt", "text_model/../../outside.txt", "C:\\outside.txt"]
)
def test_checksums_naming_files_outside_the_folder_are_refused(model_dir, tmp_path, name):
    folder = copy_folder(model_dir, tmp_path / "m" / "inner")
    (tmp_path / "m" / "outside.txt").write_text("secret")
    (tmp_path / "outside.txt").write_text("secret")
    target = os.path.normpath(folder / name) if not name.startswith("/") else name
    digest = hashlib.sha256(open(target, "rb").read()).hexdigest() if os.path.isfile(target) else "0" * 64
    rewrite_checksums(folder, {name: digest})
    with pytest.raises(ModelFolderError, match="not a plain relative path") as err:
        load_model_folder(folder)
    assert "\n" not in str(err.value)


def test_deeply_nested_checksums_is_one_line(model_dir, tmp_path):
    folder = copy_folder(model_dir, tmp_path / "m")
    replace_file(folder / "checksums.json", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ModelFolderError, match="checksums.json") as err:
        load_model_folder(folder)
    assert "\n" not in str(err.value)


def test_a_file_replaced_after_loading_is_never_read(model_dir, tmp_path):
    folder = copy_folder(model_dir, tmp_path / "m")
    loaded = load_model_folder(folder)
    before = loaded.write_encoder_checkpoints(tmp_path / "before")
    from safetensors.torch import load_file, save_file

    audio = folder / "encoders" / "audio.safetensors"
    zeros = {k: torch.zeros_like(v) for k, v in load_file(str(audio)).items()}
    audio.unlink()
    save_file(zeros, str(audio))
    text = folder / "text_model" / "model.safetensors"
    text.unlink()
    text.write_bytes(b"not the verified bytes")
    after = loaded.write_encoder_checkpoints(tmp_path / "after")
    from pipeline.encoders.checkpoint import load_encoder_set

    a, b = load_encoder_set(before).audio.state_dict(), load_encoder_set(after).audio.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert folder not in loaded.text_model.parents
    TextEmbedder(str(loaded.text_model))  # the verified bytes, not the replaced file
    copy = loaded.folder
    loaded.close()
    assert not copy.exists()


def test_pickle_never_unpickled_anywhere(model_dir, tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = copy_folder(model_dir, tmp_path / "m")
    (folder / "text_model" / "tokenizer.json").unlink()
    (folder / "text_model" / "tokenizer.json").write_bytes(pickle.dumps(Boom()))
    rewrite_checksums(folder)
    _load_and_embed(folder)
    assert not (tmp_path / "pwned").exists()


def test_export_overwrite_removes_only_a_model_folder(run, model_dir, tmp_path):
    """Issue 17.11: --overwrite never rmtree's a folder that is not recognisably an m2f model folder."""
    from trainer.apply.export import export_model

    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ModelFolderError, match="not one") as err:
        export_model(run, precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work" and "\n" not in str(err.value)
    link = tmp_path / "link"
    link.symlink_to(model_dir, target_is_directory=True)
    with pytest.raises(ModelFolderError, match="not one"):
        export_model(run, link, overwrite=True)
    again = export_model(run, copy_folder(model_dir, tmp_path / "again"), overwrite=True)
    assert load_model_folder(again).class_names and not list(tmp_path.glob(".again.export-*"))


def test_the_checksums_digest_is_known_and_the_card_says_integrity_not_origin(model_dir):
    """Issue 17.6: a user can compare the sha256 of checksums.json with what the publisher states."""
    loaded = load_model_folder(model_dir)
    assert loaded.checksums_sha256 == hashlib.sha256((model_dir / "checksums.json").read_bytes()).hexdigest()
    card = (model_dir / "README.md").read_text()
    assert "not who exported them" in card and "sha256sum checksums.json" in card
