"""Ablation of the extractor loss (Eq. 9-13) on the generated probe corpus, printed as JSON.

The paper gives no ablation of its extractor loss. This trains one encoder kind on a generated
media.h5 whose label is visible in the signal (``pipeline/testing/media_h5.py``: the corpus the
encoder tests train on) for each loss setting and several seeds, and reports the dev probe weighted F1
(logistic regression on train embeddings, scored on dev; the figure ``m2f train-encoders`` selects its
epoch by) as mean ± sample std over seeds.

Settings (:class:`pipeline.encoders.losses.LossConfig`):

=============  ==================================================================================
adaptive       m2f default: Eq. 11 rescaled to unit-sphere distances, detached, hinged; Var and Cov
               on the projector output
fixed          fixed margin 0.2 instead of the adaptive one
no_var         adaptive, without Eq. 12
no_cov         adaptive, without Eq. 13
no_var_cov     adaptive triplet term alone
literal        the printed form: Eq. 11 unscaled and differentiated, no hinges
inert          the earlier default, for reference: Var and Cov on the unit vectors
=============  ==================================================================================

Per setting: ``best`` = the dev probe of the selected (best) epoch, ``last`` = the last epoch's (no
selection), ``untrained`` = the same probe on the random-init encoder, and the last epoch's mean
``active`` fraction of triplets, ``var`` and ``cov``.

Usage (about 10 minutes on 2 quiet cores with the defaults)::

    python bench/loss_ablation.py [--modality face] [--seeds 3] [--epochs 4] [--steps 20] [--jobs 2]

Each run uses one torch thread; ``--jobs`` runs go in parallel. The last line printed is one JSON
object. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, dict] = {
    "adaptive": {},
    "fixed": {"margin": "fixed"},
    "no_var": {"use_var": False},
    "no_cov": {"use_cov": False},
    "no_var_cov": {"use_var": False, "use_cov": False},
    "literal": {"margin": "eq11", "hinge": False, "detach_margin": False},
    "inert": {"regularize": "unit"},
}


def write_probe_corpus(path: Path, train_per_class: int, dev_per_class: int, image_size: int) -> Path:
    """The generated media.h5 of the encoder tests (3 labels; tone pitch / square position carry them)."""
    from pipeline.testing.media_h5 import write_media

    return write_media(
        path, {"train": train_per_class, "dev": dev_per_class}, seconds=0.6, image_size=image_size
    )


def run_one(
    media: str, out: str, modality: str, setting: str, seed: int, epochs: int, steps: int, batch_size: int
) -> dict:
    """Train one encoder with ``SETTINGS[setting]`` and return its probe figures and last-epoch terms."""
    import torch

    from pipeline.encoders.checkpoint import load_checkpoint
    from pipeline.encoders.losses import LossConfig
    from pipeline.encoders.train import train_encoders
    from pipeline.encoders.train_config import TrainEncodersConfig

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    folder = train_encoders(
        TrainEncodersConfig(
            media=media,
            out=out,
            modalities=(modality,),
            epochs=epochs,
            batch_size=batch_size,
            steps_per_epoch=steps,
            seed=seed,
            overwrite=True,
            overrides={
                "loss": LossConfig(**SETTINGS[setting]),
                **({"clip_seconds": 0.5} if modality == "audio" else {}),
            },
        )
    )
    meta = load_checkpoint(folder / f"{modality}.pt")["meta"]
    last = meta["history"][-1]
    return {
        "setting": setting,
        "seed": seed,
        "best": meta["quality"]["trained"],
        "untrained": meta["quality"]["untrained"],
        "last": last["dev_probe_wf1"],
        "active": last["active"],
        "var": last["var"],
        "cov": last["cov"],
        "seconds": time.perf_counter() - t0,
    }


def summarize(runs: list[dict]) -> dict:
    """Mean ± sample std over seeds of each figure, per setting."""
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        mine = [r for r in runs if r["setting"] == setting]
        entry = {"seeds": len(mine)}
        for key in ("best", "last", "untrained", "active", "var", "cov"):
            vals = [r[key] for r in mine]
            entry[key] = round(statistics.fmean(vals), 4)
            entry[key + "_std"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else None
        out[setting] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--modality",
        default="face",
        choices=("audio", "face", "scene"),
        help="Encoder kind (face: 32 px crops, the cheapest).",
    )
    ap.add_argument("--settings", default=",".join(SETTINGS), help="Comma list of " + ", ".join(SETTINGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="Training steps per epoch.")
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--train-per-class", type=int, default=24)
    ap.add_argument("--dev-per-class", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=2, help="Runs in parallel (one torch thread each).")
    args = ap.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        media = write_probe_corpus(Path(tmp) / "media.h5", args.train_per_class, args.dev_per_class, 32)
        jobs = [
            (
                str(media),
                str(Path(tmp) / f"{s}-{seed}"),
                args.modality,
                s,
                seed,
                args.epochs,
                args.steps,
                args.batch_size,
            )
            for s in settings
            for seed in range(args.seeds)
        ]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            runs = []
            for r in pool.map(run_one, *zip(*jobs, strict=True)):
                print(
                    json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}),
                    flush=True,
                )
                runs.append(r)
    result = {
        "modality": args.modality,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "batch_size": args.batch_size,
        "train_per_class": args.train_per_class,
        "dev_per_class": args.dev_per_class,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "cpu": platform.processor() or platform.machine(),
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": summarize(runs),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
