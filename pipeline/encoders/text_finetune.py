"""EmoBERTa-style fine-tuning of the text model on the context input (docs/DESIGN.md section 2.1).

The model (``roberta-large`` on a GPU, the shipped all-MiniLM-L6-v2 on a CPU, or any local folder) gets
a sequence-classification head and is trained to classify the *target* utterance of each context input
(:func:`pipeline.modalities.text.build_context`): train split for training, dev split for selection by
weighted F1 (never the test split). The result is a Hugging Face folder (model + tokenizer +
``m2f_text.json`` with the config, history and dev weighted F1) that :class:`TextEmbedder` loads as its
``model_name_or_path``; its embeddings are the fine-tuned encoder's last hidden states pooled as the
head read them (``cls``: first token, the paper's choice, for full fine-tuning; ``target``: mean
over the target utterance's tokens, the default when lower layers are frozen).

The recipe follows the base model (:func:`resolve_defaults`): a RoBERTa/BERT-family base other than MiniLM
(``roberta-large``, a local folder) is fine-tuned whole with the first-token head (EmoBERTa, the paper) on
any device; the shipped MiniLM gets the CPU recipe below on ``device="cpu"``. The CPU recipe (measured
on MELD in ``bench/RESULTS.md``: about 15 min of training on a shared 2-core CPU, 0.575 dev / 0.613 test
weighted F1 of the classifier):

- context inputs capped at 64 tokens (MELD train contexts: mean 50.9 tokens; 71.7 at 96, 87.3 at 128);
- dynamic padding in length-bucketed batches (similar lengths together, shuffled at the batch level);
- embeddings and the lowest layers frozen (MiniLM: 2 of 6) and their outputs computed once
  (:class:`FrozenBottomCache`), so a step runs only the top four layers and the head;
- the new head at 10x the body's learning rate, target-token pooling, 2 epochs;
- one torch thread (on a CPU shared with other busy processes it was 3-4x faster per step than two);
- a wall-clock budget (``max_minutes``): training stops cleanly at the budget and keeps the best
  checkpoint so far.

Resumable: a ``resume/state.pt`` (model, optimiser, scheduler, RNG, progress) is written atomically
every ``checkpoint_every`` steps and at each evaluation; the same call after a kill continues from it.

Examples
--------
>>> from pipeline.corpora.meld import prepare_meld
>>> folder = finetune_text(prepare_meld("data/meld"), "models/minilm-meld")  # the CPU recipe
>>> TextEmbedder(str(folder)).embed(dialogues)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_torch_save, atomic_write_json
from pipeline.corpora.base import IEMOCAP_CLASSES, MELD_CLASSES
from pipeline.locks import folder_lock
from pipeline.manifest import Utterance, group_dialogues
from pipeline.metrics import weighted_f1
from pipeline.modalities.text import (
    DEFAULT_TEXT_MODEL,
    POOLINGS,
    build_contexts,
    length_sorted_batches,
    load_text_model,
    pad_batch,
    pool_hidden,
    resolve_model_source,
    special_layout,
    target_mask_batch,
)

log = logging.getLogger(__name__)

#: Written into ``m2f_text.json``; :class:`TextEmbedder` does not need it, readers may check it.
META_FILE = "m2f_text.json"


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


@dataclass
class Examples:
    """Context inputs of one split: ids per input, class index per input, utterance ids."""

    ids: list[list[int]]
    labels: np.ndarray
    utt_ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def default_label_map(utterances: Sequence[Utterance]) -> dict[str, int]:
    """MELD's 7 classes or IEMOCAP's 6 (other labels dropped), by the corpus of the utterances.

    Raises
    ------
    ValueError
        For a corpus without a default (pass ``label_map``).
    """
    corpora = {u.corpus for u in utterances}
    if corpora <= {"meld", "sample"}:
        return {c: i for i, c in enumerate(MELD_CLASSES)}
    if corpora == {"iemocap"}:
        return {c: i for i, c in enumerate(IEMOCAP_CLASSES)}
    raise ValueError(f"no default label map for corpora {sorted(corpora)}; pass label_map={{label: index}}")


def build_examples(utterances: Sequence[Utterance], tokenizer, max_length: int,
                   label_map: Mapping[str, int]) -> dict[str, Examples]:
    """Context inputs per split for the utterances whose label is in ``label_map``.

    Every utterance (labelled or not) serves as context for its neighbours; only mapped labels
    become examples.
    """
    contexts = build_contexts(group_dialogues(utterances), tokenizer, max_length)
    out: dict[str, Examples] = {}
    for u in utterances:
        if u.label is None or u.label not in label_map:
            continue
        ex = out.setdefault(u.split, Examples([], np.zeros(0, dtype=np.int64), []))
        ex.ids.append(contexts[u.id])
        ex.utt_ids.append(u.id)
    for split, ex in out.items():
        by_id = {u.id: u.label for u in utterances if u.split == split}
        ex.labels = np.array([label_map[by_id[i]] for i in ex.utt_ids], dtype=np.int64)
    return out


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches for one epoch: shuffle, sort within chunks of 50 batches, shuffle batches.

    Deterministic in ``(seed, epoch)``, so a resumed run replays the same order.
    """
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def predict(model, examples: Examples, batch_size: int, pad_id: int, device,
            cache: FrozenBottomCache | None = None, pooling: str = "cls", layout=None) -> np.ndarray:
    """Class logits ``(N, C)`` float32 for ``examples`` (length-sorted batches, inference mode).

    With ``cache`` (the examples' frozen-bottom states) only the upper layers and the head run.
    ``pooling`` is the head's (:func:`head_logits`); ``target`` needs the tokenizer's ``layout``.
    """
    import torch

    model.eval()
    out = None
    with torch.inference_mode():
        for batch in length_sorted_batches([len(x) for x in examples.ids], batch_size):
            seqs = [examples.ids[i] for i in batch]
            pmask = _pool_mask(seqs, pooling, layout, device)
            if cache is not None:
                hidden, mask_t = cache.batch(batch, device)
                logits = top_logits(model, hidden, mask_t, cache.n_layers, pooling, pmask)
            else:
                ids, mask = pad_batch(seqs, pad_id)
                ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
                logits = full_logits(model, ids_t, mask_t, pooling, pmask)
            logits = logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(examples), logits.shape[1]), dtype=np.float32)
            out[batch] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _pool_mask(seqs, pooling: str, layout, device):
    """The target mask of a batch for ``pooling="target"`` (None otherwise)."""
    if pooling != "target":
        return None
    import torch

    if layout is None:
        raise ValueError("pooling='target' needs the tokenizer's layout (special_layout(tokenizer))")
    return torch.from_numpy(target_mask_batch(seqs, layout, max(len(x) for x in seqs))).to(device)


