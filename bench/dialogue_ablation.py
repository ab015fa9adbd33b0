"""Ablation of the dialogue model's context options (order, speakers, causality) on a features.h5, as JSON.

Settings (``m2f train-dialog`` options; each with and without ``--causal``):

====================  ==============================================================
none                  ``--positions none --speakers none`` (a dialogue is a bag)
position              ``--positions relative --speakers none``
position+speaker      ``--positions relative --speakers same-other``
====================  ==============================================================

Per setting and seed, one ``train_dialogue`` run (the model selected on dev by ``--select``, by default
the epoch of the best dev weighted F1); per setting the dev and test weighted F1 as mean ± sample std
over the seeds, and the per-seed figures. Choose defaults by the dev columns only.

``--selects wf1,loss,average`` repeats every setting under each model-selection rule (issue 19): the
rows then also give the selected model's dev loss. The training path of a seed is the same under every
rule when nothing stops early (the demo's default), so the rules differ only in the model they keep.
Dev is not a neutral judge between rules: ``wf1`` keeps the epoch of the highest dev weighted F1 and
``loss`` the epoch of the lowest dev loss, so each wins on its own dev figure by construction.

``--holdout-dev`` compares the rules without test and without letting dev grade its own choice: the dev
dialogues are cut into two seeded halves (:func:`dev_halves`), every run selects on one half and is scored
on the other (both ways round); the JSON's ``dev`` is then the selecting half's figure and ``held_out_dev``
the other half's, both the mean of the two ways round. Test is not read.

Usage::

    python bench/dialogue_ablation.py FEATURES_H5 [--modalities tav] [--seeds 3] [--jobs 2]
    python bench/dialogue_ablation.py --demo DIR [...]   # build the demo's generated fusion corpus and
                                                       # its features.h5 in DIR first (m2f demo steps 1-2)
    python bench/dialogue_ablation.py --demo DIR --settings position+speaker --causal off \
        --selects wf1,loss,average                     # the selection rules compared (issue 19)
    python bench/dialogue_ablation.py FEATURES_H5 --modalities t --settings position+speaker \
        --causal off --selects wf1,loss,average --holdout-dev   # ... on held-out halves of dev

With ``--demo`` the training options default to the demo's (25 epochs, no early stop, batch 8); on
another file to ``m2f train-dialog``'s. Each run uses one torch thread; ``--jobs`` runs go in parallel.
Per-run lines go to stderr; the last line on stdout is one JSON object. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS: dict[str, dict] = {
    "none": {"positions": "none", "speakers": "none"},
    "position": {"positions": "relative", "speakers": "none"},
    "position+speaker": {"positions": "relative", "speakers": "same-other"},
}


def dev_halves(features: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two copies of ``features`` whose dev and test splits are the two halves of its dev dialogues.

    The dev dialogues (in file order) are cut in two by a seeded permutation; ``half0.h5`` has dev := the
    first half and test := the second, ``half1.h5`` the other way round. Train is copied as it is; the
    original test split is not copied. Rows keep their order, so each dialogue stays one block.
    """
    import h5py
    import numpy as np

    from pipeline.store.features import read_split

    folder.mkdir(parents=True, exist_ok=True)
    dialogue = list(read_split(features, "dev").dialogue_id)
    ids = list(dict.fromkeys(dialogue))
    if len(ids) < 2:
        raise SystemExit(f"{features}: dev has {len(ids)} dialogue(s); --holdout-dev needs at least 2")
    perm = np.random.default_rng(seed).permutation(len(ids))
    first = {ids[i] for i in perm[: len(ids) // 2]}
    halves = (
        np.array([i for i, d in enumerate(dialogue) if d in first]),
        np.array([i for i, d in enumerate(dialogue) if d not in first]),
    )
    paths = (folder / "half0.h5", folder / "half1.h5")
    for path, (select_rows, held_rows) in zip(paths, (halves, halves[::-1]), strict=True):
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(features, tmp)
        with h5py.File(tmp, "r+") as f:
            dev = {k: (v[()], dict(v.attrs), v.dtype) for k, v in f["dev"].items()}
            group_attrs = dict(f["dev"].attrs)
            del f["dev"]
            if "test" in f:
                del f["test"]
            for split, rows in (("dev", select_rows), ("test", held_rows)):
                group = f.create_group(split)
                group.attrs.update(group_attrs)
                for name, (data, attrs, dtype) in dev.items():
                    group.create_dataset(name, data=data[rows], dtype=dtype).attrs.update(attrs)
        tmp.replace(path)
    return paths


def run_one(
    features: str, out: str, setting: str, causal: bool, seed: int, options: dict, select: str = "wf1"
) -> dict:
    """Train one seed of one setting under one ``--select`` rule; its dev/test weighted F1, the selected
    model's dev loss, and the selected epoch (or the averaged ones)."""
    import warnings

    from trainer.dialogue.fit import DialogueTrainConfig, seed_dirs, train_dialogue
    from trainer.report.summary import summarize_seed

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    config = DialogueTrainConfig(
        features=features,
        out=out,
        seeds=1,
        first_seed=seed,
        threads=1,
        progress=False,
        causal=causal,
        select=select,
        **SETTINGS[setting],
        **options,
    )
    train_dialogue(config)
    (seed_dir,) = seed_dirs(config)
    summary = summarize_seed(seed_dir)
    return {
        "setting": setting,
        "causal": causal,
        "select": select,
        "seed": seed,
        "best_epoch": summary["best_epoch"],
        "averaged_epochs": summary["averaged_epochs"],
        "dev": summary["dev"]["weighted_f1"],
        "dev_loss": _dev_loss(seed_dir),
        "test": summary.get("test", {}).get("weighted_f1"),
        "epochs_trained": summary["epoch"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _dev_loss(seed_dir: Path) -> float:
    """Dev cross-entropy of the selected model, from its saved dev probabilities (as training scores it)."""
    import numpy as np

    from trainer.report.summary import read_probabilities

    _, gold, probs, names = read_probabilities(seed_dir / "predictions_dev.csv")
    index = np.array([names.index(g) for g in gold])
    return float(-np.log(np.clip(probs[np.arange(len(gold)), index], 1e-12, None)).mean())


def join_halves(runs: list[dict]) -> list[dict]:
    """One run per (setting, causal, rule, seed) from its two ``--holdout-dev`` halves: ``dev`` (the
    selecting half), ``held_out_dev`` (the other half: the halves' ``test``), ``dev_loss`` and ``seconds``,
    each the mean of the two ways round; ``test`` becomes None."""
    joined: dict[tuple, list[dict]] = {}
    for r in runs:
        joined.setdefault((r["setting"], r["causal"], r["select"], r["seed"]), []).append(r)
    out = []
    for pair in joined.values():
        row = {k: v for k, v in pair[0].items() if k not in ("best_epoch", "averaged_epochs")}
        for k in ("dev", "dev_loss", "seconds"):
            row[k] = statistics.fmean(r[k] for r in pair)
        row["held_out_dev"] = statistics.fmean(r["test"] for r in pair)
        row["test"] = None
        row["best_epochs"] = [r["best_epoch"] for r in pair]
        row["halves"] = len(pair)
        out.append(row)
    return out


def summarize(runs: list[dict], by_select: bool = False, holdout: bool = False) -> dict:
    """``{"<setting>[ causal][ --select S]": {dev, dev_std, test, test_std, seeds}}`` (mean ± sample std
    over seeds); with ``by_select`` the rule is in the key and ``dev_loss`` (of the selected model) added;
    with ``holdout`` (runs from :func:`join_halves`) ``held_out_dev`` replaces ``test``."""
    out = {}
    second = "held_out_dev" if holdout else "test"
    for key in dict.fromkeys((r["setting"], r["causal"], r["select"]) for r in runs):
        mine = [r for r in runs if (r["setting"], r["causal"], r["select"]) == key]
        entry = {"seeds": len(mine)}
        for split in ("dev", second, "dev_loss") if by_select else ("dev", second):
            vals = [r[split] for r in mine if r[split] is not None]
            entry[split] = round(statistics.fmean(vals), 4) if vals else None
            entry[split + "_std"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else None
        out[key[0] + (" causal" if key[1] else "") + (f" --select {key[2]}" if by_select else "")] = entry
    return out


def demo_file(folder: Path) -> Path:
    """The demo's generated corpus and features.h5 in ``folder`` (built once; reused when present)."""
    import contextlib

    from trainer.demo.chain import demo_features

    with contextlib.redirect_stdout(sys.stderr):
        return demo_features(folder, folder / "cache", workers=1)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("features", nargs="?", type=Path, help="A features.h5 (m2f extract).")
    ap.add_argument(
        "--demo",
        type=Path,
        default=None,
        help="Build the demo's generated fusion corpus and features.h5 here and use it.",
    )
    ap.add_argument("--modalities", default="tav", help="As m2f train-dialog --modalities (MELD text: t).")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="Comma list of " + ", ".join(SETTINGS))
    ap.add_argument("--causal", choices=("both", "off", "on"), default="both")
    ap.add_argument(
        "--selects",
        default="wf1",
        help="Comma list of m2f train-dialog --select rules to run each setting under (wf1, loss, average).",
    )
    ap.add_argument("--average-last", type=int, default=None, help="As m2f train-dialog --average-last.")
    ap.add_argument(
        "--head-residual", action="store_true", help="As m2f train-dialog --head-residual (text head logits)."
    )
    ap.add_argument(
        "--holdout-dev",
        action="store_true",
        help="Select on one half of dev, score on the other (both ways round); test is not read.",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--patience", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=2, help="Runs in parallel (one torch thread each).")
    ap.add_argument("--out", type=Path, default=None, help="Keep the runs here [default: a temporary one].")
    args = ap.parse_args()
    if (args.features is None) == (args.demo is None):
        ap.error("give a FEATURES file or --demo DIR")
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    causal = {"both": (False, True), "off": (False,), "on": (True,)}[args.causal]
    selects = [s for s in args.selects.split(",") if s]
    t0 = time.perf_counter()
    if args.demo is not None:
        from trainer.demo.chain import DEMO_BATCH

        features = demo_file(args.demo)
        defaults = {"epochs": 25, "patience": 25, "batch_size": DEMO_BATCH}
    else:
        features, defaults = args.features, {}
    given = {"epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size}
    options = {**defaults, **{k: v for k, v in given.items() if v is not None}, "modalities": args.modalities}
    if args.head_residual:
        options["head_residual"] = True
    by_select = selects != ["wf1"]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        inputs = {"": Path(features)}
        if args.holdout_dev:
            inputs = dict(
                zip(("/half0", "/half1"), dev_halves(Path(features), out / "dev-halves"), strict=True)
            )
        jobs = [
            (
                str(path),
                str(out / f"{s}{'-causal' * c}{f'-{sel}' * by_select}" / f"seed{seed}{half}"),
                s,
                c,
                seed,
                {**options, "average_last": args.average_last} if sel == "average" else options,
                sel,
            )
            for sel in selects
            for c in causal
            for s in settings
            for seed in range(args.seeds)
            for half, path in inputs.items()
        ]
        runs = []
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for r in pool.map(run_one, *zip(*jobs, strict=True)):
                print(
                    json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}),
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(r)
    if args.holdout_dev:
        runs = join_halves(runs)
    result = {
        "features": str(features),
        "options": options,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "cpu": platform.processor() or platform.machine(),
        "seconds": round(time.perf_counter() - t0, 1),
        "selects": selects,
        "holdout_dev": args.holdout_dev,
        "settings": summarize(runs, by_select, args.holdout_dev),
        "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
