"""``m2f report``: metrics from the saved predictions, tables, plots, the paper side by side.

Every number is computed with scikit-learn from ``predictions_{dev,test}.csv`` of each seed (the
files a reader can re-check), never from values cached during training. For several seeds the
headline is the mean with the sample standard deviation (ddof = 1). Into each run directory go
``report.md``, ``report.json``, ``confusion.png`` (test confusion summed over seeds) and
``curves.png`` (train loss and dev weighted F1 per epoch). Several run directories also give one
comparison table (ablations).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline.metrics import weighted_f1
from trainer.fit import read_metrics, write_json

log = logging.getLogger(__name__)

#: Paper Table 2 (test; percent): (dataset, modalities, fusion or None for one modality) -> numbers.
PAPER_RESULTS: dict[tuple[str, str, str | None], dict[str, float]] = {
    ("iemocap", "a", None): {"accuracy": 26.56, "weighted_f1": 21.79},
    ("iemocap", "v", None): {"accuracy": 20.39, "weighted_f1": 13.10},
    ("iemocap", "t", None): {"accuracy": 66.30, "weighted_f1": 66.20},
    ("iemocap", "tav", "concat"): {"accuracy": 67.16, "weighted_f1": 67.12},
    ("iemocap", "tav", "attention"): {"accuracy": 69.69, "weighted_f1": 69.86},
    ("meld", "a", None): {"accuracy": 49.04, "weighted_f1": 39.63},
    ("meld", "v", None): {"accuracy": 45.63, "weighted_f1": 32.44},
    ("meld", "t", None): {"accuracy": 67.24, "weighted_f1": 66.23},
    ("meld", "tav", "concat"): {"accuracy": 67.28, "weighted_f1": 66.81},
    ("meld", "tav", "attention"): {"accuracy": 67.85, "weighted_f1": 66.71},
}
#: Paper Fig. 5 per-class F1 of M2FNet (T+A+V fusion), read off the chart.
PAPER_PER_CLASS_F1: dict[str, dict[str, float]] = {
    "meld": {
        "neutral": 80.06,
        "surprise": 58.66,
        "fear": 3.45,
        "sadness": 47.03,
        "joy": 65.5,
        "disgust": 25.24,
        "anger": 55.25,
    },
    "iemocap": {"hap": 60.0, "sad": 82.11, "neu": 65.88, "ang": 68.21, "exc": 72.6, "fru": 68.31},
}
TOY_NOTE = (
    "The paper's numbers are for the real MELD test set; this run's class map is {cmap!r} on generated "
    "or small data, so comparing the two is meaningless (they are shown only to place the report)."
)


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
        entry = {}
        for key in ("precision", "recall", "f1"):
            entry[key], entry[key + "_std"] = _mean_std([m["per_class"][c][key] for m in per_seed])
        entry["support"] = per_seed[0]["per_class"][c]["support"]
        out["per_class"][c] = entry
    out["confusion"] = np.sum([np.asarray(m["confusion"]) for m in per_seed], axis=0).tolist()
    return out


def paper_reference(dataset: str, class_map: str, modalities: str, fusion: str) -> dict:
    """The paper's test numbers for the same dataset and input, or a note saying why there are none."""
    if "sample" in (dataset, class_map):
        # the sample is MELD-shaped: show MELD's numbers beside it, saying they are not comparable
        meld = paper_reference("meld", "meld", modalities, fusion)
        return {**meld, "note": TOY_NOTE.format(cmap=class_map)}
    if class_map not in ("meld", "iemocap") or dataset not in ("meld", "iemocap"):
        return {"note": TOY_NOTE.format(cmap=class_map)}
    key = (dataset, modalities, None if len(modalities) == 1 else fusion)
    if key not in PAPER_RESULTS:
        return {"note": f"not reported by the paper ({dataset}, {_input_name(modalities, fusion)})"}
    ref = dict(PAPER_RESULTS[key])
    if key[1:] == ("tav", "attention"):
        ref["per_class_f1"] = PAPER_PER_CLASS_F1[dataset]
    return ref


