"""trainer.dialogue.model: every Table 2 configuration, masking of missing modalities and padding."""

from __future__ import annotations

import pytest
import torch

from trainer.dialogue.model import DialogueModel, DialogueModelConfig

DIMS = {"t": 8, "a": 4, "v": 12}


def make_model(modalities="tav", fusion="attention", seed=0, **kw):
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
    return DialogueModel(config).eval()


def make_inputs(batch=2, length=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(batch, length, d, generator=g) for m, d in DIMS.items()}
    present = {m: torch.ones(batch, length, dtype=torch.bool) for m in DIMS}
    mask = torch.ones(batch, length, dtype=torch.bool)
    return features, present, mask


@pytest.mark.parametrize(
    ("modalities", "fusion"),
    [
        ("t", "attention"),
        ("a", "attention"),
        ("v", "attention"),
        ("tav", "concat"),
        ("tav", "attention"),
        ("ta", "attention"),
        ("tv", "attention"),
        ("av", "attention"),
        ("av", "concat"),
    ],
)
def test_every_configuration_gives_logits(modalities, fusion):
    model = make_model(modalities, fusion)
    features, present, mask = make_inputs()
    with torch.no_grad():
        logits = model(features, present, mask)
    assert logits.shape == (2, 5, 3)
    assert torch.isfinite(logits).all()
    has_fusion = fusion == "attention" and len(modalities) > 1
    assert hasattr(model, "fusion") == has_fusion
    if has_fusion:
        assert len(model.fusion) == 5  # m = 5
    assert all(len(model.encoders[m].layers) == 2 for m in modalities)


def test_a_missing_modality_is_not_read_as_a_signal():
    model = make_model()
    features, present, mask = make_inputs()
    present["a"][0, 2] = False
    changed = {k: v.clone() for k, v in features.items()}
    changed["a"][0, 2] = 100.0  # whatever sits in a missing row must not matter
    with torch.no_grad():
        base = model(features, present, mask)
        same = model(changed, present, mask)
        present_again = {k: v.clone() for k, v in present.items()}
        present_again["a"][0, 2] = True
        differs = model(changed, present_again, mask)
    torch.testing.assert_close(base, same)
    assert not torch.allclose(base[0], differs[0], atol=1e-4)


def test_padding_does_not_change_the_real_utterances():
    model = make_model()
    features, present, mask = make_inputs(batch=2, length=6)
    mask[0, 3:] = False
    for m in DIMS:
        present[m][0, 3:] = False
    with torch.no_grad():
        padded = model(features, present, mask)[0, :3]
        alone = model(
            {m: f[:1, :3] for m, f in features.items()},
            {m: p[:1, :3] for m, p in present.items()},
            mask[:1, :3],
        )[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_impossible_shapes_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="heads 3 does not divide"):
        DialogueModel(DialogueModelConfig(dims=DIMS, n_classes=3, heads=3))
    with pytest.raises(ValueError, match="fusion"):
        DialogueModel(DialogueModelConfig(dims=DIMS, n_classes=3, heads=2, fusion="sum"))
