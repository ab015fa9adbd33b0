"""Dialogue context: relative positions, same/other speaker and the causal mask of the dialogue model."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.testing.features_h5 import context_rows, random_rows, write_features
from trainer.dialogue.config import DialogueTrainConfig, resolve_config
from trainer.dialogue.data import load_split, speaker_indices
from trainer.dialogue.fit import train_dialogue
from trainer.dialogue.model import NO_SPEAKER, DialogueModel, DialogueModelConfig, pair_masks
from trainer.dialogue.run_files import load_model

DIMS = {"t": 8, "a": 4, "v": 12}
LENGTH = 6
SPEAKERS = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 1, 2, 1, NO_SPEAKER]])


def make_model(seed=0, modalities="tav", fusion="attention", randomize=True, **kw):
    """A small model in eval mode; ``randomize`` gives the (zero-initialised) context biases random values,
    as training would."""
    torch.manual_seed(seed)
    config = DialogueModelConfig(
        dims=DIMS,
        n_classes=3,
        modalities=modalities,
        fusion=fusion,
        layers=dict.fromkeys(modalities, 2),
        heads=2,
        hidden=16,
        **kw,
    )
    model = DialogueModel(config).eval()
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("position_bias", "speaker_bias")):
                    p.normal_(0.0, 2.0)
    return model


def make_inputs(batch=2, length=LENGTH, seed=1):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(batch, length, d, generator=g) for m, d in DIMS.items()}
    present = {m: torch.ones(batch, length, dtype=torch.bool) for m in DIMS}
    return features, present, torch.ones(batch, length, dtype=torch.bool), SPEAKERS[:batch, :length].clone()


def run(model, features, present, mask, speakers):
    with torch.no_grad():
        return model(features, present, mask, speakers)


PERM = torch.tensor([3, 0, 5, 1, 4, 2])


def permutation_gap(model) -> float:
    """Largest difference between the output for permuted utterances (features, presence and speakers
    moved together) and the permuted output: 0 for a permutation-equivariant model."""
    features, present, mask, speakers = make_inputs()
    out = run(model, features, present, mask, speakers)
    out_perm = run(
        model,
        {m: f[:, PERM] for m, f in features.items()},
        {m: p[:, PERM] for m, p in present.items()},
        mask[:, PERM],
        speakers[:, PERM],
    )
    return float((out_perm - out[:, PERM]).abs().max())


@pytest.mark.parametrize("speakers", ["none", "same-other"])
def test_without_positions_the_model_is_permutation_equivariant(speakers):
    """positions=none: a dialogue is a bag; permuting utterances (with their speakers) permutes the output."""
    assert permutation_gap(make_model(positions="none", speakers=speakers)) < 1e-5


@pytest.mark.parametrize("fusion", ["attention", "concat"])
def test_relative_positions_see_the_order(fusion):
    assert permutation_gap(make_model(positions="relative", fusion=fusion)) > 1e-3


def test_the_speaker_signal_changes_the_output_when_speakers_are_swapped():
    features, present, mask, speakers = make_inputs()
    swapped = speakers.clone()
    swapped[0, 1], swapped[0, 2] = speakers[0, 2], speakers[0, 1]  # 0 1 0 1 1 0 -> 0 0 1 1 1 0
    with_speakers = make_model(positions="relative", speakers="same-other")
    delta = run(with_speakers, features, present, mask, swapped) - run(
        with_speakers, features, present, mask, speakers
    )
    assert delta[0].abs().max() > 1e-3
    assert delta[1].abs().max() == 0  # the other dialogue's speakers did not change
    renamed = torch.where(speakers == 0, 1, torch.where(speakers == 1, 0, speakers))  # names never count
    torch.testing.assert_close(
        run(with_speakers, features, present, mask, renamed),
        run(with_speakers, features, present, mask, speakers),
    )
    without = make_model(positions="relative", speakers="none")
    torch.testing.assert_close(
        run(without, features, present, mask, swapped), run(without, features, present, mask, speakers)
    )


def test_speaker_pairs_are_same_other_or_unknown():
    mask = torch.tensor([[True, True, True, False]])
    pairs = pair_masks(mask, torch.tensor([[0, 1, 0, NO_SPEAKER]]), causal=False)["speaker_pair"][0]
    assert pairs[0].tolist() == [1, 0, 1, 2]
    assert pairs[1].tolist() == [0, 1, 0, 2]
    assert pairs[3].tolist() == [2, 2, 2, 2]


def test_a_model_that_reads_speakers_refuses_to_run_without_them():
    model = make_model(speakers="same-other")
    features, present, mask, _ = make_inputs()
    with pytest.raises(ValueError, match="pass speakers"):
        model(features, present, mask)


@pytest.mark.parametrize(
    ("modalities", "fusion", "options"),
    [
        ("tav", "attention", {}),
        ("tav", "attention", {"positions": "relative", "speakers": "same-other"}),
        ("tav", "concat", {"positions": "relative"}),
        ("t", "attention", {"speakers": "same-other"}),
    ],
)
def test_causal_outputs_do_not_depend_on_later_utterances(modalities, fusion, options):
    """--causal: perturb utterances from position k on (features, presence, speakers); outputs before k
    stay bit-stable (1e-6), while the bidirectional model's change."""
    features, present, mask, speakers = make_inputs()
    k = 3
    later = {m: f.clone() for m, f in features.items()}
    for f in later.values():
        f[:, k:] = torch.randn(f[:, k:].shape, generator=torch.Generator().manual_seed(7)) * 3
    later_present = {m: p.clone() for m, p in present.items()}
    later_present["a"][:, k + 1] = False
    later_speakers = speakers.clone()
    later_speakers[:, k:] = torch.tensor([2, 0, 1])
    for causal in (True, False):
        model = make_model(modalities=modalities, fusion=fusion, causal=causal, **options)
        base = run(model, features, present, mask, speakers)
        changed = run(model, later, later_present, mask, later_speakers)
        if causal:
            assert (base[:, :k] - changed[:, :k]).abs().max() <= 1e-6
            assert (base[:, k:] - changed[:, k:]).abs().max() > 1e-3
        else:
            assert (base[:, :k] - changed[:, :k]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "options",
    [
        {"positions": "relative"},
        {"positions": "relative", "speakers": "same-other"},
        {"positions": "relative", "speakers": "same-other", "causal": True},
        {"causal": True},
    ],
)
def test_padding_does_not_change_the_real_utterances(options):
    model = make_model(**options)
    features, present, mask, speakers = make_inputs()
    mask[0, 3:] = False
    speakers[0, 3:] = NO_SPEAKER
    for m in DIMS:
        present[m][0, 3:] = False
    for f in features.values():
        f[0, 3:] = 50.0  # whatever sits in padding must not matter
    padded = run(model, features, present, mask, speakers)[0, :3]
    alone = run(
        model,
        {m: f[:1, :3] for m, f in features.items()},
        {m: p[:1, :3] for m, p in present.items()},
        mask[:1, :3],
        speakers[:1, :3],
    )[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)
    model.train()  # the training path (no inference fast path) gives finite outputs too
    torch.manual_seed(0)
    assert torch.isfinite(model(features, present, mask, speakers)).all()