def uses_minilm_recipe(base_model: str | None) -> bool:
    """Whether ``base_model`` gets the measured MiniLM CPU recipe (top four layers, target pooling).

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
    useful scale (measured on MELD: loss still at the majority-class level after 175 steps at 1e-4),
    which a short CPU budget cannot spare.
    """
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
    return json.dumps(d, sort_keys=True, default=str)


def base_of(model):
    """The bare transformer inside a ``*ForSequenceClassification`` model (``model.bert``, ``.roberta``)."""
    return getattr(model, model.base_model_prefix)


def _attention_mask_4d(model, hidden, mask):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)


def bottom_states(model, ids, mask, n_layers: int):
    """Hidden states after the embeddings and the lowest ``n_layers`` layers ``(B, T, H)`` (no grad)."""
    import torch

    base = base_of(model)
    with torch.no_grad():
        hidden = base.embeddings(input_ids=ids)
        mask4 = _attention_mask_4d(model, hidden, mask)
        for layer in base.encoder.layer[:n_layers]:
            hidden = layer(hidden, mask4)
    return hidden


def head_logits(model, hidden, mask, pooling: str = "cls", pool_mask=None):
    """The classification head on the last hidden states ``(B, T, H)``.

    ``cls``: the model's own head (BERT-style: ``pooler`` on the first token, dropout, linear
    ``classifier``; RoBERTa-style: its head reads the first token), i.e. ``model(ids).logits``.
    ``mean`` / ``target``: the masked mean of all tokens / of the target's tokens (``pool_mask``)
    goes where the first token went (BERT-style: straight into dropout + ``classifier``;
    RoBERTa-style: as the head's only "token").
    """
    import torch

    base = base_of(model)
    bert_style = isinstance(model.classifier, torch.nn.Linear) and getattr(base, "pooler", None) is not None
    if pooling == "cls":
        if bert_style:
            return model.classifier(model.dropout(base.pooler(hidden)))
        return model.classifier(hidden)
    pooled = pool_hidden(hidden, mask if pool_mask is None else pool_mask, pooling)
    if bert_style:
        return model.classifier(model.dropout(pooled))
    return model.classifier(pooled[:, None, :])


