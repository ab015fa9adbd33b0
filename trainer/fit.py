"""Training the dialog model: device, AMP, early stopping on dev, checkpoints, resume, seeds.

Layout of a run directory (``m2f train-dialog --out RUN_DIR --seeds N``)::

    RUN_DIR/config.json              the resolved configuration (all seeds)
    RUN_DIR/seed<k>/config.json      the same plus this seed
    RUN_DIR/seed<k>/environment.json versions, device, threads
    RUN_DIR/seed<k>/label_map.json   class names in index order, excluded raw labels per split
    RUN_DIR/seed<k>/status.json      {"state": "training" | "done", "epoch": ..., ...}
    RUN_DIR/seed<k>/metrics.jsonl    one line per finished epoch
    RUN_DIR/seed<k>/last.pt          model + optimizer + RNG + early-stopping state (resume point)
    RUN_DIR/seed<k>/best.pt          the model of the best dev weighted-F1 epoch
    RUN_DIR/seed<k>/predictions_{dev,test}.csv   utt_id, gold, predicted, p_<class>...

The epoch is selected on dev weighted F1, never on test. A killed run continues from ``last.pt``
when started again with the same options; because the batch order of epoch e is a function of
(seed, e) and the dropout RNG state is checkpointed, a resumed run follows the same path as an
uninterrupted one. Every file is written through a temporary name and an atomic rename.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score

from pipeline.atomic import atomic_torch_save, atomic_write_text, commit_tmp, tmp_path
from pipeline.metrics import weighted_f1
from pipeline.names import SPLITS
from trainer.data import (
    CLASS_MAP_CHOICES,
    IGNORE,
    DialogSplit,
    batch_order,
    default_layers,
    inspect_features,
    load_split,
    normalize_modalities,
    preset_for_dataset,
    resolve_class_names,
)
from trainer.model import DialogModel, DialogModelConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class TrainingDivergedError(ValueError):
    """The training loss or the dev predictions became non-finite; the last good checkpoints are kept."""
#: Options that may differ between a killed run and its resumption.
RESUME_FREE_KEYS = ("out", "seeds", "device", "threads", "progress", "compile", "epochs", "patience",
                    "checkpoint_seconds")


@dataclass(frozen=True)
class DialogTrainConfig:
    """Options of ``m2f train-dialog`` (see its ``--help``). Immutable; resolved by :func:`resolve_config`."""

    features: str
    out: str
    modalities: str = "tav"
    fusion: str = "attention"
    seeds: int = 1
    first_seed: int = 0
    epochs: int = 100
    patience: int = 15
    device: str = "auto"
    lr: float = 5e-4
    weight_decay: float = 5e-4
    dropout: float = 0.4
    batch_size: int = 16
    heads: int = 4
    layers: int | None = None
    fusion_layers: int = 5
    hidden: int = 256
    ff_mult: int = 2
    class_map: str | None = None
    compile: bool = False
    threads: int | None = None
    progress: bool = True
    bucket: int = 50
    checkpoint_seconds: float = 60.0


@dataclass(frozen=True)
class ResolvedConfig:
    """A :class:`DialogTrainConfig` with everything the file decides filled in."""

    train: DialogTrainConfig
    dataset: str
    class_map: str
    class_names: tuple[str, ...]
    layers: int
    dims: dict[str, int]
    splits: tuple[str, ...]
    device: str

    def model_config(self) -> DialogModelConfig:
        t = self.train
        return DialogModelConfig(
            dims=dict(self.dims),
            n_classes=len(self.class_names),
            modalities=t.modalities,
            fusion=t.fusion,
            layers=dict.fromkeys(t.modalities, self.layers),
            fusion_layers=t.fusion_layers,
            heads=t.heads,
            dropout=t.dropout,
            hidden=t.hidden,
            ff_mult=t.ff_mult,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self.train)
        d.update(
            dataset=self.dataset,
            class_map=self.class_map,
            class_names=list(self.class_names),
            layers=self.layers,
            dims=dict(self.dims),
            splits=list(self.splits),
            device=self.device,
            model=self.model_config().to_dict(),
        )
        return d


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: choose cpu, cuda or auto")
    return device


def resolve_config(config: DialogTrainConfig) -> ResolvedConfig:
    """Fill in what the features file decides: dataset preset, class names, N, widths, device.

    Raises
    ------
    FileNotFoundError, ValueError
        On a missing file, missing splits, a bad option; messages say what to do.
    """
    config = dataclasses.replace(config, modalities=normalize_modalities(config.modalities))
    if config.seeds < 1 or config.epochs < 1 or config.batch_size < 1:
        raise ValueError("--seeds, --epochs and --batch-size must be at least 1")
    info = inspect_features(config.features)
    preset = config.class_map or preset_for_dataset(info.dataset)
    if preset not in CLASS_MAP_CHOICES:
        raise ValueError(f"--class-map {preset!r}: choose one of {CLASS_MAP_CHOICES}")
    train_labels = _train_labels(info.path) if preset == "custom" else []
    names = resolve_class_names(preset, train_labels)
    resolved = ResolvedConfig(
        train=config,
        dataset=info.dataset,
        class_map=preset,
        class_names=tuple(names),
        layers=config.layers if config.layers is not None else default_layers(preset),
        dims=info.dims,
        splits=info.splits,
        device=resolve_device(config.device),
    )
    resolved.model_config().validate()
    return resolved


def _train_labels(path: str) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return list(f["train"]["label"].asstr()[()])


# -- small I/O helpers ---------------------------------------------------------------------------
def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def environment_info(device: str) -> dict:
    """Versions and hardware, for ``environment.json``."""
    import h5py
    import sklearn

    from pipeline import __version__

    info = {
        "m2f": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "h5py": h5py.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch lines of ``metrics.jsonl`` (empty if absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _keep_metrics_until(run_dir: Path, epoch: int) -> None:
    """Drop metric lines written after the checkpoint being resumed from."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= epoch]
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def write_status(run_dir: Path, state: str, **fields) -> None:
    """``status.json``: what ``m2f report`` shows for a run that is still training."""
    write_json(
        run_dir / "status.json", {"state": state, "updated_utc": datetime.now(UTC).isoformat(), **fields}
    )


