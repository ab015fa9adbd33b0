"""``m2f export --seeds``: an ensemble of a run's seeds in one model folder, loaded as the mean of its
members' class probabilities (issue 19)."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.apply.export import ModelFolderError, export_model, load_model_folder, parse_seeds
from trainer.apply.model_folder import write_checksums
from trainer.dialogue.fit import load_model
from trainer.dialogue.model import NO_SPEAKER, DialogueEnsemble
from trainer.report.summary import ensemble_metrics, seed_dirs


def _inputs(model, batch=3, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = dict(model.config.dims)
    features = {m: torch.randn(batch, length, dims[m], generator=g) for m in model.config.modalities}
    present = {m: torch.rand(batch, length, generator=g) > 0.3 for m in model.config.modalities}
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    speakers = torch.randint(0, 2, (batch, length), generator=g)
    speakers[1, 0] = NO_SPEAKER
    return features, present, mask, speakers


@pytest.fixture(scope="module")
def folders(run, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    return {
        "ensemble": export_model(run, root / "ensemble", seeds="all"),
        "seed0": export_model(run, root / "seed0", seed=0),
    }


def test_an_exported_ensemble_predicts_the_mean_of_its_members(run, folders):
    ensemble, one = (load_model_folder(folders[k]) for k in ("ensemble", "seed0"))
    two, _ = load_model(run / "seed1" / "best.pt")  # what export packs for seed 1
    assert isinstance(ensemble.model, DialogueEnsemble) and len(ensemble.model.members) == 2
    assert ensemble.modalities == one.modalities and ensemble.class_names == one.class_names
    inputs = _inputs(one.model)
    with torch.no_grad():
        p1 = torch.softmax(one.model(*inputs), dim=-1)
        p2 = torch.softmax(two.eval()(*inputs), dim=-1)
        pe = torch.softmax(ensemble.model(*inputs), dim=-1)
    assert not torch.allclose(p1, p2, atol=1e-4), "the two seeds must differ for the test to mean anything"
    torch.testing.assert_close(pe, (p1 + p2) / 2, rtol=1e-5, atol=1e-6)


def test_the_card_and_meta_give_the_ensembles_own_figures(run, folders):
    meta = json.loads((folders["ensemble"] / "m2f_model.json").read_text())
    assert meta["ensemble"]["seeds"] == [0, 1] and meta["source"]["chosen"] == "--seeds"
    for split in ("dev", "test"):
        expected = ensemble_metrics(seed_dirs(run), split)
        assert meta["metrics"][split]["weighted_f1"] == pytest.approx(expected["weighted_f1"])
    card = (folders["ensemble"] / "README.md").read_text()
    assert "an ensemble of seeds 0, 1" in card and "mean of their class probabilities" in card
    single = json.loads((folders["seed0"] / "m2f_model.json").read_text())
    assert "ensemble" not in single


def test_bad_ensemble_requests_fail_in_one_line(run, tmp_path):
    with pytest.raises(ModelFolderError, match="not both"):
        export_model(run, tmp_path / "a", seed=0, seeds="all")
    with pytest.raises(ModelFolderError, match=r"no finished seed \[7\]"):
        export_model(run, tmp_path / "b", seeds=[0, 7])
    for text in ("0", "0,0", "x,1"):
        with pytest.raises(ModelFolderError, match="--seeds"):
            parse_seeds(text)
    assert parse_seeds("all") == "all" and parse_seeds("1, 0") == [1, 0] and parse_seeds(None) is None
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "ensemble": {"seeds": [0]}}, "2..32 distinct seeds"),
        (lambda m: {**m, "ensemble": {"seeds": [0, 1, 2]}}, "does not fit"),
        (lambda m: {k: v for k, v in m.items() if k != "ensemble"}, "does not fit"),
    ],
)
def test_an_ensemble_folder_whose_meta_disagrees_with_its_weights_is_refused(
    folders, tmp_path, edit, message
):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(folders["ensemble"], folder)
    meta = json.loads((folder / "m2f_model.json").read_text())
    (folder / "m2f_model.json").write_text(json.dumps(edit(meta)))
    write_checksums(folder)  # a consistent folder whose settings lie about its weights
    with pytest.raises(ModelFolderError, match=message) as info:
        load_model_folder(folder)
    assert "\n" not in str(info.value)


@pytest.mark.slow  # loads three folders; quick: test_an_exported_ensemble_predicts_the_mean_of_its_members
def test_the_live_api_averages_the_members_over_a_conversation(run, folders, tmp_path):
    """The Python API (what `m2f live`, `m2f serve` and `m2f predict` run) on a real conversation: each
    prediction of the ensemble is the mean of the two seeds' predictions."""
    from trainer.apply.live import LiveModel

    second = export_model(run, tmp_path / "seed1", seed=1)
    models = [
        LiveModel.load(f, allow_revisions=True) for f in (folders["ensemble"], folders["seed0"], second)
    ]
    talks = [m.conversation("d1") for m in models]
    lines = [("A", "I can't believe you did that!"), ("B", "Sorry, I didn't mean it."), ("A", "Fine.")]
    for speaker, text in lines:
        ens, one, two = (talk.add(speaker=speaker, text=text).probabilities for talk in talks)
        assert ens.keys() == one.keys() == two.keys()
        for name in ens:
            assert ens[name] == pytest.approx((one[name] + two[name]) / 2, abs=1e-5)
