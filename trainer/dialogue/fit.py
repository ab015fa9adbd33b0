"""Training the dialogue model: device, AMP, early stopping on dev, checkpoints, resume, seeds.

Layout of a run directory (``m2f train-dialog --out RUN_DIR --seeds N``)::

    RUN_DIR/config.json              the resolved configuration (all seeds)
    RUN_DIR/seed<k>/config.json      the same plus this seed
    RUN_DIR/seed<k>/environment.json versions, device, threads
    RUN_DIR/seed<k>/label_map.json   class names in index order, excluded raw labels per split
    RUN_DIR/seed<k>/status.json      {"state": "training" | "done", "epoch": ..., ...}
    RUN_DIR/seed<k>/metrics.jsonl    one line per finished epoch
    RUN_DIR/seed<k>/last.pt          model + optimizer + RNG + early-stopping state (resume point)
    RUN_DIR/seed<k>/best.pt          the selected model (``--select``; default: best dev weighted-F1 epoch)
    RUN_DIR/seed<k>/average/epoch<NNNN>.pt   ``--select average`` only: the last K epochs' weights
    RUN_DIR/seed<k>/predictions_{dev,test}.csv   utt_id, gold, predicted, p_<class>...

The model is selected on dev, never on test: by default the epoch of the best dev weighted F1; with
``--select loss`` the epoch of the lowest dev loss; with ``--select average`` the mean of the weights of
the last K epochs (:mod:`trainer.dialogue.selection`). A killed run continues from ``last.pt``
when started again with the same options; because the batch order of epoch e is a function of
(seed, e) and the dropout RNG state is checkpointed, a resumed run follows the same path as an
uninterrupted one. Every file is written through a temporary name and an atomic rename.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.names import SPLITS
from trainer.dialogue.config import DialogueTrainConfig, ResolvedConfig, resolve_config
from trainer.dialogue.data import DialogueSplit, load_split
from trainer.dialogue.model import DialogueModel
from trainer.dialogue.run_files import (
    LoopState,
    check_resumable,
    environment_info,
    keep_metrics_until,
    load_last,
    load_model,
    read_metrics,
    save_last,
    save_model,
    write_json,
    write_predictions,
    write_status,
)
from trainer.dialogue.selection import average_window, drop_window_after, improves, keep_in_window
from trainer.dialogue.steps import compiled_or_eager, make_optimizer, predict_probs, score, train_epoch

__all__ = [
    "DialogueTrainConfig",
    "TrainingDivergedError",
    "fit_seed",
    "load_model",
    "load_splits",
    "predict_probs",
    "read_metrics",
    "seed_dirs",
    "train_dialogue",
]


class TrainingDivergedError(ValueError):
    """The training loss or the dev predictions became non-finite; the last good checkpoints are kept."""


def fit_seed(resolved: ResolvedConfig, seed: int, run_dir: Path, splits: dict[str, DialogueSplit]) -> dict:
    """Train (or resume, or skip if finished) one seed in ``run_dir``; returns its final status.

    ``splits`` are on the training device already.
    """
    t = resolved.train
    device = resolved.device
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**resolved.to_dict(), "seed": seed}
    check_resumable(run_dir, config)
    status_path = run_dir / "status.json"
    if status_path.exists() and json.loads(status_path.read_text())["state"] == "done":
        return json.loads(status_path.read_text())
    write_json(run_dir / "config.json", config)
    write_json(
        run_dir / "label_map.json",
        {
            "class_map": resolved.class_map,
            "classes": list(resolved.class_names),
            "excluded_labels": {name: s.excluded for name, s in splits.items()},
            "scored_utterances": {name: s.n_scored for name, s in splits.items()},
        },
    )

    torch.manual_seed(seed)
    model = DialogueModel(resolved.model_config()).to(device)
    optimizer = make_optimizer(model, t.lr, t.weight_decay, device)
    state = LoopState()
    if (run_dir / "last.pt").exists():
        state = load_last(run_dir, model, optimizer, device)
    # epochs finished after the resume point (or before the first last.pt) are trained again
    keep_metrics_until(run_dir, state.epoch)
    drop_window_after(run_dir, state.epoch)
    write_json(run_dir / "environment.json", environment_info(device))
    step_model = compiled_or_eager(model) if t.compile else model

    def report_status(state_name: str, **extra) -> None:
        write_status(
            run_dir,
            state_name,
            epoch=state.epoch,
            epochs=t.epochs,
            seed=seed,
            best_epoch=state.best_epoch,
            best_dev_weighted_f1=state.best_f1,
            best_dev_loss=state.best_loss if math.isfinite(state.best_loss) else None,
            select=t.select,
            **({"average_last": t.average_last} if t.select == "average" else {}),
            **({"head_residual": True} if t.head_residual else {}),
            **extra,
        )

    report_status("training")

    from tqdm.auto import tqdm

    if t.head_residual and state.epoch == 0:  # a fresh start (a resume from last.pt has epoch >= 1)
        score_epoch_zero(run_dir, model, splits["dev"], resolved, state)
    bar = tqdm(total=t.epochs, initial=state.epoch, desc=f"seed {seed}", disable=not t.progress, leave=False)
    last_saved = time.perf_counter()
    saved_epoch = state.epoch  # the epoch last.pt holds
    while state.epoch < t.epochs and state.bad_epochs < t.patience:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + state.epoch)
        train_loss = train_epoch(
            step_model,
            optimizer,
            splits["train"],
            t.batch_size,
            generator,
            device,
            fixed_length=t.compile,
            bucket=t.bucket,
        )
        dev_probs = predict_probs(model, splits["dev"], max(t.batch_size, 64), device)
        if not (math.isfinite(train_loss) and np.isfinite(dev_probs).all()):
            # checked before anything is saved: best.pt and last.pt stay those of the last good epoch
            message = _diverged_message(run_dir, state, saved_epoch, train_loss, t.lr)
            bar.close()
            report_status("failed", reason=message)
            raise TrainingDivergedError(message)
        dev = score(splits["dev"], dev_probs)
        state.epoch += 1
        improved = improves(t.select, dev, state)
        if improved:
            state.best_f1, state.best_loss = dev["weighted_f1"], dev["loss"]
            state.best_epoch, state.bad_epochs = state.epoch, 0
        else:
            state.bad_epochs += 1
        selected = improved and t.select != "average"  # this epoch's model is best.pt
        if selected:
            save_model(run_dir / "best.pt", model, resolved.class_names, state.epoch)
        if t.select == "average":
            keep_in_window(run_dir, model, resolved.class_names, state.epoch, t.average_last or 1)
        append_metrics(run_dir, state.epoch, train_loss, dev, selected, time.perf_counter() - started)
        # last.pt holds model + optimizer (3x the weights): written at most every checkpoint_seconds, so
        # fast GPU epochs are not dominated by disk; a resume replays the few epochs since (deterministic)
        finishing = state.epoch >= t.epochs or state.bad_epochs >= t.patience
        if finishing or time.perf_counter() - last_saved >= t.checkpoint_seconds:
            save_last(run_dir, model, optimizer, state, device)
            last_saved, saved_epoch = time.perf_counter(), state.epoch
        report_status("training")
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}", dev_wF1=f"{dev['weighted_f1']:.4f}")
    bar.close()

    averaged: dict = {}
    if t.select == "average":
        weights, epochs = average_window(run_dir, state.epoch, t.average_last or 1)
        model.load_state_dict(weights)
        save_model(run_dir / "best.pt", model, resolved.class_names, state.epoch, averaged_epochs=epochs)
        averaged = {"averaged_epochs": [epochs[0], epochs[-1]]}
    best, _ = load_model(run_dir / "best.pt", device)
    for name in ("dev", "test"):
        if name in splits:
            probs = predict_probs(best, splits[name], max(t.batch_size, 64), device)
            write_predictions(run_dir / f"predictions_{name}.csv", splits[name], probs, resolved.class_names)
    stopped = "early_stopping" if state.bad_epochs >= t.patience else "max_epochs"
    report_status("done", stopped=stopped, **averaged)
    return json.loads(status_path.read_text())


def score_epoch_zero(
    run_dir: Path, model: DialogueModel, dev_split: DialogueSplit, resolved: ResolvedConfig, state: LoopState
) -> None:
    """``--head-residual``: score the untrained model (the text head itself) on dev as epoch 0.

    Its dev scores start the early-stopping state, so a trained epoch must beat the head to be selected
    (``--select wf1`` / ``loss``: ``best.pt`` is the head until one does, and the selected model is never
    below the head on dev by the rule's own score); with ``average`` the epoch is recorded and sets the dev
    loss to beat, but the mean of the last trained epochs is kept. Deterministic and drawing no random
    numbers, so a killed run that restarts here follows the same path.
    """
    t = resolved.train
    keep_metrics_until(run_dir, -1)  # a fresh start: no line of an earlier try survives
    started = time.perf_counter()
    dev_probs = predict_probs(model, dev_split, max(t.batch_size, 64), resolved.device)
    dev = score(dev_split, dev_probs)
    selected = improves(t.select, dev, state) and t.select != "average"
    state.best_f1, state.best_loss, state.best_epoch = dev["weighted_f1"], dev["loss"], 0
    if selected:
        save_model(run_dir / "best.pt", model, resolved.class_names, 0, text_head_only=True)
    append_metrics(run_dir, 0, None, dev, selected, time.perf_counter() - started)


def append_metrics(
    run_dir: Path, epoch: int, train_loss: float | None, dev: dict, selected: bool, seconds: float
) -> None:
    """One line of ``metrics.jsonl`` (``train_loss`` None for epoch 0, which is not trained)."""
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "dev_loss": dev["loss"],
        "dev_weighted_f1": dev["weighted_f1"],
        "dev_accuracy": dev["accuracy"],
        "best": selected,
        "seconds": round(seconds, 4),
    }
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _diverged_message(run_dir: Path, state: LoopState, saved_epoch: int, train_loss: float, lr: float) -> str:
    what = "training loss" if not math.isfinite(train_loss) else "dev predictions after the epoch"
    kept = [f"best.pt (epoch {state.best_epoch})"] if (run_dir / "best.pt").exists() else []
    kept += [f"last.pt (epoch {saved_epoch})"] if saved_epoch else []
    if kept:
        kept_text = " and ".join(kept) + " are from before it, untouched"
    else:
        kept_text = "no checkpoint is written yet"
    return (
        f"{run_dir}: epoch {state.epoch + 1}: the {what} is not finite (NaN or inf), the weights "
        f"diverged; training stopped, {kept_text}. Train into a new --out with a lower --lr "
        f"(now {lr:g}): the same command would diverge again"
    )


def load_splits(resolved: ResolvedConfig) -> dict[str, DialogueSplit]:
    """train, dev (and test where present) on the training device."""
    names = [s for s in SPLITS if s in resolved.splits]
    return {
        s: load_split(
            resolved.train.features,
            s,
            resolved.class_names,
            resolved.train.modalities,
            resolved.train.head_residual,
        ).to(resolved.device)
        for s in names
    }


def train_dialogue(config: DialogueTrainConfig) -> Path:
    """Train ``config.seeds`` seeds of the dialogue model into ``config.out`` (``m2f train-dialog``).

    Finished seeds are skipped and a killed seed resumes from its last epoch, so running the same
    call again completes an interrupted run.

    Parameters
    ----------
    config : DialogueTrainConfig
        Every setting of the run (frozen); resolved against the features file by :func:`resolve_config`.

    Returns
    -------
    Path
        The run folder ``config.out``: ``config.json`` and one ``seed<k>/`` per seed
        (:func:`seed_dirs`).

    Raises
    ------
    FileNotFoundError, ValueError
        A missing features file or split, a bad option, a resume with other settings.
    TrainingDivergedError
        The loss or the dev predictions became non-finite.
    """
    resolved = resolve_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    splits = load_splits(resolved)
    for name in ("train", "dev"):
        if splits[name].n_scored == 0:
            raise ValueError(
                f"{config.features}: no {name} utterance has a label of the class map "
                f"{list(resolved.class_names)}; pick another --class-map"
            )
    out = Path(config.out)
    check_resumable(out, resolved.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", resolved.to_dict())
    for seed, run_dir in zip(seeds_of(config), seed_dirs(config), strict=True):
        fit_seed(resolved, seed, run_dir, splits)
    return out


def seeds_of(config: DialogueTrainConfig) -> range:
    """The seeds a run trains: ``first_seed``, ``first_seed + 1``, ... (``seeds`` of them)."""
    return range(config.first_seed, config.first_seed + config.seeds)


def seed_dirs(config: DialogueTrainConfig) -> list[Path]:
    """The seed folders :func:`train_dialogue` writes under ``config.out``, in seed order."""
    return [Path(config.out) / f"seed{seed}" for seed in seeds_of(config)]
