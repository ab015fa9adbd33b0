"""Dialogue-training throughput on a MELD-shaped generated cache; prints one JSON object.

The cache has MELD's real dialogue lengths (parsed from ``../shared/data/meld/*_sent_emo.csv`` with
the csv module; a synthetic length distribution with a note when they are absent), D_T 1024,
D_A 300, D_V 600, and is trained with N = 1, m = 5 through the trainer's own code path
(:func:`trainer.dialogue.steps.train_epoch`, :func:`trainer.dialogue.steps.predict_probs`). It reports:

* ``train_utt_per_s``: utterances per second of training steps (forward, backward, AdamW);
* ``model_flops_per_utt``: FLOPs of one training step per real utterance, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on a real batch (padding included, as executed);
* ``matmul_flops_per_s``: a large matmul measured in the same run (fp32 on CPU, bf16 on CUDA);
* ``utilisation``: achieved model FLOP/s over the matmul FLOP/s;
* ``projected_100_epoch_s``: 100 x (a train epoch + a dev pass), MELD sizes.

On CPU a full MELD epoch takes minutes, so only ``--cpu-batches`` batches are timed; on CUDA
whole epochs are timed.

Usage::

    python bench/train_throughput.py [--device auto|cpu|cuda] [--compile] [--meld-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.testing.features_h5 import random_rows, write_features
from trainer.dialogue.config import resolve_device
from trainer.dialogue.data import MELD_CLASSES, batch_order, load_split
from trainer.dialogue.model import DialogueModel, DialogueModelConfig
from trainer.dialogue.steps import (
    autocast_for,
    compile_missing,
    compiled_or_eager,
    make_optimizer,
    predict_probs,
    train_epoch,
)

DIMS = {"t": 1024, "a": 300, "v": 600}
MELD_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
DEFAULT_MELD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld"


def meld_dialogue_lengths(meld_dir: Path) -> tuple[dict[str, list[int]], str]:
    """Utterances per dialogue of each MELD split, from the annotation CSVs, or a synthetic stand-in."""
    if all((meld_dir / name).is_file() for name in MELD_FILES.values()):
        lengths = {}
        for split, name in MELD_FILES.items():
            with open(meld_dir / name, newline="", encoding="utf-8") as f:
                counts = Counter(row["Dialogue_ID"] for row in csv.DictReader(f))
            lengths[split] = [counts[d] for d in sorted(counts, key=int)]
        return lengths, f"real MELD dialogue lengths from {meld_dir}"
    rng = np.random.default_rng(0)
    sizes = {"train": 1038, "dev": 114, "test": 280}
    lengths = {s: np.clip(rng.poisson(9.6, n), 1, 33).tolist() for s, n in sizes.items()}
    return lengths, f"{meld_dir} not found: synthetic Poisson(9.6) lengths, MELD's dialogue counts"


def matmul_flops_per_s(device: str, seconds: float = 2.0) -> float:
    """Measured FLOP/s of a square matmul (fp32 on CPU, bf16 on CUDA)."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _sync(device)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if device == "cuda" and reps % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def flops_per_position(model, optimizer, split, index: torch.Tensor, device: str) -> float:
    """Training-step FLOPs (forward + backward) per executed (padded) position of one batch."""
    length = int(split.lengths[index.numpy()].max())
    batch = split.batch(index.to(device), length)
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast_for(device):
            logits = model(batch["features"], batch["present"], batch["mask"], batch["speakers"])
        logits.float().sum().backward()
    optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / (len(index) * length)


