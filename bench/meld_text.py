"""Real MELD, text only: the product end to end next to a frozen-MiniLM + logistic-regression baseline.

Stages (each writes its result into ``--out`` and is skipped when that result exists, so a killed run
is resumed by running the same command again):

1. ``baseline``  the shipped all-MiniLM-L6-v2, frozen, over the target utterance alone and over the
   same context input, pooled by first token, by mean and (context) by mean over the target's
   tokens, then a logistic regression fitted on train, its C picked on dev; the variant with the
   best dev weighted F1 is the baseline.
2. ``finetune``  EmoBERTa-style fine-tuning of MiniLM on the context input
   (:func:`pipeline.text.finetune.loop.finetune_text`; train for training, dev for selection),
   or ``--text-model FOLDER`` to reuse one.
3. ``extract``   ``m2f extract --dataset meld --root DIR --modalities text --text-model FOLDER``.
4. ``train``     ``m2f train-dialog --features FILE --out RUN --modalities t --seeds S``.
5. ``report``    ``m2f report RUN``, plus a logistic regression on the fine-tuned embeddings of the
   features file (utterance level, no dialogue model) for reference.

Stages 2-5 run once per fine-tune seed (``--finetune-seeds``, each in ``OUT/ft<seed>/``, each with its
own dialogue model of ``--seeds`` seeds), so the spread covers the fine-tuning, not only the dialogue
model.

The last printed line is one JSON object: ``test_weighted_f1: {mean, std}`` over the fine-tune seeds
(each the mean of its dialogue-model seeds), ``dev_weighted_f1``, the fine-tuned classifiers' own test
figures, the ensemble of every dialogue model (mean probability), the baseline's figures and the wall
times.

Usage::

    python bench/meld_text.py --meld MELD_CSV_DIR [--out cache/bench/meld_text] [--finetune-seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.corpora.base import MELD_CLASSES
from pipeline.metrics import weighted_f1
from pipeline.names import SPLITS
from pipeline.store.atomic import atomic_write_json

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STAGES = ("baseline", "finetune", "extract", "train", "report")
PER_FINETUNE = STAGES[1:]


def log(msg: str) -> None:
    print(f"[meld_text {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_stage(out: Path, stage: str) -> dict | None:
    path = out / f"{stage}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_stage(out: Path, stage: str, result: dict) -> dict:
    atomic_write_json(out / f"{stage}.json", result, indent=1, sort_keys=False, ensure_ascii=True)
    return result


# --- logistic-regression probes --------------------------------------------------------------------


def lr_probe(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], cs: Sequence[float] = (0.1, 1.0, 10.0)
) -> dict:
    """Standardised features + multinomial logistic regression; C chosen by dev weighted F1.

    Parameters
    ----------
    x, y : dict
        ``split -> (N, D)`` features and ``split -> (N,)`` class indices for train, dev, test.

    Returns
    -------
    dict
        ``C``, ``dev_weighted_f1``, ``test_weighted_f1``, ``test_accuracy`` and each C's dev figure.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x["train"])
    xs = {s: scaler.transform(v) for s, v in x.items()}
    best = None
    tried = {}
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=3000).fit(xs["train"], y["train"])
        dev = weighted_f1(y["dev"], clf.predict(xs["dev"]))
        tried[str(c)] = dev
        if best is None or dev > best[0]:
            best = (dev, c, clf)
    dev, c, clf = best
    pred = clf.predict(xs["test"])
    test = weighted_f1(y["test"], pred)
    return {
        "C": c,
        "dev_weighted_f1": dev,
        "test_weighted_f1": test,
        "test_accuracy": float(accuracy_score(y["test"], pred)),
        "dev_by_C": tried,
    }


