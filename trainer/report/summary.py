"""Metrics of a run folder, computed with scikit-learn from the saved ``predictions_*.csv`` files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline.metrics import weighted_f1
from trainer.dialogue.selection import selection_text
from trainer.report.paper import paper_reference


# -- computation ---------------------------------------------------------------------------------
def classification_metrics(gold: Sequence[str], pred: Sequence[str], class_names: Sequence[str]) -> dict:
    """Weighted F1, accuracy, macro F1, per-class P/R/F1/support and the confusion matrix.

    Macro F1 and per-class values run over every class of the map (absent classes score 0), so
    numbers are comparable across runs; all fractions in [0, 1].
    """
    labels = list(class_names)
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    return {
        "n": len(gold),
        "weighted_f1": weighted_f1(gold, pred, labels),
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(labels)
        },
        "confusion": confusion_matrix(gold, pred, labels=labels).tolist(),
    }


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def aggregate(per_seed: list[dict], class_names: Sequence[str]) -> dict | None:
    """Mean (and ``*_std``, sample std over seeds; None for one seed) of :func:`classification_metrics`."""
    if not per_seed:
        return None
    out: dict = {"n_seeds": len(per_seed), "n": per_seed[0]["n"]}
    for key in ("weighted_f1", "accuracy", "macro_f1"):
        out[key], out[key + "_std"] = _mean_std([m[key] for m in per_seed])
    out["per_class"] = {}
    for c in class_names:
        entry: dict[str, float | None] = {}
        for key in ("precision", "recall", "f1"):
            entry[key], entry[key + "_std"] = _mean_std([m["per_class"][c][key] for m in per_seed])
        entry["support"] = per_seed[0]["per_class"][c]["support"]
        out["per_class"][c] = entry
    out["confusion"] = np.sum([np.asarray(m["confusion"]) for m in per_seed], axis=0).tolist()
    return out


# -- reading run folders ---------------------------------------------------------------------------
def read_predictions(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """``(gold, predicted, class_names)`` of a ``predictions_*.csv`` (class names from ``p_`` columns)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        names = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        rows = list(reader)
    return [r["gold"] for r in rows], [r["predicted"] for r in rows], names