def run(
    device: str,
    compile_model: bool,
    meld_dir: Path,
    batch_size: int,
    cpu_batches: int,
    epochs: int,
    bucket: int,
    max_dialogues: int | None = None,
) -> dict:
    lengths, lengths_note = meld_dialogue_lengths(meld_dir)
    if max_dialogues:  # a smoke run (bench/gpu_check.py --cpu-smoke): the first dialogues of each split
        lengths = {s: v[:max_dialogues] for s, v in lengths.items()}
        lengths_note += f"; first {max_dialogues} dialogues per split"
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = write_features(Path(tmp) / "features.h5", "meld", lengths, random_rows(DIMS, MELD_CLASSES))
        splits = {s: load_split(path, s, MELD_CLASSES).to(device) for s in ("train", "dev")}
        prepare_s = time.perf_counter() - started
    torch.manual_seed(0)
    config = DialogueModelConfig(dims=DIMS, n_classes=7, layers={"t": 1, "a": 1, "v": 1}, fusion_layers=5)
    model = DialogueModel(config).to(device)
    optimizer = make_optimizer(model, 5e-4, 5e-4, device)
    compile_note = compile_missing() if compile_model else None
    step_model = compiled_or_eager(model) if compile_model else model
    train = splits["train"]
    batches = None if device == "cuda" else cpu_batches
    seed_order = torch.Generator().manual_seed(0)
    order = batch_order(train.n_dialogues, batch_size, seed_order, train.lengths if bucket else None, bucket)
    order = order[:batches]
    timed_utts = int(sum(train.lengths[i.numpy()].sum() for i in order))
    executed = int(
        sum(len(i) * (train.max_len if compile_model else train.lengths[i.numpy()].max()) for i in order)
    )
    flops = flops_per_position(model, optimizer, train, order[0], device) * executed / timed_utts

    def one_pass(max_batches: int | None) -> None:
        train_epoch(
            step_model,
            optimizer,
            train,
            batch_size,
            torch.Generator().manual_seed(0),
            device,
            fixed_length=compile_model,
            max_batches=max_batches,
            bucket=bucket,
        )

    # warm-up: allocator, kernels; compiled, every batch shape of the timed pass (its short last batch
    # would otherwise recompile inside the timed epoch)
    one_pass(batches if compile_model else min(3, len(order)))
    _sync(device)
    n_runs = epochs if device == "cuda" else 1
    start = time.perf_counter()
    for _ in range(n_runs):
        one_pass(batches)
    _sync(device)
    train_s = (time.perf_counter() - start) / n_runs
    utt_per_s = timed_utts / train_s
    start = time.perf_counter()
    predict_probs(model, splits["dev"], 64, device)
    dev_s = time.perf_counter() - start
    matmul = matmul_flops_per_s(device)
    epoch_s = int(train.lengths.sum()) / utt_per_s + dev_s
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0)
        if device == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "compile": compile_model and compile_note is None,
        "compile_fallback": compile_note,
        "amp": "bf16" if device == "cuda" else "off",
        "dims": DIMS,
        "N": 1,
        "m": 5,
        "heads": config.heads,
        "batch_size_dialogues": batch_size,
        "lengths": lengths_note,
        "train_utterances": int(train.lengths.sum()),
        "train_dialogues": train.n_dialogues,
        "dev_utterances": int(splits["dev"].lengths.sum()),
        "bucket": bucket,
        "padding_overhead": executed / timed_utts,
        "timed_batches": len(order),
        "timed_utterances": timed_utts,
        "timed_passes": n_runs,
        "train_utt_per_s": utt_per_s,
        "dev_pass_s": dev_s,
        "model_flops_per_utt": flops,
        "model_params": sum(p.numel() for p in model.parameters()),
        "achieved_flops_per_s": flops * utt_per_s,
        "matmul_flops_per_s": matmul,
        "utilisation": flops * utt_per_s / matmul,
        "epoch_s": epoch_s,
        "projected_100_epoch_s": 100 * epoch_s,
        "prepare_cache_s": prepare_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--meld-dir", type=Path, default=DEFAULT_MELD_DIR)
    parser.add_argument("--batch-size", type=int, default=16, help="dialogues per batch")
    parser.add_argument("--cpu-batches", type=int, default=12, help="batches timed on CPU")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed on CUDA")
    parser.add_argument("--bucket", type=int, default=50, help="length bucketing window (0 = off)")
    parser.add_argument(
        "--max-dialogues",
        type=int,
        default=None,
        help="first N dialogues per split only (smoke runs; projections then mean nothing)",
    )
    args = parser.parse_args()
    result = run(
        resolve_device(args.device),
        args.compile,
        args.meld_dir,
        args.batch_size,
        args.cpu_batches,
        args.epochs,
        args.bucket,
        args.max_dialogues,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