def full_logits(model, ids, mask, pooling: str = "cls", pool_mask=None):
    """Logits of the whole model for padded ``ids`` / ``mask`` with the head of :func:`head_logits`."""
    hidden = base_of(model)(input_ids=ids, attention_mask=mask).last_hidden_state
    return head_logits(model, hidden, mask, pooling, pool_mask)


def top_logits(model, hidden, mask, n_layers: int, pooling: str = "cls", pool_mask=None):
    """Logits from hidden states after layer ``n_layers``: the remaining layers, then the head.

    Equals :func:`full_logits` (and ``model(ids).logits`` for ``cls``) when ``hidden`` comes from
    :func:`bottom_states` (tested).
    """
    base = base_of(model)
    mask4 = _attention_mask_4d(model, hidden, mask)
    for layer in base.encoder.layer[n_layers:]:
        hidden = layer(hidden, mask4)
    return head_logits(model, hidden, mask, pooling, pool_mask)


class FrozenBottomCache:
    """The frozen lowest layers' outputs of every example, computed once (unpadded, ``dtype``).

    With the embeddings and ``n_layers`` layers frozen, their output never changes during training, so
    running them once instead of every step saves their forward pass in every epoch and every dev
    evaluation.
    """

    def __init__(self, model, examples: Examples, n_layers: int, pad_id: int, device, batch_size: int = 64,
                 dtype=None) -> None:
        import torch

        self.n_layers = n_layers
        self.states: list = [None] * len(examples)
        dtype = dtype or torch.float16
        was_training = model.training
        model.eval()
        for batch in length_sorted_batches([len(x) for x in examples.ids], batch_size):
            ids, mask = pad_batch([examples.ids[i] for i in batch], pad_id)
            hidden = bottom_states(model, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device),
                                   n_layers)
            for row, i in enumerate(batch):
                self.states[i] = hidden[row, :len(examples.ids[i])].to(dtype).cpu()
        model.train(was_training)

    def batch(self, index: Sequence[int], device):
        """Padded ``(hidden (B, T, H) float32, mask (B, T) int64)`` for the examples ``index``."""
        import torch

        seqs = [self.states[i] for i in index]
        width = max(len(x) for x in seqs)
        hidden = torch.zeros((len(seqs), width, seqs[0].shape[1]), dtype=torch.float32)
        mask = torch.zeros((len(seqs), width), dtype=torch.int64)
        for row, x in enumerate(seqs):
            hidden[row, :len(x)] = x.float()
            mask[row, :len(x)] = 1
        return hidden.to(device), mask.to(device)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached states."""
        return sum(x.numel() * x.element_size() for x in self.states)


def _save_model_folder(model, tokenizer, folder: Path, meta: dict) -> None:
    """Write model + tokenizer + meta into ``folder`` via a temporary sibling and a rename."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def _finetune_text(utterances: Sequence[Utterance], out_dir: str | os.PathLike, base_model: str | None = None,
                  device: str = "cpu", label_map: Mapping[str, int] | None = None,
                  max_length: int | None = None, epochs: int | None = None, batch_size: int = 32,
                  lr: float | None = None, freeze_layers: int | None = None,
                  freeze_embeddings: bool = True, max_minutes: float | None = None, seed: int = 0,
                  evals_per_epoch: int = 2, limit_train: int | None = None,
                  eval_test: bool = True, threads: int | None = None, cache_frozen: bool = True,
                  head_lr_mult: float = 10.0, pooling: str | None = None) -> Path:
    """Fine-tune a text model for utterance emotion classification with context; return its folder.

    Parameters
    ----------
    utterances : sequence of Utterance
        A corpus manifest with ``train`` and ``dev`` splits (``test`` is only evaluated after
        selection when ``eval_test``; it never influences the choice).
    out_dir : path
        Output folder; ends up holding ``config.json``, the weights, the tokenizer and
        ``m2f_text.json``. A run killed half-way is resumed from ``out_dir/resume``.
    base_model : str or None
        Hub id (``roberta-large``) or local folder; ``None`` is the shipped all-MiniLM-L6-v2.
    device : str
        ``cpu`` or ``cuda``; on CUDA training runs under bf16/fp16 autocast.
    label_map : mapping or None
        Raw label -> class index; ``None`` is MELD's 7 classes or IEMOCAP's 6 (others dropped).
    max_length : int or None
        Tokens per context input (special tokens included); ``None``: 64 on CPU, 128 on CUDA.
    epochs : int or None
        ``None``: 2 on CPU, 5 on CUDA (EmoBERTa).
    batch_size, lr : int, float or None
        AdamW with linear warm-up (10% of the steps) and linear decay; ``lr=None`` chooses by model
        size and freezing (:func:`resolve_defaults`).
    freeze_layers : int or None
        Lowest transformer layers kept frozen (with all embeddings); 0 trains every layer; ``None``:
        all but the top four for MiniLM on CPU, none otherwise (:func:`resolve_defaults`).
    freeze_embeddings : bool
        Keep the word-embedding matrix frozen.
    head_lr_mult : float
        The (new, randomly initialised) classification head learns at ``lr * head_lr_mult``.
    pooling : {"cls", "mean", "target"} or None
        ``None``: ``cls`` when every layer trains (the paper, EmoBERTa), ``target`` when layers are
        frozen (a first-token head on MiniLM's top two layers reached only 0.41 dev wF1 on MELD,
        ``target`` 0.54; bench/RESULTS.md). What the head reads (:func:`head_logits`): the first
        token (the paper's), the masked token mean (all-MiniLM-L6-v2's trained pooling) or the mean over
        the target utterance's tokens.
        Saved in ``m2f_text.json``; :class:`TextEmbedder` embeds a fine-tuned folder with the same
        pooling by default.
    max_minutes : float or None
        Wall-clock budget for training (the time of earlier attempts of a resumed run counts);
        training stops at the first step past it, evaluates, and keeps the best checkpoint.
    seed : int
        Seeds the head, dropout and batch order.
    evals_per_epoch : int
        Dev evaluations per epoch (selection points).
    limit_train : int or None
        Use only the first N training examples (quick trials and tests).
    eval_test : bool
        After selection, record the selected model's test weighted F1 in ``m2f_text.json``.
    cache_frozen : bool
        With ``freeze_layers > 0``, run the frozen embeddings and layers once over the train and dev
        inputs and keep their outputs (float16, unpadded; :class:`FrozenBottomCache`), so each step
        runs only the trained layers.
    threads : int or None
        ``torch.set_num_threads`` for the run; ``None`` leaves it. On a CPU shared with other busy
        processes 1 thread was 3-4x faster per step than 2 (measured here).

    Returns
    -------
    Path
        ``out_dir``, loadable by ``TextEmbedder(str(out_dir))``.

    Raises
    ------
    ValueError
        Missing train/dev examples or an unknown label map.
    pipeline.locks.CacheLockedError
        Another run is fine-tuning into ``out_dir``.
    """
    import torch

    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if threads is not None:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source, _ = resolve_model_source(base_model)
    label_map = dict(label_map) if label_map is not None else default_label_map(utterances)
    n_classes = max(label_map.values()) + 1
    cfg = FinetuneConfig(base_model=source, max_length=max_length, epochs=epochs, batch_size=batch_size,
                         lr=lr, freeze_layers=freeze_layers, freeze_embeddings=freeze_embeddings,
                         cache_frozen=cache_frozen, head_lr_mult=head_lr_mult, pooling=pooling,
                         max_minutes=max_minutes, seed=seed, device=device, evals_per_epoch=evals_per_epoch,
                         label_map=label_map)

    torch.manual_seed(seed)
    tokenizer, model = load_text_model(source, for_classification=n_classes)
    resolve_defaults(cfg, model)
    id2label = {i: lab for lab, i in sorted(label_map.items(), key=lambda kv: kv[1])}
    model.config.id2label = id2label
    model.config.label2id = {lab: i for i, lab in id2label.items()}
    _freeze(model, cfg.freeze_embeddings, cfg.freeze_layers)
    dev_t = torch.device(device)
    model.to(dev_t)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layout = special_layout(tokenizer)

    t0 = time.time()
    examples = build_examples(utterances, tokenizer, cfg.max_length, label_map)
    for split in ("train", "dev"):
        if split not in examples or len(examples[split]) == 0:
            raise ValueError(f"no labelled {split} utterances among {len(utterances)} (labels in "
                             f"{sorted(label_map)}); fine-tuning needs train and dev splits")
    train = examples["train"]
    if limit_train is not None:
        train = Examples(train.ids[:limit_train], train.labels[:limit_train], train.utt_ids[:limit_train])
    lengths = [len(x) for x in train.ids]
    log.info(f"{len(train)} train / {len(examples['dev'])} dev inputs, mean {np.mean(lengths):.1f} tokens "
             f"(max {cfg.max_length}); contexts built in {time.time() - t0:.1f}s")

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_ratio * total_steps))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, warmup, total_steps))
    eval_points = {min(steps_per_epoch, round(steps_per_epoch * (k + 1) / cfg.evals_per_epoch))
                   for k in range(cfg.evals_per_epoch)}

    resume_dir = out_dir / "resume"
    state_path = resume_dir / "state.pt"
    best_dir = out_dir / "resume" / "best"
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "elapsed_s": 0.0, "best_dev_wf1": -1.0,
                "best_step": None, "history": [], "stopped_early": False}
    if state_path.exists():
        # on the CPU: torch.set_rng_state takes a CPU ByteTensor; load_state_dict moves the rest to the model
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config_json"] != _resume_key(cfg):
            raise ValueError(f"{state_path} was written with a different configuration; remove {resume_dir} "
                             f"to start over or call with the same settings to resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state, dev_t.type)
        progress = json.loads(state["progress"])
        progress["stopped_early"] = False  # a new call brings a new budget
        log.info(f"resuming at epoch {progress['epoch']} step {progress['step_in_epoch']} "
                 f"(best dev wF1 so far {progress['best_dev_wf1']:.4f})")

    train_cache = dev_cache = None
    if cfg.freeze_layers > 0 and cfg.cache_frozen:
        t = time.time()
        train_cache = FrozenBottomCache(model, train, cfg.freeze_layers, pad_id, dev_t, cfg.eval_batch_size)
        dev_cache = FrozenBottomCache(model, examples["dev"], cfg.freeze_layers, pad_id, dev_t,
                                      cfg.eval_batch_size)
        log.info(f"frozen embeddings + {cfg.freeze_layers} layers run once: "
                 f"{(train_cache.nbytes + dev_cache.nbytes) / 1e6:.0f} MB in {time.time() - t:.0f}s")

    use_amp = cfg.amp and dev_t.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss()
    run_start = time.time() - progress["elapsed_s"]

    def save_state() -> None:
        progress["elapsed_s"] = time.time() - run_start
        resume_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), **rng_states(dev_t.type),
                           "progress": json.dumps(progress),
                           "config_json": _resume_key(cfg)},
                          state_path)

    def evaluate_dev() -> None:
        t = time.time()
        logits = predict(model, examples["dev"], cfg.eval_batch_size, pad_id, dev_t, dev_cache, cfg.pooling,
                         layout)
        pred = logits.argmax(1)
        wf1 = weighted_f1(examples["dev"].labels, pred, n_classes)
        acc = float((pred == examples["dev"].labels).mean())
        entry = {"epoch": progress["epoch"], "step": progress["global_step"], "dev_weighted_f1": wf1,
                 "dev_accuracy": acc, "train_loss": progress.get("running_loss"),
                 "elapsed_s": round(time.time() - run_start, 1)}
        progress["history"].append(entry)
        log.info(f"epoch {progress['epoch']} step {progress['global_step']}: dev wF1 {wf1:.4f} acc {acc:.4f} "
                 f"(eval {time.time() - t:.0f}s, {entry['elapsed_s']:.0f}s in)")
        if wf1 > progress["best_dev_wf1"]:
            progress["best_dev_wf1"] = wf1
            progress["best_step"] = progress["global_step"]
            _save_model_folder(model, tokenizer, best_dir, {"config": dataclasses.asdict(cfg),
                                                            "dev_weighted_f1": wf1, "step": entry["step"]})
        model.train()

    model.train()
    budget_s = None if cfg.max_minutes is None else cfg.max_minutes * 60
    while progress["epoch"] < cfg.epochs and not progress["stopped_early"]:
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, progress["epoch"])
        losses: list[float] = []
        while progress["step_in_epoch"] < len(batches):
            batch = batches[progress["step_in_epoch"]]
            y = torch.from_numpy(train.labels[batch]).to(dev_t)
            pmask = _pool_mask([train.ids[i] for i in batch], cfg.pooling, layout, dev_t)
            with torch.autocast(dev_t.type, dtype=amp_dtype, enabled=use_amp):
                if train_cache is not None:
                    hidden, mask_t = train_cache.batch(batch, dev_t)
                    logits = top_logits(model, hidden, mask_t, cfg.freeze_layers, cfg.pooling, pmask)
                else:
                    ids, mask = pad_batch([train.ids[i] for i in batch], pad_id)
                    logits = full_logits(model, torch.from_numpy(ids).to(dev_t),
                                         torch.from_numpy(mask).to(dev_t), cfg.pooling, pmask)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            progress["step_in_epoch"] += 1
            progress["global_step"] += 1
            progress["running_loss"] = float(np.mean(losses[-50:]))
            over_budget = budget_s is not None and time.time() - run_start > budget_s
            if progress["global_step"] % 25 == 0:
                log.info(f"epoch {progress['epoch']} step {progress['step_in_epoch']}/{len(batches)} "
                         f"loss {progress['running_loss']:.4f} ({time.time() - run_start:.0f}s)")
            if progress["step_in_epoch"] in eval_points or over_budget:
                evaluate_dev()
                if over_budget:
                    progress["stopped_early"] = True
                    log.info(f"stopping: the {cfg.max_minutes} min budget is spent")
                save_state()
                if over_budget:
                    break
            elif progress["global_step"] % cfg.checkpoint_every == 0:
                save_state()
        if not progress["stopped_early"]:
            progress["epoch"] += 1
            progress["step_in_epoch"] = 0
            save_state()

    train_s = time.time() - run_start
    return _finish(out_dir, best_dir, cfg, progress, examples, train_s, eval_test, pad_id, n_classes,
                   len(train), float(np.mean(lengths)), layout)


