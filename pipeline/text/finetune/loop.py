"""EmoBERTa-style fine-tuning of the text model on the context input (docs/DESIGN.md section 2.1).

The model (``roberta-large`` on a GPU, the shipped all-MiniLM-L6-v2 on a CPU, or any local folder) gets
a sequence-classification head and is trained to classify the *target* utterance of each context input
(:func:`pipeline.text.context.build_context`): train split for training, dev split for selection by
weighted F1 (never the test split). The result is a Hugging Face folder (model + tokenizer +
``m2f_text.json`` with the config, history and dev weighted F1) that :class:`TextEmbedder` loads as its
``model_name_or_path``; its embeddings are the fine-tuned encoder's last hidden states pooled as the
head read them (``cls``: first token, the paper's choice, for full fine-tuning; ``target``: mean
over the target utterance's tokens, the default when lower layers are frozen).

The recipe follows the base model (:func:`pipeline.text.finetune.recipe.resolve_defaults`): a
RoBERTa/BERT-family base other than MiniLM (``roberta-large``, a local folder) is fine-tuned whole with
the first-token head (EmoBERTa, the paper) on any device; the shipped MiniLM gets the CPU recipe below
on ``device="cpu"``. The CPU recipe (its cost and quality on MELD, and the recipes it was chosen
from: ``bench/RESULTS.md``, "Text fine-tuning"):

- context inputs capped at 64 tokens (most MELD contexts fit; fewer tokens per epoch than 96 or 128);
- dynamic padding in length-bucketed batches (similar lengths together, shuffled at the batch level);
- embeddings and the lowest layers frozen (MiniLM: 2 of 6) and their outputs computed once
  (:class:`pipeline.text.finetune.heads.FrozenBottomCache`), so a step runs only the top four
  layers and the head;
- the new head at 10x the body's learning rate, target-token pooling, 2 epochs;
- one torch thread (faster per step than two on a CPU shared with other busy processes);
- a wall-clock budget (``max_minutes``): training stops cleanly at the budget and keeps the best
  checkpoint so far.

Resumable: a ``resume/state.pt`` (model, optimiser, scheduler, RNG, progress) is written atomically
every ``checkpoint_every`` steps and at each evaluation; the same call after a kill continues from it.

Examples
--------
Not run as a test: it needs the MELD corpus and minutes of training.

>>> from pipeline.corpora.meld import prepare_meld  # doctest: +SKIP
>>> config = FinetuneConfig(out="models/minilm-meld")  # doctest: +SKIP
>>> folder = finetune_text(prepare_meld("data/meld"), config)  # doctest: +SKIP
>>> TextEmbedder(str(folder)).embed(dialogues)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.manifest import Utterance
from pipeline.metrics import weighted_f1
from pipeline.store.atomic import atomic_torch_save, atomic_write_json
from pipeline.store.locks import folder_lock
from pipeline.text.context import pad_batch, special_layout
from pipeline.text.embedder import load_text_model, resolve_model_source
from pipeline.text.finetune.examples import Examples, build_examples, default_label_map, epoch_batches
from pipeline.text.finetune.heads import (
    FrozenBottomCache,
    _pool_mask,
    full_logits,
    predict,
    top_logits,
)
from pipeline.text.finetune.recipe import (
    FinetuneConfig,
    _freeze,
    _resume_key,
    linear_warmup_decay,
    param_groups,
    resolve_defaults,
)
from pipeline.text.finetune.state import (
    META_FILE,
    _save_model_folder,
    restore_rng_states,
    rng_states,
)

logger = logging.getLogger(__name__)


def finetune_text(utterances: Sequence[Utterance], config: FinetuneConfig) -> Path:
    """Fine-tune a text model for utterance emotion classification with context; return its folder.

    Parameters
    ----------
    utterances : sequence of Utterance
        A corpus manifest with ``train`` and ``dev`` splits (``test`` is only evaluated after
        selection when ``config.eval_test``; it never influences the choice).
    config : FinetuneConfig
        The run's settings (frozen): the output folder ``config.out``, the base model, the recipe
        (``None`` fields follow the base and the device, :func:`resolve_defaults`) and the run-only
        switches. A run killed half-way is resumed from ``config.out/resume`` by the same call.

    Returns
    -------
    Path
        ``config.out``, holding ``config.json``, the weights, the tokenizer and ``m2f_text.json``;
        loadable by ``TextEmbedder(str(folder))``.

    Raises
    ------
    ValueError
        No ``config.out``, missing train/dev examples, an unknown label map, or a resume state of
        other settings.
    pipeline.store.locks.CacheLockedError
        Another run is fine-tuning into ``config.out``.
    """
    if config.out is None:
        raise ValueError("finetune_text needs config.out, the folder to write")
    # two extracts of one corpus fine-tune into the same folder with the same temporary names
    out = Path(config.out)
    with folder_lock(out, ".finetune-text.lock", f"fine-tuning a text model in {out}"):
        return _finetune_text(utterances, config)


def _finetune_text(utterances: Sequence[Utterance], cfg: FinetuneConfig) -> Path:
    import torch

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    assert cfg.out is not None  # finetune_text checked it
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    source, _ = resolve_model_source(cfg.base_model)
    label_map = dict(cfg.label_map) if cfg.label_map else default_label_map(utterances)
    n_classes = max(label_map.values()) + 1
    cfg = dataclasses.replace(cfg, base_model=source, label_map=label_map)

    torch.manual_seed(cfg.seed)
    tokenizer, model = load_text_model(source, for_classification=n_classes)
    cfg = resolve_defaults(cfg, model)
    # resolve_defaults filled every field left None; these tell the type checker so
    assert cfg.max_length is not None and cfg.epochs is not None and cfg.lr is not None
    assert cfg.freeze_layers is not None and cfg.pooling is not None
    id2label = {i: lab for lab, i in sorted(label_map.items(), key=lambda kv: kv[1])}
    model.config.id2label = id2label
    model.config.label2id = {lab: i for i, lab in id2label.items()}
    _freeze(model, cfg.freeze_embeddings, cfg.freeze_layers)
    dev_t = torch.device(cfg.device)
    model.to(dev_t)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layout = special_layout(tokenizer)

    t0 = time.time()
    examples = build_examples(utterances, tokenizer, cfg.max_length, label_map, cfg.context)
    for split in ("train", "dev"):
        if split not in examples or len(examples[split]) == 0:
            raise ValueError(
                f"no labelled {split} utterances among {len(utterances)} (labels in "
                f"{sorted(label_map)}); fine-tuning needs train and dev splits"
            )
    train = examples["train"]
    if cfg.limit_train is not None:
        n = cfg.limit_train
        train = Examples(train.ids[:n], train.labels[:n], train.utt_ids[:n])
    lengths = [len(x) for x in train.ids]
    logger.info(
        f"{len(train)} train / {len(examples['dev'])} dev inputs, mean {np.mean(lengths):.1f} tokens "
        f"(max {cfg.max_length}); contexts built in {time.time() - t0:.1f}s"
    )

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_ratio * total_steps))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, warmup, total_steps)
    )
    eval_points = {
        min(steps_per_epoch, round(steps_per_epoch * (k + 1) / cfg.evals_per_epoch))
        for k in range(cfg.evals_per_epoch)
    }

    resume_dir = out_dir / "resume"
    state_path = resume_dir / "state.pt"
    best_dir = out_dir / "resume" / "best"
    progress: dict[str, Any] = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "elapsed_s": 0.0,
        "best_dev_wf1": -1.0,
        "best_step": None,
        "history": [],
        "stopped_early": False,
    }
    if state_path.exists():
        # on the CPU: torch.set_rng_state takes a CPU ByteTensor; load_state_dict moves the rest to the model
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config_json"] != _resume_key(cfg):
            raise ValueError(
                f"{state_path} was written with a different configuration; remove {resume_dir} "
                f"to start over or call with the same settings to resume"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state, dev_t.type)
        progress = json.loads(state["progress"])
        progress["stopped_early"] = False  # a new call brings a new budget
        logger.info(
            f"resuming at epoch {progress['epoch']} step {progress['step_in_epoch']} "
            f"(best dev wF1 so far {progress['best_dev_wf1']:.4f})"
        )

    train_cache = dev_cache = None
    if cfg.freeze_layers > 0 and cfg.cache_frozen:
        t = time.time()
        train_cache = FrozenBottomCache(model, train, cfg.freeze_layers, pad_id, dev_t, cfg.eval_batch_size)
        dev_cache = FrozenBottomCache(
            model, examples["dev"], cfg.freeze_layers, pad_id, dev_t, cfg.eval_batch_size
        )
        logger.info(
            f"frozen embeddings + {cfg.freeze_layers} layers run once: "
            f"{(train_cache.nbytes + dev_cache.nbytes) / 1e6:.0f} MB in {time.time() - t:.0f}s"
        )

    use_amp = cfg.amp and dev_t.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss()
    run_start = time.time() - progress["elapsed_s"]

    def save_state() -> None:
        progress["elapsed_s"] = time.time() - run_start
        resume_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                **rng_states(dev_t.type),
                "progress": json.dumps(progress),
                "config_json": _resume_key(cfg),
            },
            state_path,
        )

    def evaluate_dev() -> None:
        assert cfg.pooling is not None  # resolved above (a nested function does not see that narrowing)
        t = time.time()
        logits = predict(
            model, examples["dev"], cfg.eval_batch_size, pad_id, dev_t, dev_cache, cfg.pooling, layout
        )
        pred = logits.argmax(1)
        wf1 = weighted_f1(examples["dev"].labels, pred, n_classes)
        acc = float((pred == examples["dev"].labels).mean())
        entry = {
            "epoch": progress["epoch"],
            "step": progress["global_step"],
            "dev_weighted_f1": wf1,
            "dev_accuracy": acc,
            "train_loss": progress.get("running_loss"),
            "elapsed_s": round(time.time() - run_start, 1),
        }
        progress["history"].append(entry)
        logger.info(
            f"epoch {progress['epoch']} step {progress['global_step']}: dev wF1 {wf1:.4f} acc {acc:.4f} "
            f"(eval {time.time() - t:.0f}s, {entry['elapsed_s']:.0f}s in)"
        )
        if wf1 > progress["best_dev_wf1"]:
            progress["best_dev_wf1"] = wf1
            progress["best_step"] = progress["global_step"]
            _save_model_folder(
                model,
                tokenizer,
                best_dir,
                {"config": cfg.recorded(), "dev_weighted_f1": wf1, "step": entry["step"]},
            )
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
                    logits = full_logits(
                        model,
                        torch.from_numpy(ids).to(dev_t),
                        torch.from_numpy(mask).to(dev_t),
                        cfg.pooling,
                        pmask,
                    )
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
                logger.info(
                    f"epoch {progress['epoch']} step {progress['step_in_epoch']}/{len(batches)} "
                    f"loss {progress['running_loss']:.4f} ({time.time() - run_start:.0f}s)"
                )
            if progress["step_in_epoch"] in eval_points or over_budget:
                evaluate_dev()
                if over_budget:
                    progress["stopped_early"] = True
                    logger.info(f"stopping: the {cfg.max_minutes} min budget is spent")
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
    return _finish(
        out_dir,
        best_dir,
        cfg,
        progress,
        examples,
        train_s,
        pad_id,
        n_classes,
        len(train),
        float(np.mean(lengths)),
        layout,
    )


def _finish(
    out_dir: Path,
    best_dir: Path,
    cfg: FinetuneConfig,
    progress: dict,
    examples: dict[str, Examples],
    train_s: float,
    pad_id: int,
    n_classes: int,
    n_train: int,
    mean_tokens: float,
    layout,
) -> Path:
    """Copy the selected checkpoint into ``out_dir``, evaluate test if asked, write ``m2f_text.json``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    meta = {
        "config": cfg.recorded(),
        "history": progress["history"],
        "dev_weighted_f1": progress["best_dev_wf1"],
        "selected_step": progress["best_step"],
        "stopped_early": progress["stopped_early"],
        "train_seconds": round(train_s, 1),
        "n_train": n_train,
        "mean_train_tokens": round(mean_tokens, 1),
        "pooling_for_embeddings": cfg.pooling,
        "selection": "dev weighted F1 (test never used for selection)",
    }
    if cfg.eval_test and "test" in examples and len(examples["test"]):
        assert cfg.pooling is not None  # training resolved it (resolve_defaults)
        device = torch.device(cfg.device)
        model = AutoModelForSequenceClassification.from_pretrained(best_dir, trust_remote_code=False)
        model = model.to(device)
        t = time.time()
        pred = predict(
            model, examples["test"], cfg.eval_batch_size, pad_id, device, pooling=cfg.pooling, layout=layout
        ).argmax(1)
        meta["test_weighted_f1"] = weighted_f1(examples["test"].labels, pred, n_classes)
        meta["test_accuracy"] = float((pred == examples["test"].labels).mean())
        logger.info(
            f"selected model: test wF1 {meta['test_weighted_f1']:.4f} acc {meta['test_accuracy']:.4f} "
            f"({time.time() - t:.0f}s)"
        )
    for p in best_dir.iterdir():
        if p.name == META_FILE:
            continue
        shutil.copy2(p, out_dir / p.name)
    atomic_write_json(out_dir / META_FILE, meta, indent=2, sort_keys=False, ensure_ascii=True)
    logger.info(
        f"wrote {out_dir} (dev wF1 {meta['dev_weighted_f1']:.4f}, {train_s / 60:.1f} min of training)"
    )
    return out_dir