def write_predictions(
    path: Path, split: DialogSplit, probs: np.ndarray, class_names: tuple[str, ...]
) -> None:
    """``utt_id, gold, predicted, p_<class>...`` for every scored utterance, file row order."""
    labels = split.labels.reshape(-1).cpu().numpy()[split.flat_index]
    keep = labels != IGNORE
    pred = probs.argmax(axis=1)
    tmp = tmp_path(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["utt_id", "gold", "predicted"] + [f"p_{c}" for c in class_names])
        for i in np.flatnonzero(keep):
            w.writerow(
                [split.utt_id[i], class_names[labels[i]], class_names[pred[i]]]
                + [f"{p:.6g}" for p in probs[i]]
            )
    commit_tmp(tmp, path)


# -- computation -----------------------------------------------------------------------------------
def autocast_for(device: str) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on the CPU (fp32)."""
    return (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    split: DialogSplit,
    batch_size: int,
    generator: torch.Generator,
    device: str,
    fixed_length: bool = False,
    max_batches: int | None = None,
    bucket: int = 0,
) -> float:
    """One pass over ``split`` in shuffled dialog batches; returns the mean loss per scored utterance.

    The loss is summed on the device and read once at the end (no per-step host sync).
    ``bucket`` groups dialogs of similar length into a batch (see :func:`batch_order`; 0 = off);
    ``fixed_length`` keeps every batch at the split's full length (static shapes for
    ``torch.compile``); ``max_batches`` stops early (benchmarks).
    """
    model.train()
    total = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    lengths = split.lengths if bucket else None
    batches = batch_order(split.n_dialogs, batch_size, generator, lengths, bucket)[:max_batches]
    on_device = torch.cat(batches).to(device).split([len(b) for b in batches])  # one transfer per epoch
    for index, index_dev in zip(batches, on_device, strict=True):
        length = None if fixed_length else int(split.lengths[index.numpy()].max())
        batch = split.batch(index_dev, length)
        with autocast_for(device):
            logits = model(batch["features"], batch["present"], batch["mask"])
        labels = batch["labels"]
        loss_sum = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        n = (labels != IGNORE).sum()
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / n.clamp(min=1)).backward()
        optimizer.step()
        total += loss_sum.detach()
        count += n
    return float(total / count.clamp(min=1))


@torch.no_grad()
def predict_probs(model: torch.nn.Module, split: DialogSplit, batch_size: int, device: str) -> np.ndarray:
    """Class probabilities ``(n_rows, n_classes)`` in file row order (padding removed)."""
    model.eval()
    out = None
    for index in batch_order(split.n_dialogs, batch_size, None, split.lengths):  # similar lengths together
        length = int(split.lengths[index.numpy()].max())
        on_device = index.to(device)
        batch = split.batch(on_device, length)
        with autocast_for(device):
            logits = model(batch["features"], batch["present"], batch["mask"])
        if out is None:
            out = torch.zeros(split.n_dialogs, split.max_len, logits.shape[-1], device=device)
        out[on_device, :length] = torch.softmax(logits.float(), dim=-1)
    return out.reshape(-1, out.shape[-1]).cpu().numpy()[split.flat_index]


def score(split: DialogSplit, probs: np.ndarray) -> dict[str, float]:
    """Weighted F1, accuracy and cross-entropy over the scored utterances of ``split``."""
    labels = split.labels.reshape(-1).cpu().numpy()[split.flat_index]
    keep = labels != IGNORE
    gold, p = labels[keep], probs[keep]
    pred = p.argmax(axis=1)
    loss = float(-np.log(np.clip(p[np.arange(len(gold)), gold], 1e-12, None)).mean()) if len(gold) else 0.0
    return {
        "weighted_f1": weighted_f1(gold, pred),
        "accuracy": float(accuracy_score(gold, pred)),
        "loss": loss,
    }


# -- one seed --------------------------------------------------------------------------------------
@dataclass
class _LoopState:
    epoch: int = 0  # epochs finished
    best_f1: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0


def _check_resumable(run_dir: Path, config: dict) -> None:
    path = run_dir / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    diff = sorted(
        k for k in set(old) | set(config) if k not in RESUME_FREE_KEYS and old.get(k) != config.get(k)
    )
    if diff:
        raise ValueError(
            f"{run_dir} holds a run with different options ({', '.join(diff)}); "
            "use another --out, or delete that folder to start over"
        )


def _load_last(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: str
) -> _LoopState:
    ckpt = torch.load(run_dir / "last.pt", map_location=device, weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{run_dir / 'last.pt'}: checkpoint format {ckpt.get('format')!r} is not "
            f"{CHECKPOINT_FORMAT}; delete the run folder to start over"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng_cpu"].cpu())
    if device == "cuda" and "rng_cuda" in ckpt:
        torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
    return _LoopState(**ckpt["loop"])


def _save_last(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: _LoopState, device: str
) -> None:
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "loop": dataclasses.asdict(state),
    }
    if device == "cuda":
        ckpt["rng_cuda"] = torch.cuda.get_rng_state()
    atomic_torch_save(ckpt, run_dir / "last.pt")


def save_model(path: Path, model: DialogModel, class_names: tuple[str, ...], epoch: int) -> None:
    """Save weights + model config + class names (a ``weights_only`` checkpoint)."""
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "class_names": list(class_names),
            "epoch": epoch,
        },
        path,
    )


def load_model(path: str | Path, device: str = "cpu") -> tuple[DialogModel, list[str]]:
    """Rebuild a :class:`DialogModel` from ``best.pt`` (loaded with ``weights_only=True``)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = DialogModel(DialogModelConfig.from_dict(ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    return model, list(ckpt["class_names"])


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, device: str
) -> torch.optim.Optimizer:
    """AdamW (the paper's optimiser); the fused CUDA kernel on a GPU."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=device == "cuda")


def compile_missing() -> str | None:
    """What ``torch.compile`` (inductor) lacks here to build its kernels: a C compiler or Python headers."""
    import shutil
    import sysconfig

    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        return "no C compiler (cc/gcc/clang) on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return f"no Python headers ({sysconfig.get_paths()['include']}/Python.h)"
    return None


def compiled_or_eager(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``, or ``model`` itself with a warning when compiling cannot work here."""
    missing = compile_missing()
    if missing:
        logger.warning("--compile: %s; training eagerly instead", missing)
        return model
    return torch.compile(model)


def fit_seed(resolved: ResolvedConfig, seed: int, run_dir: Path, splits: dict[str, DialogSplit]) -> dict:
    """Train (or resume, or skip if finished) one seed in ``run_dir``; returns its final status.

    ``splits`` are on the training device already.
    """
    t = resolved.train
    device = resolved.device
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**resolved.to_dict(), "seed": seed}
    _check_resumable(run_dir, config)
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
    model = DialogModel(resolved.model_config()).to(device)
    optimizer = make_optimizer(model, t.lr, t.weight_decay, device)
    state = _LoopState()
    if (run_dir / "last.pt").exists():
        state = _load_last(run_dir, model, optimizer, device)
        _keep_metrics_until(run_dir, state.epoch)
    write_json(run_dir / "environment.json", environment_info(device))
    step_model = compiled_or_eager(model) if t.compile else model

    def report_status(state_name: str, **extra) -> None:
        write_status(run_dir, state_name, epoch=state.epoch, epochs=t.epochs, seed=seed,
                     best_epoch=state.best_epoch, best_dev_weighted_f1=state.best_f1, **extra)

    report_status("training")

    from tqdm.auto import tqdm

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
        improved = dev["weighted_f1"] > state.best_f1
        if improved:
            state.best_f1, state.best_epoch, state.bad_epochs = dev["weighted_f1"], state.epoch, 0
            save_model(run_dir / "best.pt", model, resolved.class_names, state.epoch)
        else:
            state.bad_epochs += 1
        row = {
            "epoch": state.epoch,
            "train_loss": train_loss,
            "dev_loss": dev["loss"],
            "dev_weighted_f1": dev["weighted_f1"],
            "dev_accuracy": dev["accuracy"],
            "best": improved,
            "seconds": round(time.perf_counter() - started, 4),
        }
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        # last.pt holds model + optimizer (3x the weights): written at most every checkpoint_seconds, so
        # fast GPU epochs are not dominated by disk; a resume replays the few epochs since (deterministic)
        finishing = state.epoch >= t.epochs or state.bad_epochs >= t.patience
        if finishing or time.perf_counter() - last_saved >= t.checkpoint_seconds:
            _save_last(run_dir, model, optimizer, state, device)
            last_saved, saved_epoch = time.perf_counter(), state.epoch
        report_status("training")
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}", dev_wF1=f"{dev['weighted_f1']:.4f}")
    bar.close()

    best, _ = load_model(run_dir / "best.pt", device)
    for name in ("dev", "test"):
        if name in splits:
            probs = predict_probs(best, splits[name], max(t.batch_size, 64), device)
            write_predictions(run_dir / f"predictions_{name}.csv", splits[name], probs, resolved.class_names)
    stopped = "early_stopping" if state.bad_epochs >= t.patience else "max_epochs"
    report_status("done", stopped=stopped)
    return json.loads(status_path.read_text())