def rng_states(device_type: str) -> dict:
    """The generators a resumed run must continue: the CPU one, and the CUDA one on ``cuda`` (dropout)."""
    import torch

    states = {"torch_rng": torch.get_rng_state()}
    if device_type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(state: dict, device_type: str) -> None:
    """Set what :func:`rng_states` saved; the CUDA state only on ``cuda`` with a GPU visible."""
    import torch

    torch.set_rng_state(state["torch_rng"].cpu())
    if device_type == "cuda" and "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"].cpu())


@functools.wraps(_finetune_text)
def finetune_text(utterances: Sequence[Utterance], out_dir: str | os.PathLike, *args, **kwargs) -> Path:
    # two extracts of one corpus fine-tune into the same folder with the same temporary names
    out = Path(out_dir)
    with folder_lock(out, ".finetune-text.lock", f"fine-tuning a text model in {out}"):
        return _finetune_text(utterances, out_dir, *args, **kwargs)


def _finish(out_dir: Path, best_dir: Path, cfg: FinetuneConfig, progress: dict, examples: dict[str, Examples],
            train_s: float, eval_test: bool, pad_id: int, n_classes: int, n_train: int,
            mean_tokens: float, layout) -> Path:
    """Copy the selected checkpoint into ``out_dir``, evaluate test if asked, write ``m2f_text.json``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    meta = {"config": dataclasses.asdict(cfg), "history": progress["history"],
            "dev_weighted_f1": progress["best_dev_wf1"], "selected_step": progress["best_step"],
            "stopped_early": progress["stopped_early"], "train_seconds": round(train_s, 1),
            "n_train": n_train, "mean_train_tokens": round(mean_tokens, 1),
            "pooling_for_embeddings": cfg.pooling,
            "selection": "dev weighted F1 (test never used for selection)"}
    if eval_test and "test" in examples and len(examples["test"]):
        device = torch.device(cfg.device)
        model = AutoModelForSequenceClassification.from_pretrained(best_dir).to(device)
        t = time.time()
        pred = predict(model, examples["test"], cfg.eval_batch_size, pad_id, device,
                       pooling=cfg.pooling, layout=layout).argmax(1)
        meta["test_weighted_f1"] = weighted_f1(examples["test"].labels, pred, n_classes)
        meta["test_accuracy"] = float((pred == examples["test"].labels).mean())
        log.info(f"selected model: test wF1 {meta['test_weighted_f1']:.4f} acc {meta['test_accuracy']:.4f} "
                 f"({time.time() - t:.0f}s)")
    for p in best_dir.iterdir():
        if p.name == META_FILE:
            continue
        shutil.copy2(p, out_dir / p.name)
    atomic_write_json(out_dir / META_FILE, meta, indent=2, sort_keys=False, ensure_ascii=True)
    log.info(f"wrote {out_dir} (dev wF1 {meta['dev_weighted_f1']:.4f}, {train_s / 60:.1f} min of training)")
    return out_dir


def read_finetune_meta(folder: str | os.PathLike) -> dict:
    """The ``m2f_text.json`` of a fine-tuned folder (config, history, dev/test weighted F1)."""
    path = Path(folder) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {folder} is not a folder written by finetune_text")
    return json.loads(path.read_text(encoding="utf-8"))