def labelled_rows(utt_ids: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices and class indices of the rows whose label is one of MELD's 7 classes."""
    index = {c: i for i, c in enumerate(MELD_CLASSES)}
    keep = [i for i, lab in enumerate(labels) if lab in index]
    return np.array(keep, dtype=np.int64), np.array([index[labels[i]] for i in keep], dtype=np.int64)


# --- stages ------------------------------------------------------------------------------------------


def stage_baseline(
    utterances, out: Path, max_length: int, batch_size: int, contexts: Sequence[str] = ("none", "full")
) -> dict:
    """Frozen shipped MiniLM (context / no context x cls / mean pooling) + logistic regression."""
    from pipeline.manifest import group_dialogues
    from pipeline.text.embedder import TextEmbedder

    dialogues = group_dialogues(utterances)
    variants = {}
    timings = {}
    for context in contexts:
        t = time.time()
        emb = TextEmbedder(None, max_length=max_length, batch_size=batch_size, context=context)
        poolings = ("cls", "mean", "target") if context == "full" else ("cls", "mean")
        vectors = emb.embed_poolings(dialogues, poolings)
        timings[f"embed_context_{context}_s"] = round(time.time() - t, 1)
        log(f"baseline: embedded {len(utterances)} utterances, context={context}, in {time.time() - t:.0f}s")
        for pooling, vec in vectors.items():
            x, y = {}, {}
            for split in SPLITS:
                us = [u for u in utterances if u.split == split]
                keep, cls = labelled_rows([u.id for u in us], [u.label or "" for u in us])
                x[split] = np.stack([vec[us[i].id] for i in keep])
                y[split] = cls
            variants[f"context={context},pooling={pooling}"] = lr_probe(x, y)
            log(f"baseline {context}/{pooling}: {variants[f'context={context},pooling={pooling}']}")
    best = max(variants, key=lambda k: variants[k]["dev_weighted_f1"])
    return {
        "model": "shipped all-MiniLM-L6-v2, frozen",
        "max_length": max_length,
        "variants": variants,
        "selected_by_dev": best,
        **{k: variants[best][k] for k in ("dev_weighted_f1", "test_weighted_f1", "test_accuracy")},
        "wall_s": timings,
    }


def stage_finetune(utterances, folder: Path, args, seed: int = 0) -> dict:
    """Fine-tune MiniLM with context (resumable); return its ``m2f_text.json`` figures."""
    from pipeline.text.finetune.loop import finetune_text
    from pipeline.text.finetune.recipe import FinetuneConfig
    from pipeline.text.finetune.state import read_finetune_meta

    if not (folder / "m2f_text.json").exists():
        finetune_text(
            utterances,
            FinetuneConfig(
                out=folder,
                max_length=args.max_length,
                epochs=args.epochs,
                freeze_layers=args.freeze_layers,
                lr=args.lr,
                head_lr_mult=args.head_lr_mult,
                pooling=args.pooling,
                context=args.text_context,
                max_minutes=args.max_minutes,
                threads=args.threads,
                seed=seed,
            ),
        )
    meta = read_finetune_meta(folder)
    return {
        "folder": str(folder),
        "seed": seed,
        "dev_weighted_f1": meta["dev_weighted_f1"],
        "test_weighted_f1_classifier": meta.get("test_weighted_f1"),
        "test_accuracy_classifier": meta.get("test_accuracy"),
        "train_minutes": meta["train_seconds"] / 60,
        "stopped_early": meta["stopped_early"],
        "config": meta["config"],
        "history": meta["history"],
    }


def m2f_command() -> list[str]:
    exe = shutil.which("m2f") or str(Path(sys.executable).parent / "m2f")
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "cli"]


def run_logged(cmd: list[str], log_path: Path) -> str:
    """Run ``cmd``, stream its output into ``log_path``; return its last stdout line; raise on failure."""
    log(f"running {' '.join(cmd)} (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, check=False)
        f.write("\n--- stdout ---\n" + proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}); see {log_path}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def stage_extract(args, text_model: str, out: Path) -> dict:
    cmd = [
        *m2f_command(),
        "extract",
        "--dataset",
        "meld",
        "--root",
        str(args.meld),
        "--modalities",
        "text",
        "--text-model",
        text_model,
        "--cache",
        str(args.cache),
        "--workers",
        str(args.workers),
    ]
    features = run_logged(cmd, out / "extract.log")
    if not Path(features).exists():
        raise SystemExit(
            f"m2f extract did not print a features file as its last line ({features!r}); "
            f"see {out / 'extract.log'}"
        )
    return {"features": features, "command": " ".join(cmd)}


