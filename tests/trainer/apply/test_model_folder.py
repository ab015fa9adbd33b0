"""m2f export's model folder (trainer/apply/export.py): contents, seed choice, checksums, no unpickling.

The run (tests/trainer/conftest.py) is trained on a generated features.h5 whose config says it was made
with random encoders and the shipped MiniLM (frozen), so export finds and packs the real things without an
extraction.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.testing.model_folders import copy_folder, replace_file
from trainer.apply.export import ModelFolderError, export_model, load_model_folder
from trainer.apply.model_folder import CHECKSUMS, write_checksums
from trainer.dialogue.data import load_split
from trainer.dialogue.fit import load_model, predict_probs

_copy, _replace = copy_folder, replace_file


def test_folder_holds_everything_listed_and_loads_as_the_best_checkpoint(run, model_dir):
    names = json.loads((model_dir / CHECKSUMS).read_text())
    assert {
        "dialog.safetensors",
        "m2f_model.json",
        "label_map.json",
        "README.md",
        "encoders/face.safetensors",
        "encoders/face.json",
        "text_model/model.safetensors",
        "text_model/tokenizer.json",
    } <= set(names)
    assert not [n for n in names if n.endswith((".pt", ".bin"))]
    meta = json.loads((model_dir / "m2f_model.json").read_text())
    devs = {
        s: json.loads((run / f"seed{s}" / "status.json").read_text())["best_dev_weighted_f1"] for s in (0, 1)
    }
    assert meta["source"]["seed"] == max(devs, key=lambda s: (devs[s], -s))  # best on dev by default
    card = (model_dir / "README.md").read_text()
    assert "dev weighted F1" in card and "test weighted F1" in card and meta["m2f_version"] in card
    assert "relative positions, same/other speaker; bidirectional" in card  # the run's defaults

    loaded = load_model_folder(model_dir)
    best, names = load_model(run / f"seed{meta['source']['seed']}" / "best.pt")
    assert loaded.class_names == names == ["calm", "loud", "odd"]
    split = load_split(meta["source"]["features"], "test", names, "tav")
    assert torch.equal(
        torch.from_numpy(predict_probs(loaded.model, split, 8, "cpu")),
        torch.from_numpy(predict_probs(best, split, 8, "cpu")),
    )


def test_encoder_checkpoints_are_the_random_encoders_the_features_used(model_dir, tmp_path):
    from pipeline.encoders.checkpoint import load_encoder_set

    folder = load_model_folder(model_dir).write_encoder_checkpoints(tmp_path / "enc")
    written, original = load_encoder_set(folder), load_encoder_set("random")
    for kind in ("audio", "face", "scene"):
        a, b = getattr(written, kind).state_dict(), getattr(original, kind).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seed_option_and_existing_out(run, model_dir, tmp_path):
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "seed1"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(tmp_path / "seed1")
    assert json.loads((tmp_path / "seed1" / "m2f_model.json").read_text())["source"]["seed"] == 1
    with pytest.raises(ModelFolderError, match="no finished seed 7"):
        export_model(run, tmp_path / "seed7", seed=7)
    with pytest.raises(ModelFolderError, match="exists"):
        export_model(run, model_dir)


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("flip", "sha256 does not match"),
        ("add", "not listed"),
        ("remove", "listed in checksums.json but missing"),
    ],
)
def test_tampered_folder_is_refused(model_dir, tmp_path, tamper, message):
    folder = _copy(model_dir, tmp_path / "m")
    label_map = folder / "label_map.json"
    if tamper == "flip":
        data = bytearray(label_map.read_bytes())
        data[5] ^= 1
        _replace(label_map, bytes(data))
    elif tamper == "add":
        (folder / "text_model" / "extra.txt").write_text("x")
    else:
        label_map.unlink()
    with pytest.raises(ModelFolderError, match=message) as err:
        load_model_folder(folder)
    assert "\n" not in str(err.value)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("name", ["dialog.safetensors", "encoders/audio.safetensors"])
def test_pickle_disguised_as_weights_is_refused_even_with_matching_checksums(model_dir, tmp_path, name):
    folder = _copy(model_dir, tmp_path / "m")
    _replace(folder / name, pickle.dumps({"weights": _Boom()}))
    write_checksums(folder)  # the attacker also rewrote checksums.json
    model = None
    with pytest.raises(ModelFolderError, match="not a safetensors weights file") as err:
        model = load_model_folder(folder)
        model.write_encoder_checkpoints(tmp_path / "enc")
    assert "\n" not in str(err.value)


def test_pickle_format_files_are_refused(model_dir, tmp_path):
    folder = _copy(model_dir, tmp_path / "m")
    torch.save({"w": torch.zeros(2)}, folder / "text_model" / "pytorch_model.bin")
    write_checksums(folder)
    with pytest.raises(ModelFolderError, match="pickle-format file"):
        load_model_folder(folder)


def test_cli_refuses_a_tampered_folder_in_one_line(model_dir, tmp_path):
    folder = _copy(model_dir, tmp_path / "t")
    _replace(folder / "m2f_model.json", b"{}")
    res = CliRunner().invoke(
        main, ["predict", "--model", str(folder), "in.csv", "--out", str(tmp_path / "p.csv")]
    )
    assert res.exit_code == 1 and "sha256 does not match" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_an_averaged_model_is_what_export_packs_and_predict_loads(run, tmp_path):
    """--select average: the exported weights are best.pt's, the mean of the kept epochs (issue 19)."""
    from trainer.dialogue.fit import DialogueTrainConfig, train_dialogue

    features = json.loads((run / "config.json").read_text())["features"]
    config = DialogueTrainConfig(
        features=features,
        out=str(tmp_path / "averaged"),
        epochs=3,
        patience=3,
        heads=2,
        hidden=8,
        fusion_layers=1,
        progress=False,
        threads=1,
        select="average",
        average_last=2,
    )
    seed_dir = train_dialogue(config) / "seed0"
    kept = [torch.load(seed_dir / "average" / f"epoch{e:04d}.pt", weights_only=True)["model"] for e in (2, 3)]
    folder = export_model(tmp_path / "averaged", tmp_path / "model")
    loaded = load_model_folder(folder)
    for name, value in loaded.model.state_dict().items():
        mean = (kept[0][name].double() + kept[1][name].double()) / 2
        torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)
    card = (folder / "README.md").read_text()
    assert "model: the mean of the weights of epochs 2-3 (--select average)" in card
    assert json.loads((folder / "m2f_model.json").read_text())["source"]["selected"].startswith("the mean")