def read_probabilities(path: str | Path) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """``(utt_ids, gold, probabilities (N, C), class_names)`` of a ``predictions_*.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        names = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        rows = list(reader)
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows], dtype=np.float64)
    return [r["utt_id"] for r in rows], [r["gold"] for r in rows], probs.reshape(len(rows), len(names)), names


def ensemble_metrics(seed_dirs_done: Sequence[Path], split: str) -> dict | None:
    """Metrics of the seed ensemble: the mean of the seeds' probabilities, then its most probable class.

    None with fewer than two seeds, or when their prediction files do not cover the same utterances in
    the same order with the same classes (then no ensemble is meaningful).
    """
    read = [
        read_probabilities(d / f"predictions_{split}.csv")
        for d in seed_dirs_done
        if (d / f"predictions_{split}.csv").exists()
    ]
    if len(read) < 2:
        return None
    ids, gold, _, names = read[0]
    if any(r[0] != ids or r[3] != names for r in read[1:]):
        return None
    mean = np.mean([r[2] for r in read], axis=0)
    if not np.isfinite(mean).all():
        return None
    out = classification_metrics(gold, [names[i] for i in mean.argmax(axis=1)], names)
    out["n_seeds"] = len(read)
    return out


def count_non_finite_probabilities(path: str | Path) -> int:
    """Rows of a ``predictions_*.csv`` with a probability that is NaN, infinite or not a number."""

    def finite(x: str) -> bool:
        try:
            return math.isfinite(float(x))
        except ValueError:
            return False

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c.startswith("p_")]
        return sum(not all(finite(row[c]) for c in columns) for row in reader)


def seed_dirs(run_dir: str | Path) -> list[Path]:
    """The seed folders of a run (``seed<k>/``), or the folder itself if it is one seed's.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` holds no run (no ``status.json`` in it or in ``seed*/``).
    """
    run_dir = Path(run_dir)
    found = sorted(
        (p for p in run_dir.glob("seed*") if (p / "status.json").exists()),
        key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0,
    )
    if found:
        return found
    if (run_dir / "status.json").exists():
        return [run_dir]
    if (run_dir / "config.json").exists():  # started; no seed has written its status yet
        return []
    raise FileNotFoundError(
        f"{run_dir}: not a run folder (no status.json in it or in seed*/); "
        "pass the --out folder of `m2f train-dialog`"
    )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def summarize_seed(seed_dir: Path) -> dict:
    """Status, config and (when finished) dev/test metrics of one seed folder."""
    status = _read_json(seed_dir / "status.json")
    config = _read_json(seed_dir / "config.json")
    out = {
        "dir": str(seed_dir),
        "seed": config.get("seed"),
        "state": status["state"],
        "epoch": status.get("epoch"),
        "epochs": status.get("epochs"),
        "best_epoch": status.get("best_epoch"),
        "best_dev_weighted_f1_during_training": status.get("best_dev_weighted_f1"),
        "select": status.get("select", "wf1"),
        "averaged_epochs": status.get("averaged_epochs"),
        "selected": selection_text(status),
        "stopped": status.get("stopped"),
        "reason": status.get("reason"),
        "warnings": [],
    }
    for split in ("dev", "test"):
        path = seed_dir / f"predictions_{split}.csv"
        if status["state"] == "done" and path.exists():
            gold, pred, names = read_predictions(path)
            out[split] = classification_metrics(gold, pred, names)
            bad = count_non_finite_probabilities(path)
            if bad:
                out["warnings"].append(
                    f"{path}: {bad} row(s) with probabilities that are not finite (NaN or inf); their "
                    "predicted class is meaningless and so are this seed's numbers: check the features "
                    "(m2f train-dialog checks them) and train again"
                )
    return out


def summarize_run(run_dir: str | Path) -> dict:
    """Everything ``report.json`` holds for one run folder (reads its files; writes nothing)."""
    run_dir = Path(run_dir)
    seeds = [summarize_seed(d) for d in seed_dirs(run_dir)]
    config = _read_json(Path(seeds[0]["dir"]) / "config.json" if seeds else run_dir / "config.json")
    names = config["class_names"]
    done = [s for s in seeds if s["state"] == "done"]
    state = "done" if len(done) == len(seeds) and len(seeds) >= config.get("seeds", 1) else "training"
    if any(s["state"] == "failed" for s in seeds):
        state = "failed"
    return {
        "run_dir": str(run_dir),
        "state": state,
        "warnings": [w for s in seeds for w in s["warnings"]],
        "dataset": config["dataset"],
        "class_map": config["class_map"],
        "classes": names,
        "modalities": config["modalities"],
        "fusion": config["fusion"],
        "features": config["features"],
        "select": config.get("select", "wf1"),  # runs from before --select chose by dev weighted F1
        "head_residual": bool(config.get("head_residual", False)),  # runs from before it had none
        "seeds_planned": config.get("seeds", len(seeds)),
        "seeds_done": [s["seed"] for s in done],
        "test": aggregate([s["test"] for s in done if "test" in s], names),
        "dev": aggregate([s["dev"] for s in done if "dev" in s], names),
        # the seed ensemble: the seeds' mean probability per utterance, then its most probable class
        "ensemble": {
            split: ensemble_metrics([Path(s["dir"]) for s in done], split) for split in ("dev", "test")
        },
        "per_seed": seeds,
        "paper": paper_reference(
            config["dataset"], config["class_map"], config["modalities"], config["fusion"]
        ),
        "config": {
            k: config.get(k)
            for k in (
                "lr",
                "weight_decay",
                "dropout",
                "batch_size",
                "epochs",
                "patience",
                "select",
                "average_last",
                "head_residual",
                "heads",
                "layers",
                "fusion_layers",
                "hidden",
                "device",
            )
        },
    }