def test_zero_context_biases_are_the_plain_model_and_old_checkpoints_load(tmp_path):
    """The biases start at zero (the bag model); a checkpoint whose config predates the options loads as
    positions=none, speakers=none, not causal, with the same parameter names."""
    plain = make_model(randomize=False)
    old_config = plain.config.to_dict()
    for key in ("positions", "speakers", "causal", "relative_clip"):
        old_config.pop(key)
    rebuilt = DialogueModel(DialogueModelConfig.from_dict(old_config))
    rebuilt.load_state_dict(plain.state_dict())  # strict: same names
    assert rebuilt.config == plain.config
    biased = make_model(randomize=False, positions="relative", speakers="same-other")
    missing = biased.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == sorted(f"encoders.{m}.{b}_bias" for m in DIMS for b in ("position", "speaker"))
    inputs = make_inputs()
    torch.testing.assert_close(run(biased, *inputs), run(plain, *inputs), atol=1e-5, rtol=1e-5)


def test_speakers_are_numbered_per_dialogue_by_first_appearance(tmp_path):
    names = ["Ross", "Rachel", "Ross", "", "Monica", "Rachel", "Rachel", "Joey"]

    def rows(rng, n):
        made = random_rows(DIMS, ["joy", "anger"])(rng, n)
        made["speaker"] = np.array(names[:n], dtype=object)
        return made

    path = write_features(tmp_path / "f.h5", "custom", {"train": [5, 3], "dev": [2]}, rows)
    split = load_split(path, "train", ["anger", "joy"])
    assert split.speakers.tolist() == [[0, 1, 0, NO_SPEAKER, 2], [0, 0, 1, NO_SPEAKER, NO_SPEAKER]]
    blocks = [(0, 2), (2, 4)]
    assert speaker_indices(np.array(["B", "A", "A", "B"]), blocks).tolist() == [0, 1, 0, 1]
    assert split.batch(torch.tensor([1]), 3)["speakers"].tolist() == [[0, 0, 1]]


