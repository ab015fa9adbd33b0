"""Eq. 6-7 wiring of trainer.dialogue.model's attention fusion, checked where the XOR test cannot see it.

The XOR task (tests/test_trainer_fit.py) is solved through Eq. 7 alone (F_A and F_V reach the head
directly), so it passes with the fusion layers removed. Here:

* forward hooks on every fusion attention check that its query and value are the text stream (the
  encoded text in layer 1, the previous layer's output after that) and its key the encoded audio /
  visual, and that the head reads ``[fused text | F_A | F_V]``; the same check is run on deliberately
  broken models (Q/K swapped, V from the key, fusion removed) and must find the fault;
* a retrieval task only cross-modal attention solves: utterance i's label is the text payload of the
  utterance j whose *audio* key matches a query written in i's *text*. Text alone does not know which
  j; audio carries no payload; the concatenation baseline stays at chance, attention fusion learns it.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.dialogue.model import AttentionFusionLayer, DialogueModel, DialogueModelConfig

torch.set_num_threads(1)


def make_model(
    modalities: str, dims: dict[str, int], fusion: str = "attention", fusion_layers: int = 3, seed: int = 0
) -> DialogueModel:
    torch.manual_seed(seed)
    config = DialogueModelConfig(
        dims=dims,
        n_classes=3,
        modalities=modalities,
        fusion=fusion,
        layers=dict.fromkeys(modalities, 1),
        fusion_layers=fusion_layers,
        heads=2,
        hidden=16,
        dropout=0.0,
    )
    return DialogueModel(config).eval()


def make_inputs(dims: dict[str, int], batch: int = 2, length: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(batch, length, d, generator=g) for m, d in dims.items()}
    present = {m: torch.ones(batch, length, dtype=torch.bool) for m in dims}
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 3:] = False
    return features, present, mask


def wiring_faults(model: DialogueModel, features, present, mask) -> list[str]:
    """Run ``model`` once with hooks; list every way its fusion departs from Eq. 6-7 (empty: none)."""
    query_mod, key_mods = model.config.query, model.keys
    encoded, calls, layer_out, head_in = {}, {}, [], []
    hooks = [
        model.encoders[m].register_forward_hook(lambda _mod, _inp, out, m=m: encoded.__setitem__(m, out))
        for m in model.config.modalities
    ]
    for i, layer in enumerate(getattr(model, "fusion", [])):
        hooks.append(layer.register_forward_hook(lambda _mod, _inp, out: layer_out.append(out)))
        for j, attention in enumerate(layer.attentions):
            hooks.append(
                attention.register_forward_pre_hook(
                    lambda _mod, args, i=i, j=j: calls.__setitem__((i, j), args[:3])
                )
            )
    hooks.append(model.classifier.register_forward_pre_hook(lambda _mod, args: head_in.append(args[0])))
    try:
        with torch.no_grad():
            model(features, present, mask)
    finally:
        for h in hooks:
            h.remove()
    faults = []
    if len(layer_out) != model.config.fusion_layers:
        faults.append(f"{len(layer_out)} fusion layers ran, config says {model.config.fusion_layers}")
    text = encoded[query_mod]
    for i in range(len(layer_out)):
        for j, key_mod in enumerate(key_mods):
            q, k, v = calls[(i, j)]
            if not torch.equal(q, text):
                faults.append(f"layer {i + 1} attention {key_mod}: query is not the {query_mod} stream")
            if not torch.equal(v, text):
                faults.append(f"layer {i + 1} attention {key_mod}: value is not the {query_mod} stream")
            if not torch.equal(k, encoded[key_mod]):
                faults.append(f"layer {i + 1} attention {key_mod}: key is not the encoded {key_mod}")
        text = layer_out[i]
    if layer_out:
        expected = torch.cat([layer_out[-1]] + [encoded[m] for m in key_mods], dim=-1)
        if head_in[0].shape != expected.shape or not torch.equal(head_in[0], expected):
            faults.append("the head does not read [fused text | F_A | F_V] (Eq. 7)")
    return faults


@pytest.mark.parametrize("modalities", ["tav", "ta", "tv", "av"])
def test_attention_fusion_is_wired_as_eq6_and_eq7(modalities):
    dims = {"t": 8, "a": 4, "v": 6}
    model = make_model(modalities, dims)
    assert wiring_faults(model, *make_inputs(dims)) == []


def rewired_forward(layer: AttentionFusionLayer, wiring, query, keys, padding, causal=None):
    """AttentionFusionLayer.forward with (Q, K, V) = ``wiring(text, key)`` instead of (text, key, text)."""
    parts = [query]
    for attention, key in zip(layer.attentions, keys, strict=True):
        q, k, v = wiring(query, key)
        parts.append(attention(q, k, v, key_padding_mask=padding, attn_mask=causal, need_weights=False)[0])
    return layer.dropout(layer.project(torch.cat(parts, dim=-1)))


def rewire(wiring):
    def breakage(model: DialogueModel) -> None:
        for layer in model.fusion:
            layer.forward = functools.partial(rewired_forward, layer, wiring)

    return breakage


def remove_fusion(model: DialogueModel) -> None:
    model.fusion = nn.ModuleList()


swap_qk = rewire(lambda text, key: (key, text, text))
value_from_key = rewire(lambda text, key: (text, key, key))


@pytest.mark.parametrize(
    ("breakage", "fault"),
    [(swap_qk, "query is not"), (value_from_key, "value is not"), (remove_fusion, "0 fusion layers ran")],
)
def test_the_wiring_check_finds_a_broken_fusion(breakage, fault):
    dims = {"t": 8, "a": 8, "v": 8}  # equal widths, so a swapped model still runs
    model = make_model("tav", dims)
    inputs = make_inputs(dims)
    assert wiring_faults(model, *inputs) == []
    breakage(model)
    faults = wiring_faults(model, *inputs)
    assert any(fault in f for f in faults), faults


# ------------------------------------------------------------------ a task only cross-modal attention solves
RETRIEVAL_DIMS = {"t": 8, "a": 4, "v": 4}


def derangement(n: int, g: torch.Generator) -> torch.Tensor:
    """A random permutation without fixed points (so an utterance's own payload never answers)."""
    while True:
        perm = torch.randperm(n, generator=g)
        if not bool((perm == torch.arange(n)).any()):
            return perm


def retrieval_batch(g: torch.Generator, batch: int = 32, length: int = 6):
    """Text_i = [key of utterance pi(i) | payload_i | noise]; audio_j = key_j; label_i = payload_pi(i).

    pi is a derangement per dialogue, so the label is never in utterance i's own features, and each
    dialogue holds as many payloads 1 as 0, so pooling the other payloads (what text self-attention can
    do) predicts the label no better than 0.5 + 1 / (2 (length - 1)) = 0.6.
    """
    keys = F.normalize(torch.randn(batch, length, 4, generator=g), dim=-1) * 3.0
    perm = torch.stack([derangement(length, g) for _ in range(batch)])
    payload = torch.stack([torch.randperm(length, generator=g) % 2 for _ in range(batch)])
    text = torch.randn(batch, length, 8, generator=g) * 0.1
    text[..., :4] = torch.gather(keys, 1, perm[..., None].expand(-1, -1, 4))
    text[..., 4] = payload.float() * 2 - 1
    features = {"t": text, "a": keys, "v": torch.randn(batch, length, 4, generator=g)}
    present = {m: torch.ones(batch, length, dtype=torch.bool) for m in features}
    mask = torch.ones(batch, length, dtype=torch.bool)
    return features, present, mask, torch.gather(payload, 1, perm)


def retrieval_accuracy(fusion: str, steps: int = 150) -> float:
    torch.manual_seed(0)
    config = DialogueModelConfig(
        dims=RETRIEVAL_DIMS,
        n_classes=2,
        modalities="tav",
        fusion=fusion,
        layers={"t": 1, "a": 1, "v": 1},
        fusion_layers=1,
        heads=1,
        hidden=32,
        dropout=0.0,
    )
    model = DialogueModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        features, present, mask, y = retrieval_batch(g)
        loss = F.cross_entropy(model(features, present, mask).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    features, present, mask, y = retrieval_batch(torch.Generator().manual_seed(99), batch=256)
    with torch.no_grad():
        return float((model(features, present, mask).argmax(-1) == y).float().mean())


@pytest.mark.slow  # quality gain, 2 x 150 steps; quick: the wiring checks above and test_overfit.py
def test_a_retrieval_across_modalities_needs_the_attention_fusion():
    fused, concat = retrieval_accuracy("attention"), retrieval_accuracy("concat")
    assert fused > 0.9, fused
    assert concat < 0.66, concat  # pooling the other payloads gives at most 0.6
