"""Text fine-tuning, the recipe: :class:`FinetuneConfig` and the defaults, optimiser groups, schedule
and freezing that follow from the base model and the device (docs/DESIGN.md section 2.1).

The training loop is :func:`pipeline.text.finetune.loop.finetune_text`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.text.context import CONTEXTS
from pipeline.text.embedder import DEFAULT_TEXT_MODEL, POOLINGS
from pipeline.text.finetune.heads import base_of

#: The contexts a text model is fine-tuned with from the command line (``none`` is for ablations).
FINETUNE_CONTEXTS = tuple(c for c in CONTEXTS if c != "none")

#: Metadata key of the fields that steer one call but are not the recipe (not saved, not resume-checked).
RUN_ONLY = "run_only"


def _run_only(**more) -> dict:
    return {RUN_ONLY: True, **more}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run: what :func:`pipeline.text.finetune.loop.finetune_text` takes.

    Immutable. The recipe fields are saved in ``m2f_text.json`` (:meth:`recorded`); ``None`` fields are
    resolved when the model is loaded (:func:`resolve_defaults`, which returns a resolved copy) and
    saved resolved. The fields marked run-only (``out``, ``limit_train``, ``eval_test``, ``threads``)
    steer the call and are neither saved nor compared on resume. Fields with a ``help`` in their
    metadata are ``m2f train-encoders --text-*`` options (``cli.py`` reads them).

    Parameters
    ----------
    out : path-like or None
        Output folder; ends up holding ``config.json``, the weights, the tokenizer and
        ``m2f_text.json``. A run killed half-way is resumed from ``out/resume``. Required by
        ``finetune_text``; None where the caller picks the folder
        (:func:`pipeline.extract.stage_text.finetune_default_text_model`: the cache's).
    base_model : str or None
        Hub id (``roberta-large``) or local folder; ``None`` is the shipped all-MiniLM-L6-v2.
    max_length : int or None
        Tokens per context input (special tokens included); ``None``: 64 on CPU, 128 on CUDA.
    epochs : int or None
        ``None``: 2 on CPU, 5 on CUDA (EmoBERTa).
    batch_size, eval_batch_size, lr, weight_decay, warmup_ratio : int, float or None
        AdamW with linear warm-up (``warmup_ratio`` of the steps) and linear decay; ``lr=None``
        chooses by model size and freezing (:func:`resolve_defaults`).
    head_lr_mult : float
        The (new, randomly initialised) classification head learns at ``lr * head_lr_mult``.
    pooling : {"cls", "mean", "target"} or None
        What the head reads (:func:`pipeline.text.finetune.heads.full_logits`): the first token (the
        paper's), the masked token mean (all-MiniLM-L6-v2's trained pooling) or the mean over the
        target utterance's tokens. ``None``: ``cls`` when every layer trains (the paper, EmoBERTa),
        ``target`` when layers are frozen. :class:`TextEmbedder` embeds a fine-tuned folder with the
        same pooling by default.
    context : {"full", "past", "none"}
        The context input (:func:`pipeline.text.context.build_contexts`): ``past`` leaves out the
        next utterance, for causal (live) use. The folder is always embedded with it.
    freeze_embeddings : bool
        Keep the word-embedding matrix frozen.
    freeze_layers : int or None
        Lowest transformer layers kept frozen (with all embeddings); 0 trains every layer; ``None``:
        all but the top four for MiniLM on CPU, none otherwise (:func:`resolve_defaults`).
    cache_frozen : bool
        With ``freeze_layers > 0``, run the frozen embeddings and layers once over the train and dev
        inputs and keep their outputs (:class:`pipeline.text.finetune.heads.FrozenBottomCache`), so
        each step runs only the trained layers.
    evals_per_epoch, checkpoint_every : int
        Dev evaluations (selection points) per epoch; steps between resume states.
    max_minutes : float or None
        Wall-clock budget for training (the time of earlier attempts of a resumed run counts);
        training stops at the first step past it, evaluates, and keeps the best checkpoint.
    seed : int
        Seeds the head, dropout and batch order.
    device : str
        ``cpu`` or ``cuda``; on CUDA training runs under bf16/fp16 autocast (``amp``).
    label_map : dict
        Raw label -> class index; empty: MELD's 7 classes or IEMOCAP's 6 (others dropped).
    limit_train : int or None
        Run-only: use only the first N training examples (quick trials and tests).
    eval_test : bool
        Run-only: after selection, record the selected model's test weighted F1 in ``m2f_text.json``.
    threads : int or None
        Run-only: ``torch.set_num_threads`` for the run; ``None`` leaves it.
    """

    out: str | os.PathLike[str] | None = field(default=None, metadata=_run_only())
    base_model: str | None = None
    max_length: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    head_lr_mult: float = 10.0
    pooling: str | None = field(
        default=None,
        metadata={
            "help": "what the head and the embeddings read. Default: cls (first token) when every "
            "layer trains, target otherwise.",
            "choices": POOLINGS,
        },
    )
    context: str = field(
        default="full",
        metadata={
            "help": "with the next utterance, or `past` alone (causal).",
            "choices": FINETUNE_CONTEXTS,
        },
    )
    freeze_embeddings: bool = True
    freeze_layers: int | None = field(
        default=None,
        metadata={
            "help": "lowest layers kept frozen. Default: 0 (full fine-tuning), but all except the top "
            "four for MiniLM on cpu."
        },
    )
    cache_frozen: bool = True
    evals_per_epoch: int = 2
    checkpoint_every: int = 50
    max_minutes: float | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    label_map: dict[str, int] = field(default_factory=dict)
    limit_train: int | None = field(default=None, metadata=_run_only())
    eval_test: bool = field(default=True, metadata=_run_only())
    threads: int | None = field(default=None, metadata=_run_only())

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; expected one of {CONTEXTS}")

    def recorded(self) -> dict:
        """The recipe as saved in ``m2f_text.json`` (every field but the run-only ones, in order)."""
        return {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not f.metadata.get(RUN_ONLY)
        }


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
    """``cfg`` with the fields left as ``None`` filled: the recipe follows the base model and the device.

    ``freeze_layers``: for MiniLM on CPU (:func:`uses_minilm_recipe`) all but the top four layers
    (``bench/RESULTS.md``: MiniLM trains layers 3-6 and the head; top two only: 0.543 dev / 0.592 test,
    top four: 0.575 / 0.613); otherwise none (full fine-tuning, as EmoBERTa: any other base such as
    ``roberta-large``, and MiniLM on CUDA). ``pooling``: ``cls`` (the paper's first token) when every
    layer trains, ``target`` when some are frozen. ``lr``: 1e-5 for models of hidden size >= 768
    (RoBERTa-base or -large, as EmoBERTa); 1e-4 for smaller ones with frozen layers, 5e-5 for smaller
    ones trained whole. ``max_length``: 64 on CPU, 128 on CUDA. ``epochs``: 2 on CPU, 5 on CUDA.
    Returns a new config (``cfg`` is frozen).
    """
    cpu = cfg.device == "cpu"
    n_layers = len(base_of(model).encoder.layer)
    freeze_layers = cfg.freeze_layers
    if freeze_layers is None:
        freeze_layers = max(0, n_layers - 4) if cpu and uses_minilm_recipe(cfg.base_model) else 0
    lr = cfg.lr
    if lr is None:
        if model.config.hidden_size >= 768:
            lr = 1e-5
        else:
            lr = 1e-4 if freeze_layers > 0 else 5e-5
    return dataclasses.replace(
        cfg,
        max_length=cfg.max_length if cfg.max_length is not None else 64 if cpu else 128,
        epochs=cfg.epochs if cfg.epochs is not None else 2 if cpu else 5,
        freeze_layers=freeze_layers,
        pooling=cfg.pooling if cfg.pooling is not None else "target" if freeze_layers > 0 else "cls",
        lr=lr,
    )


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
    d = cfg.recorded()
    d.pop("max_minutes")
    if d["context"] == "full":
        d.pop("context")  # states written before the option resume as before
    return json.dumps(d, sort_keys=True, default=str)
