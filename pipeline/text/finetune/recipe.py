"""Text fine-tuning, the recipe: :class:`FinetuneConfig` and the defaults, optimiser groups, schedule
and freezing that follow from the base model and the device (docs/DESIGN.md section 2.1).

The training loop is :func:`pipeline.text.finetune.loop.finetune_text`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.text.embedder import DEFAULT_TEXT_MODEL
from pipeline.text.finetune.heads import base_of


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (all saved in ``m2f_text.json``).

    ``None`` fields are resolved when the model is loaded (:func:`resolve_defaults`) and saved resolved.
    """

    base_model: str | None = None
    max_length: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    head_lr_mult: float = 10.0
    pooling: str | None = None
    context: str = "full"
    freeze_embeddings: bool = True
    freeze_layers: int | None = None
    cache_frozen: bool = True
    evals_per_epoch: int = 2
    checkpoint_every: int = 50
    max_minutes: float | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    label_map: dict[str, int] = field(default_factory=dict)


def uses_minilm_recipe(base_model: str | None) -> bool:
    """Whether ``base_model`` gets the MiniLM CPU recipe (top four layers, target pooling).

    True for the shipped all-MiniLM-L6-v2 (``None`` or its folder) and any base named ``*MiniLM*``
    (hub id or folder name); every other base (RoBERTa, BERT, ...) is fine-tuned whole with the
    first-token head, as EmoBERTa and the paper do.
    """
    if base_model is None:
        return True
    src = Path(str(base_model)).expanduser()
    if src.exists() and src.resolve() == Path(DEFAULT_TEXT_MODEL).expanduser().resolve():
        return True
    return "minilm" in src.name.lower()


def resolve_defaults(cfg: FinetuneConfig, model) -> FinetuneConfig:
    """Fill the fields left as ``None`` (in place): the recipe follows the base model and the device.

    ``freeze_layers``: for MiniLM on CPU (:func:`uses_minilm_recipe`) all but the top four layers
    (``bench/RESULTS.md``: MiniLM trains layers 3-6 and the head; top two only: 0.543 dev / 0.592 test,
    top four: 0.575 / 0.613); otherwise none (full fine-tuning, as EmoBERTa: any other base such as
    ``roberta-large``, and MiniLM on CUDA). ``pooling``: ``cls`` (the paper's first token) when every
    layer trains, ``target`` when some are frozen. ``lr``: 1e-5 for models of hidden size >= 768
    (RoBERTa-base or -large, as EmoBERTa); 1e-4 for smaller ones with frozen layers, 5e-5 for smaller
    ones trained whole. ``max_length``: 64 on CPU, 128 on CUDA. ``epochs``: 2 on CPU, 5 on CUDA.
    """
    cpu = cfg.device == "cpu"
    if cfg.max_length is None:
        cfg.max_length = 64 if cpu else 128
    if cfg.epochs is None:
        cfg.epochs = 2 if cpu else 5
    n_layers = len(base_of(model).encoder.layer)
    if cfg.freeze_layers is None:
        cfg.freeze_layers = max(0, n_layers - 4) if cpu and uses_minilm_recipe(cfg.base_model) else 0
    if cfg.pooling is None:
        cfg.pooling = "target" if cfg.freeze_layers > 0 else "cls"
    if cfg.lr is None:
        if model.config.hidden_size >= 768:
            cfg.lr = 1e-5
        else:
            cfg.lr = 1e-4 if cfg.freeze_layers > 0 else 5e-5
    return cfg


def param_groups(model, cfg: FinetuneConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only; the new head at ``lr * head_lr_mult``.

    The head starts from random weights; at the body's rate it needs hundreds of steps just to reach a
    useful scale (on MELD the loss stayed at the majority-class level: bench/RESULTS.md, "Text
    fine-tuning"), which a short CPU budget cannot spare.
    """
    if cfg.lr is None:
        raise ValueError("param_groups needs the resolved configuration (resolve_defaults): lr is None")
    head = {id(p) for p in model.classifier.parameters()}
    groups = []
    for is_head in (False, True):
        lr = cfg.lr * (cfg.head_lr_mult if is_head else 1.0)
        ps = [p for p in model.parameters() if p.requires_grad and (id(p) in head) == is_head]
        groups.append({"params": [p for p in ps if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr": lr})
        groups.append({"params": [p for p in ps if p.ndim <= 1], "weight_decay": 0.0, "lr": lr})
    return [g for g in groups if g["params"]]


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """LR factor: linear rise over ``warmup`` steps to 1, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _freeze(model, freeze_embeddings: bool, freeze_layers: int) -> None:
    base = getattr(model, model.base_model_prefix)
    if freeze_embeddings:
        for p in base.embeddings.word_embeddings.parameters():
            p.requires_grad = False
    layers = base.encoder.layer
    if freeze_layers > len(layers):
        raise ValueError(f"freeze_layers={freeze_layers} but the model has {len(layers)} layers")
    for layer in layers[:freeze_layers]:
        for p in layer.parameters():
            p.requires_grad = False
    if freeze_layers > 0:
        for p in base.embeddings.parameters():
            p.requires_grad = False


def _resume_key(cfg: FinetuneConfig) -> str:
    """The settings a resumed run must share with the killed one (the time budget may change)."""
    d = dataclasses.asdict(cfg)
    d.pop("max_minutes")
    if d["context"] == "full":
        d.pop("context")  # states written before the option resume as before
    return json.dumps(d, sort_keys=True, default=str)