def _diverged_message(run_dir: Path, state: _LoopState, saved_epoch: int, train_loss: float,
                      lr: float) -> str:
    what = "training loss" if not math.isfinite(train_loss) else "dev predictions after the epoch"
    kept = [f"best.pt (epoch {state.best_epoch})"] if state.best_epoch else []
    kept += [f"last.pt (epoch {saved_epoch})"] if saved_epoch else []
    if kept:
        kept_text = " and ".join(kept) + " are from before it, untouched"
    else:
        kept_text = "no checkpoint is written yet"
    return (f"{run_dir}: epoch {state.epoch + 1}: the {what} is not finite (NaN or inf), the weights "
            f"diverged; training stopped, {kept_text}. Train into a new --out with a lower --lr "
            f"(now {lr:g}): the same command would diverge again")


def load_splits(resolved: ResolvedConfig) -> dict[str, DialogSplit]:
    """train, dev (and test where present) on the training device."""
    names = [s for s in SPLITS if s in resolved.splits]
    return {
        s: load_split(resolved.train.features, s, resolved.class_names, resolved.train.modalities).to(
            resolved.device
        )
        for s in names
    }


def train_dialog(config: DialogTrainConfig) -> list[Path]:
    """``m2f train-dialog``: train ``config.seeds`` seeds into ``<out>/seed<k>/``; returns their folders.

    Finished seeds are skipped and a killed seed resumes from its last epoch, so running the same
    command again completes an interrupted run.
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
    _check_resumable(out, resolved.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", resolved.to_dict())
    dirs = []
    for k in range(config.seeds):
        seed = config.first_seed + k
        run_dir = out / f"seed{seed}"
        fit_seed(resolved, seed, run_dir, splits)
        dirs.append(run_dir)
    return dirs