# -- reading run folders ---------------------------------------------------------------------------
def read_predictions(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """``(gold, predicted, class_names)`` of a ``predictions_*.csv`` (class names from ``p_`` columns)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        names = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        rows = list(reader)
    return [r["gold"] for r in rows], [r["predicted"] for r in rows], names


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
                    "(m2f train-dialog checks them) and train again")
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
        "seeds_planned": config.get("seeds", len(seeds)),
        "seeds_done": [s["seed"] for s in done],
        "test": aggregate([s["test"] for s in done if "test" in s], names),
        "dev": aggregate([s["dev"] for s in done if "dev" in s], names),
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
                "heads",
                "layers",
                "fusion_layers",
                "hidden",
                "device",
            )
        },
    }


# -- rendering ---------------------------------------------------------------------------------------
def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _status_lines(summary: dict) -> list[str]:
    lines = []
    for s in summary["per_seed"]:
        if s["state"] == "failed":
            lines.append(f"- seed {s['seed']}: **FAILED**: {s['reason']}")
        elif s["state"] != "done":
            best = s["best_dev_weighted_f1_during_training"]
            lines.append(
                f"- seed {s['seed']}: **STILL TRAINING** (epoch {s['epoch']}/{s['epochs']}, best dev "
                f"wF1 so far {_pct(best if best is not None and best >= 0 else None)} at epoch "
                f"{s['best_epoch']}); its test numbers are not in this report"
            )
        else:
            lines.append(
                f"- seed {s['seed']}: done after {s['epoch']} epochs ({s['stopped']}), best dev epoch "
                f"{s['best_epoch']}"
            )
    missing = summary["seeds_planned"] - len(summary["per_seed"])
    if missing > 0:
        lines.append(f"- {missing} more seed(s) planned, not started yet")
    return lines


def render_markdown(summary: dict) -> str:
    """``report.md`` of one run."""
    test, dev, paper = summary["test"], summary["dev"], summary["paper"]
    n = len(summary["seeds_done"])
    lines = [
        f"# m2f report: {summary['run_dir']}",
        "",
        f"- dataset **{summary['dataset']}** "
        f"(class map {summary['class_map']}: {', '.join(summary['classes'])})",
        f"- modalities **{summary['modalities']}**, fusion **{summary['fusion']}**",
        f"- state: **{summary['state']}**; seeds finished {n} of {summary['seeds_planned']}"
        + (" (mean ± sample std over seeds)" if n > 1 else ""),
        f"- epoch selected on dev weighted F1 (never test); features `{summary['features']}`",
        "",
    ]
    lines += [f"**WARNING**: {w}" for w in summary["warnings"]] + ([""] if summary["warnings"] else [])
    lines += _status_lines(summary) + [""]
    if test is None:
        lines += ["No finished seed with test predictions yet.", ""]
    else:
        lines += ["## Headline (test)", "", "| metric | this run | paper |", "|---|---|---|"]
        lines.append(
            f"| **weighted F1** | **{_pct(test['weighted_f1'], test['weighted_f1_std'])}** | "
            f"{paper.get('weighted_f1', '-')} |"
        )
        lines.append(
            f"| accuracy | {_pct(test['accuracy'], test['accuracy_std'])} | {paper.get('accuracy', '-')} |"
        )
        lines.append(f"| macro F1 | {_pct(test['macro_f1'], test['macro_f1_std'])} | - |")
        if dev is not None:
            lines.append(f"| dev weighted F1 | {_pct(dev['weighted_f1'], dev['weighted_f1_std'])} | - |")
        lines += [""] + ([f"Note: {paper['note']}", ""] if "note" in paper else [])
        lines += [
            "## Per class (test)",
            "",
            "| class | precision | recall | F1 | paper F1 | support |",
            "|---|---|---|---|---|---|",
        ]
        paper_f1 = paper.get("per_class_f1", {})
        for c, m in test["per_class"].items():
            lines.append(
                f"| {c} | {_pct(m['precision'], m['precision_std'])} | {_pct(m['recall'], m['recall_std'])} "
                f"| {_pct(m['f1'], m['f1_std'])} | {paper_f1.get(c, '-')} | {m['support']} |"
            )
        lines += ["", "![confusion](confusion.png)", "", "![curves](curves.png)", ""]
    cfg = summary["config"]
    lines += ["## Options", "", ", ".join(f"{k} {v}" for k, v in cfg.items()), ""]
    return "\n".join(lines)


def comparison_table(summaries: Sequence[dict]) -> str:
    """One Markdown table comparing runs (ablations), mean ± std over seeds, paper alongside."""
    lines = [
        "| run | dataset | modalities | fusion | seeds | test wF1 | test acc | macro F1 | dev wF1 | "
        "paper acc / wF1 | state |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        t, d, p = s["test"] or {}, s["dev"] or {}, s["paper"]
        paper = f"{p['accuracy']} / {p['weighted_f1']}" if "accuracy" in p else "-"
        cells = [
            s["run_dir"],
            s["dataset"],
            s["modalities"],
            s["fusion"],
            str(len(s["seeds_done"])),
            _pct(t.get("weighted_f1"), t.get("weighted_f1_std")),
            _pct(t.get("accuracy"), t.get("accuracy_std")),
            _pct(t.get("macro_f1"), t.get("macro_f1_std")),
            _pct(d.get("weighted_f1"), d.get("weighted_f1_std")),
            paper,
            s["state"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Table 2's rows in the paper's order, (modalities, fusion or None), then the subsets it does not report.
TABLE2_ROWS: tuple[tuple[str, str | None], ...] = (
    ("a", None),
    ("v", None),
    ("t", None),
    ("tav", "concat"),
    ("tav", "attention"),
    ("ta", "attention"),
    ("tv", "attention"),
    ("av", "attention"),
    ("ta", "concat"),
    ("tv", "concat"),
    ("av", "concat"),
)
_LETTER_NAMES = {"t": "T", "a": "A", "v": "V"}


def _input_name(modalities: str, fusion: str | None) -> str:
    """Table 2's wording: ``audio only``, ``T+A+V concatenated``, ``T+A attention fusion``."""
    if len(modalities) == 1:
        return {"t": "text", "a": "audio", "v": "visual"}[modalities] + " only"
    letters = "+".join(_LETTER_NAMES[m] for m in modalities)
    return f"{letters} " + ("concatenated" if fusion == "concat" else "attention fusion")


def table2(summaries: Sequence[dict]) -> str:
    """The paper's Table 2 beside m2f's runs: one row per input of every dataset among ``summaries``.

    Rows: the paper's (audio, visual, text only, T+A+V concatenated, M2FNet T+A+V fusion), then every
    pair of modalities. Cells: m2f's test accuracy / weighted F1 (mean ± std over seeds; a run of
    several is the latest given), "not run" where no summary has that input, and the paper's numbers or
    "not reported by the paper" (the paper gives no T+A, T+V or V+A figures).
    """
    by_key: dict[tuple[str, str, str | None], dict] = {}
    for s in summaries:
        fusion = None if len(s["modalities"]) == 1 else s["fusion"]
        by_key[(s["dataset"], s["modalities"], fusion)] = s
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries))
    lines = ["| dataset | input | m2f test acc | m2f test wF1 | seeds | paper acc / wF1 | run |",
             "|---|---|---|---|---|---|---|"]
    for ds in datasets:
        for mods, fusion in TABLE2_ROWS:
            run = by_key.get((ds, mods, fusion))
            paper = PAPER_RESULTS.get((ds, mods, fusion))
            if run is None and paper is None:
                continue
            if ds not in ("meld", "iemocap"):
                paper_cell = "- (not a paper corpus)"
            elif paper is None:
                paper_cell = "not reported by the paper"
            else:
                paper_cell = f"{paper['accuracy']} / {paper['weighted_f1']}"
            if run is None:
                cells = ["not run", "not run", "0", paper_cell, "-"]
            else:
                t = run["test"] or {}
                cells = [_pct(t.get("accuracy"), t.get("accuracy_std")),
                         _pct(t.get("weighted_f1"), t.get("weighted_f1_std")),
                         str(len(run["seeds_done"])), paper_cell, run["run_dir"]]
            lines.append("| " + " | ".join([ds, _input_name(mods, fusion), *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> None:
    """Confusion matrix PNG: colour = row-normalised recall, text = counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=float)
    norm = m / np.clip(m.sum(axis=1, keepdims=True), 1, None)
    size = 1.0 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of gold row")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(per_seed_metrics: dict[str, list[dict]], path: Path) -> None:
    """Training curves PNG: train/dev loss and dev weighted F1 per epoch, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    for seed, rows in per_seed_metrics.items():
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        ax_loss.plot(ep, [r["train_loss"] for r in rows], label=f"{seed} train")
        ax_loss.plot(ep, [r["dev_loss"] for r in rows], "--", label=f"{seed} dev")
        (line,) = ax_f1.plot(ep, [100 * r["dev_weighted_f1"] for r in rows], label=seed)
        best = max(rows, key=lambda r: r["dev_weighted_f1"])
        ax_f1.plot([best["epoch"]], [100 * best["dev_weighted_f1"]], "o", color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_f1.set(xlabel="epoch", ylabel="dev weighted F1 (%)", title="dev weighted F1 (dot = selected epoch)")
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str | Path) -> dict:
    """Write ``report.md``, ``report.json``, ``confusion.png``, ``curves.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    summary = summarize_run(run_dir)
    for warning in summary["warnings"]:
        log.warning("%s", warning)
    write_json(run_dir / "report.json", summary)
    (run_dir / "report.md").write_text(render_markdown(summary), encoding="utf-8")
    if summary["test"] is not None:
        plot_confusion(
            summary["test"]["confusion"],
            summary["classes"],
            run_dir / "confusion.png",
            f"test, {summary['modalities']} {summary['fusion']}, {len(summary['seeds_done'])} seed(s)",
        )
    plot_curves(
        {f"seed{s['seed']}": read_metrics(s["dir"]) for s in summary["per_seed"]}, run_dir / "curves.png"
    )
    return summary


def report(run_dirs: Sequence[str | Path], compare_out: str | Path | None = None) -> str:
    """``m2f report``: a report in each run folder; returns the comparison table and the Table 2 view
    (:func:`table2`), also written to ``compare_out`` when given."""
    summaries = [write_report(d) for d in run_dirs]
    table = comparison_table(summaries) + "\n## Table 2 (test): m2f beside the paper\n\n" + table2(summaries)
    if compare_out is not None:
        Path(compare_out).write_text("# m2f comparison\n\n" + table, encoding="utf-8")
    return table
