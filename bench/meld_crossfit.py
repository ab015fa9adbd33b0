"""Real MELD, text only: the dialogue model trained on cross-fitted (out-of-fold) train features.

Issue 19's point 2: the train rows of a features.h5 come from a text model fine-tuned on those same rows,
so they separate the classes better than dev and test rows do. Here the train dialogues are cut into two
seeded halves; MiniLM is fine-tuned on each half (the recipe of ``bench/meld_text.py``'s defaults, dev for
selection), and each train row gets the embedding and head logits of the model that did not see it.
Dev and test rows come either from the full fine-tune (``full``: the features file given) or from the
mean of the two half models (``avg``). Variants, each one ``m2f train-dialog --modalities t --seeds 1``:

=================  ====================================================================================
in-sample          the features file as ``m2f extract`` wrote it (the README's path)
oof-full           out-of-fold train rows; dev/test from the full fine-tune
oof-avg            out-of-fold train rows; dev/test the mean of the two half models
oof-*-res          the same with ``--head-residual``
oof-*-logits       the head logits (7 numbers) as the text input, with ``--head-residual --heads 1``
=================  ====================================================================================

Choose by the dev column; test is printed beside it. Stages are resumable (each fold's folder, each
extraction and each run is reused when present).

Usage::

    python bench/meld_crossfit.py --meld MELD_CSV_DIR --features FULL_FEATURES_H5 [--seed 0]
        [--out cache/bench/meld_crossfit] [--cache cache]

``FULL_FEATURES_H5`` is the features file of the same fine-tune seed written by ``bench/meld_text.py``
(its ``ft<seed>/extract.json`` names it). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from meld_text import log, m2f_command, run_logged, stage_finetune  # noqa: E402
from meld_text import parse_args as meld_text_args

VARIANTS: dict[str, tuple[dict | None, tuple[str, ...]]] = {
    "in-sample": (None, ()),
    "oof-full": ({"dev_test": "full"}, ()),
    "oof-avg": ({"dev_test": "avg"}, ()),
    "oof-full-res": ({"dev_test": "full"}, ("--head-residual",)),
    "oof-avg-res": ({"dev_test": "avg"}, ("--head-residual",)),
    "oof-full-logits": ({"dev_test": "full", "logits_as_emb": True}, ("--head-residual", "--heads", "1")),
    "oof-avg-logits": ({"dev_test": "avg", "logits_as_emb": True}, ("--head-residual", "--heads", "1")),
}


def train_halves(utterances, seed: int) -> list[set[str]]:
    """The train dialogue ids (in natural order: MELD's are numbers) cut into two seeded halves."""
    ids = sorted({u.dialogue_id for u in utterances if u.split == "train"}, key=lambda d: (len(d), d))
    perm = np.random.default_rng(seed).permutation(len(ids))
    first = {ids[i] for i in perm[: len(ids) // 2]}
    return [first, set(ids) - first]


def extract(args, folder: Path, out: Path) -> str:
    """``m2f extract --modalities text --text-model folder``; the features path (cached in ``out``)."""
    done = out / "features.txt"
    if done.exists():
        return done.read_text(encoding="utf-8").strip()
    cmd = [*m2f_command(), "extract", "--dataset", "meld", "--root", str(args.meld)]
    cmd += ["--modalities", "text", "--text-model", str(folder), "--cache", str(args.cache)]
    cmd += ["--workers", str(args.workers)]
    path = run_logged(cmd, out / "extract.log")
    done.write_text(path, encoding="utf-8")
    return path


def compose(
    full: str,
    halves: list[str],
    fold_ids: list[set[str]],
    dest: Path,
    dev_test: str,
    logits_as_emb: bool = False,
) -> Path:
    """A copy of ``full`` with out-of-fold train rows and dev/test rows from ``full`` or the halves' mean."""
    from pipeline.store.features import read_split

    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(full, tmp)
    with h5py.File(tmp, "r+") as f:
        for split in ("train", "dev", "test"):
            rows = read_split(full, split)
            emb, logits = rows.text_emb, rows.text_logits
            if split == "train" or dev_test == "avg":
                per_half = [read_split(path, split) for path in halves]
                for path, half in zip(halves, per_half, strict=True):
                    if list(half.utt_id) != list(rows.utt_id):
                        raise SystemExit(f"{path}: rows of {split} differ from {full}'s")
                if split == "train":  # each row from the half that did not see its dialogue
                    seen_by_first = np.isin(rows.dialogue_id, list(fold_ids[0]))[:, None]
                    emb = np.where(seen_by_first, per_half[1].text_emb, per_half[0].text_emb)
                    logits = np.where(seen_by_first, per_half[1].text_logits, per_half[0].text_logits)
                else:
                    emb = np.mean([half.text_emb for half in per_half], axis=0)
                    logits = np.mean([half.text_logits for half in per_half], axis=0)
            has = rows.has_text[:, None]
            emb, logits = (
                np.where(has, emb, 0).astype(np.float32),
                np.where(has, logits, 0).astype(np.float32),
            )
            group = f[split]
            group["text_logits"][...] = logits
            if logits_as_emb:
                del group["text_emb"]
                group.create_dataset("text_emb", data=logits)
            else:
                group["text_emb"][...] = emb
    tmp.replace(dest)
    return dest


def train_report(features: Path | str, run: Path, extra: tuple[str, ...]) -> dict:
    if not (run / "report.json").exists():
        cmd = [*m2f_command(), "train-dialog", "--features", str(features), "--out", str(run)]
        cmd += ["--modalities", "t", "--seeds", "1", "--threads", "1", *extra]
        run_logged(cmd, Path(f"{run}.log"))
        run_logged([*m2f_command(), "report", str(run)], Path(f"{run}.report.log"))
    summary = json.loads((run / "report.json").read_text(encoding="utf-8"))
    return {split: round(summary[split]["weighted_f1"], 4) for split in ("dev", "test")}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meld", type=Path, required=True, help="Folder with the MELD *_sent_emo.csv files.")
    p.add_argument("--features", required=True, help="The full fine-tune's features.h5 (same seed).")
    p.add_argument("--seed", type=int, default=0, help="Fine-tune seed (and the halves' cut).")
    p.add_argument("--out", type=Path, default=Path("cache/bench/meld_crossfit"))
    p.add_argument("--cache", type=Path, default=Path("cache"), help="m2f cache root for extract.")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma list of {list(VARIANTS)}.")
    args = p.parse_args()
    recipe = meld_text_args(["--meld", str(args.meld)])  # the README's fine-tuning recipe, its defaults
    import torch

    torch.set_num_threads(recipe.threads)
    from pipeline.corpora.meld import prepare_meld

    out = args.out / f"s{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    utterances = prepare_meld(args.meld)
    fold_ids = train_halves(utterances, args.seed)
    halves, finetunes = [], []
    for k, ids in enumerate(fold_ids):
        folder = out / f"half{k}"
        t = time.time()
        kept = [u for u in utterances if u.split != "train" or u.dialogue_id in ids]
        finetunes.append(stage_finetune(kept, folder / "model", recipe, args.seed))
        log(f"half {k}: fine-tuned ({time.time() - t:.0f}s), dev {finetunes[-1]['dev_weighted_f1']:.4f}")
        halves.append(extract(args, folder / "model", folder))
    results = {}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        kwargs, extra = VARIANTS[name]
        features = args.features
        if kwargs is not None:
            features = out / f"{name}.h5"
            if not features.exists():
                compose(args.features, halves, fold_ids, features, **kwargs)
        results[name] = train_report(features, out / f"run-{name}", extra)
        log(f"{name}: {results[name]}")
    summary = {
        "seed": args.seed,
        "features": args.features,
        "halves_dev_weighted_f1": [round(f["dev_weighted_f1"], 4) for f in finetunes],
        "halves_train_minutes": [round(f["train_minutes"], 1) for f in finetunes],
        "variants": results,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