def stage_train(args, features: str, out: Path) -> dict:
    run_dir = out / "run-text"
    cmd = [
        *m2f_command(),
        "train-dialog",
        "--features",
        features,
        "--out",
        str(run_dir),
        "--modalities",
        "t",
        "--seeds",
        str(args.seeds),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.train_epochs:
        cmd += ["--epochs", str(args.train_epochs)]
    if args.patience:
        cmd += ["--patience", str(args.patience)]
    cmd += shlex.split(args.train_args)
    run_logged(cmd, out / "train.log")
    return {"run_dir": str(run_dir), "command": " ".join(cmd)}


def finetuned_lr(features: str) -> dict:
    """Logistic regression on the text embeddings of a features file (utterance level)."""
    from pipeline.store.features import read_split

    x, y = {}, {}
    for split in SPLITS:
        arrays = read_split(features, split)
        labels = [v.decode() if isinstance(v, bytes) else str(v) for v in arrays.label]
        keep, cls = labelled_rows(list(arrays.utt_id), labels)
        x[split] = np.asarray(arrays.text_emb)[keep]
        y[split] = cls
    return lr_probe(x, y)


def stage_report(run_dir: str, features: str, out: Path) -> dict:
    run_logged([*m2f_command(), "report", run_dir], out / "report.log")
    summary = json.loads((Path(run_dir) / "report.json").read_text(encoding="utf-8"))
    test, dev = summary["test"], summary["dev"]
    return {
        "state": summary["state"],
        "seeds": summary["seeds_done"],
        "test_weighted_f1": {"mean": test["weighted_f1"], "std": test["weighted_f1_std"]},
        "test_accuracy": {"mean": test["accuracy"], "std": test["accuracy_std"]},
        "dev_weighted_f1": {"mean": dev["weighted_f1"], "std": dev["weighted_f1_std"]},
        "per_class_test_f1": {c: v["f1"] for c, v in test["per_class"].items()},
        "finetuned_embeddings_lr": finetuned_lr(features),
    }


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--meld", type=Path, required=True, help="Folder with the MELD *_sent_emo.csv files.")
    p.add_argument("--out", type=Path, default=Path("cache/bench/meld_text"), help="Results folder.")
    p.add_argument("--cache", type=Path, default=Path("cache"), help="m2f cache root for extract.")
    p.add_argument("--stages", default=",".join(STAGES), help=f"Comma list of {STAGES}.")
    p.add_argument(
        "--text-model", default=None, help="Reuse a fine-tuned folder instead of the finetune stage's own."
    )
    p.add_argument(
        "--baseline-contexts",
        default="none,full",
        help="Inputs of the frozen baseline: none (utterance alone), full (the context input).",
    )
    p.add_argument(
        "--finetune-seeds",
        default="0,1,2",
        help="Comma list of text fine-tune seeds; each gets its own extraction and dialogue model.",
    )
    p.add_argument("--seeds", type=int, default=1, help="Dialogue-model seeds per fine-tune.")
    p.add_argument(
        "--text-context",
        default="full",
        choices=("full", "past"),
        help="Fine-tuning context: with the next utterance, or past only (causal).",
    )
    p.add_argument(
        "--train-args",
        default="",
        help="More train-dialog options, given with '=' since they start with '--': "
        "--train-args=--causal or --train-args='--positions none'.",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 was 3-4x faster per step than 2 on a shared 2-core CPU).",
    )
    p.add_argument("--max-length", type=int, default=64, help="Context tokens (fine-tuning and baseline).")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--freeze-layers",
        type=int,
        default=2,
        help="Lowest MiniLM layers kept frozen (their outputs computed once).",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr-mult", type=float, default=10.0, help="The new head's rate is lr x this.")
    p.add_argument(
        "--pooling",
        default="target",
        choices=("cls", "mean", "target"),
        help="What the classifier head (and then the embedding) reads.",
    )
    p.add_argument(
        "--train-epochs",
        type=int,
        default=None,
        help="train-dialog --epochs (default: the trainer's); bound it on a slow CPU.",
    )
    p.add_argument(
        "--patience", type=int, default=None, help="train-dialog --patience (default: the trainer's)."
    )
    p.add_argument("--max-minutes", type=float, default=55.0, help="Fine-tuning wall-clock budget.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.corpora.meld import prepare_meld

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    utterances = prepare_meld(args.meld)
    wall = {"prepare_s": round(time.time() - t, 1)}
    results: dict = {"baseline": read_stage(out, "baseline")}
    if results["baseline"] is None and "baseline" in stages:
        t = time.time()
        res = stage_baseline(
            utterances,
            out,
            args.max_length,
            batch_size=64,
            contexts=[c.strip() for c in args.baseline_contexts.split(",")],
        )
        res["stage_wall_s"] = round(time.time() - t, 1)
        results["baseline"] = write_stage(out, "baseline", res)
    ft_seeds = [0] if args.text_model else [int(x) for x in args.finetune_seeds.split(",") if x.strip()]
    runs = []
    for seed in ft_seeds:
        runs.append(run_finetune_seed(args, utterances, out / f"ft{seed}", seed, stages))
    wall["baseline_s"] = (results["baseline"] or {}).get("stage_wall_s")
    for stage in PER_FINETUNE:  # summed over the fine-tune seeds
        wall[f"{stage}_s"] = round(sum(r[stage]["stage_wall_s"] for r in runs if r.get(stage)), 1)
    summary = summarize(results["baseline"], runs, wall)
    print(json.dumps(summary))
    return summary


def run_finetune_seed(args, utterances, out: Path, seed: int, stages: Sequence[str]) -> dict:
    """Stages finetune -> extract -> train -> report for one fine-tune seed, in ``out`` (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.text_model) if args.text_model else out / "minilm-meld-context"
    results: dict = {}
    for stage in PER_FINETUNE:
        done = read_stage(out, stage)
        if done is not None or stage not in stages:
            results[stage] = done
            continue
        t = time.time()
        if stage == "finetune":
            res = stage_finetune(utterances, folder, args, seed)
        elif stage == "extract":
            res = stage_extract(args, str(folder), out)
        elif stage == "train":
            res = stage_train(args, results["extract"]["features"], out)
        else:
            res = stage_report(results["train"]["run_dir"], results["extract"]["features"], out)
        res["stage_wall_s"] = round(time.time() - t, 1)
        results[stage] = write_stage(out, stage, res)
        log(f"fine-tune seed {seed}: stage {stage} done in {res['stage_wall_s']:.0f}s")
    return results


def _mean_std(values: Sequence[float]) -> dict | None:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return None
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None, "n": len(arr)}


def ensemble_of_runs(runs: Sequence[dict]) -> dict | None:
    """Test and dev weighted F1 of the mean probability of every dialogue model of every fine-tune."""
    from trainer.report.summary import ensemble_metrics, seed_dirs

    dirs = [d for r in runs if r.get("train") for d in seed_dirs(r["train"]["run_dir"])]
    out = {split: ensemble_metrics(dirs, split) for split in ("dev", "test")}
    if out["test"] is None:
        return None
    return {"models": len(dirs), **{f"{s}_weighted_f1": m["weighted_f1"] for s, m in out.items() if m}}


def summarize(base: dict | None, runs: Sequence[dict], wall: dict) -> dict:
    """The final JSON line: dialogue-model figures over fine-tune seeds, baseline, fine-tuning, walls."""
    reps = [r["report"] for r in runs if r.get("report")]
    fts = [r["finetune"] for r in runs if r.get("finetune")]
    return {
        "test_weighted_f1": _mean_std([r["test_weighted_f1"]["mean"] for r in reps]),
        "dev_weighted_f1": _mean_std([r["dev_weighted_f1"]["mean"] for r in reps]),
        "test_accuracy": _mean_std([r["test_accuracy"]["mean"] for r in reps]),
        "spread_over": "text fine-tune seeds (each value the mean of its dialogue-model seeds)",
        "finetune_seeds": [f["seed"] for f in fts],
        "dialogue_seeds_per_finetune": [r["seeds"] for r in reps],
        "ensemble": ensemble_of_runs(runs),
        "baseline": None
        if base is None
        else {
            "what": f"{base['model']} + logistic regression ({base['selected_by_dev']}, selected on dev)",
            "dev_weighted_f1": base["dev_weighted_f1"],
            "test_weighted_f1": base["test_weighted_f1"],
            "test_accuracy": base["test_accuracy"],
            "variants": {
                k: {"dev": v["dev_weighted_f1"], "test": v["test_weighted_f1"]}
                for k, v in base["variants"].items()
            },
        },
        "finetune": {
            "dev_weighted_f1": _mean_std([f["dev_weighted_f1"] for f in fts]),
            "test_weighted_f1_classifier": _mean_std([f["test_weighted_f1_classifier"] for f in fts]),
            "train_minutes": _mean_std([f["train_minutes"] for f in fts]),
            "stopped_early": [f["stopped_early"] for f in fts],
        },
        "finetuned_embeddings_lr": [r["finetuned_embeddings_lr"] for r in reps],
        "stages_missing": sorted(
            {s for r in runs for s in PER_FINETUNE if r.get(s) is None}
            | ({"baseline"} if base is None else set())
        ),
        "wall_s": wall,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch threads per process: 1",
    }


if __name__ == "__main__":
    main()