def test_options_are_recorded_in_the_run_config_and_round_trip(tmp_path):
    path = write_features(
        tmp_path / "f.h5",
        "custom",
        {"train": [4, 3, 5, 2], "dev": [3, 4]},
        random_rows(DIMS, ["joy", "anger"]),
    )
    config = DialogueTrainConfig(
        features=str(path),
        out=str(tmp_path / "run"),
        modalities="ta",
        positions="relative",
        speakers="same-other",
        causal=True,
        epochs=2,
        heads=2,
        hidden=8,
        batch_size=2,
        threads=1,
        progress=False,
    )
    resolved = resolve_config(config)
    model_config = resolved.model_config()
    chosen = (model_config.positions, model_config.speakers, model_config.causal)
    assert chosen == ("relative", "same-other", True)
    assert DialogueModelConfig.from_dict(json.loads(json.dumps(model_config.to_dict()))) == model_config
    seed_dir = train_dialogue(config) / "seed0"
    saved = json.loads((seed_dir / "config.json").read_text())
    assert (saved["positions"], saved["speakers"], saved["causal"]) == ("relative", "same-other", True)
    assert saved["model"]["causal"] is True and saved["model"]["relative_clip"] == model_config.relative_clip
    model, _ = load_model(seed_dir / "best.pt")
    assert model.config == model_config
    with pytest.raises(ValueError, match="causal"):  # resuming with another setting is refused
        train_dialogue(dataclasses.replace(config, causal=False))
    with pytest.raises(ValueError, match="--positions 'absolute'"):
        resolve_config(dataclasses.replace(config, positions="absolute"))


def test_train_dialogue_help_names_the_config_defaults():
    from click.testing import CliRunner

    from cli import main
    from trainer.dialogue.config import DEFAULT_POSITIONS, DEFAULT_SPEAKERS

    text = " ".join(CliRunner().invoke(main, ["train-dialog", "--help"]).output.split())
    assert f"[default: {DEFAULT_POSITIONS}]" in text and f"[default: {DEFAULT_SPEAKERS}]" in text
    assert "--causal" in text


CONTEXT_LENGTHS = {
    s: np.random.default_rng(0).integers(3, 10, n).tolist()
    for s, n in (("train", 120), ("dev", 20), ("test", 30))
}


def context_accuracy(tmp_path, task: str, epochs: int, **options) -> float:
    """Test accuracy of a text-only model trained on :func:`context_rows` ``task``."""
    path = tmp_path / f"{task}.h5"
    if not path.exists():
        write_features(path, "custom", CONTEXT_LENGTHS, context_rows(DIMS, CONTEXT_LENGTHS, task))
    name = "-".join([task, *options.values()])
    run_dir = (
        train_dialogue(
            DialogueTrainConfig(
                features=str(path),
                out=str(tmp_path / name),
                modalities="t",
                epochs=epochs,
                patience=epochs,
                heads=2,
                hidden=32,
                batch_size=8,
                dropout=0.1,
                lr=3e-3,
                threads=1,
                progress=False,
                **options,
            )
        )
        / "seed0"
    )
    with open(run_dir / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(np.mean([r["gold"] == r["predicted"] for r in rows]))


@pytest.mark.slow  # quality gain over 2 trainings; quick: test_overfit.py with positions on
def test_relative_positions_learn_a_label_that_is_the_previous_utterance(tmp_path):
    """The label is the previous utterance's text sign: the bag model stays near chance (a first utterance's
    label is its own sign), order learns it."""
    bag = context_accuracy(tmp_path, "previous", 30, positions="none", speakers="none")
    ordered = context_accuracy(tmp_path, "previous", 30, positions="relative", speakers="none")
    assert bag < 0.7 and ordered > 0.85, (bag, ordered)


@pytest.mark.slow  # quality gain over 2 trainings; quick: test_overfit.py with speakers on
def test_the_speaker_signal_learns_a_label_that_needs_whose_utterances(tmp_path):
    """The label contrasts the same speaker's utterances with the others': it needs the speaker signal."""
    blind = context_accuracy(tmp_path, "speaker", 40, positions="none", speakers="none")
    seeing = context_accuracy(tmp_path, "speaker", 40, positions="none", speakers="same-other")
    assert seeing > blind + 0.1, (blind, seeing)


def test_the_model_card_says_how_the_model_reads_the_conversation():
    from trainer.apply.export import context_text

    assert context_text({"positions": "none", "speakers": "none", "causal": True}) == (
        "no positions, no speakers; causal: each utterance from itself and earlier ones only"
    )
    old_config = {}  # a model exported before the options
    assert context_text(old_config).endswith("bidirectional: each utterance from the whole conversation")
