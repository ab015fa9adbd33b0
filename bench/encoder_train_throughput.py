"""Training throughput of the triplet-trained extractors (samples per second), printed as JSON.

Builds a throw-away media.h5 of random data in the real layout (audio clips of ``--audio-seconds``,
face crops and scene frames of 112 px), then times whole training steps exactly as
``m2f train-encoders`` runs them: lazy row reads from HDF5, augmentation (waveform stretch + noise,
image crop/flip/jitter), forward, semi-hard mining, Eq. 9 loss, backward, Adam step. One loader
serves both a warm-up epoch of ``--steps`` steps (its worker processes start then, as they do once per
training run) and the timed epoch, which is not charged for worker start-up.

Usage::

    python bench/encoder_train_throughput.py [--device cpu|cuda] [--batch-size 32] [--steps 3]

The last line printed is one JSON object. Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipeline.encoders.loader import TrainLoader
from pipeline.encoders.network import build_encoder
from pipeline.encoders.samples import MediaSamples
from pipeline.encoders.train import train_epoch
from pipeline.encoders.train_config import DEFAULT_BATCH, EncoderTrainConfig
from pipeline.names import ENCODER_KINDS
from pipeline.testing.media_h5 import write_random_media

LABELS = ("anger", "joy", "neutral", "sadness")


def measure(
    media: Path, modality: str, device: str, batch_size: int, steps: int, audio_seconds: float
) -> dict:
    """Samples/s of ``steps`` timed training steps after a warm-up epoch of as many on the same loader."""
    samples = MediaSamples(media, "train", modality)
    cfg = EncoderTrainConfig(
        modality=modality,
        epochs=1,
        batch_size=batch_size,
        clip_seconds=audio_seconds,
        amp=torch.device(device).type == "cuda",
    )
    window = {"max_seconds": audio_seconds} if modality == "audio" else {}  # the encoder's audio window
    enc = build_encoder(modality, seed=0, **window).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = TrainLoader(samples, enc, cfg, device, steps)
    train_epoch(enc, opt, samples, cfg, device, epoch=0, steps=steps, loader=loader)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    stats = train_epoch(enc, opt, samples, cfg, device, epoch=1, steps=steps, loader=loader)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    loader.close()
    per_class = batch_size // len(LABELS)
    n = stats["steps"] * per_class * len(LABELS)
    samples.close()
    return {
        "samples_per_s": round(n / seconds, 2),
        "step_s": round(seconds / max(stats["steps"], 1), 3),
        "batch": per_class * len(LABELS),
        "steps": stats["steps"],
        "triplets_per_step": stats["triplets_per_step"],
        "loader_workers": loader.workers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--audio-seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--modalities", default=",".join(ENCODER_KINDS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or DEFAULT_BATCH.get(torch.device(args.device).type, 32)
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "audio_seconds": args.audio_seconds,
        "image_size": 112,
    }
    if torch.device(args.device).type == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        media = write_random_media(
            Path(tmp) / "media.h5",
            LABELS,
            per_class=max(batch // len(LABELS), 2) * 2,
            audio_seconds=args.audio_seconds,
        )
        for m in args.modalities.split(","):
            result[m] = measure(media, m, args.device, batch, args.steps, args.audio_seconds)
            print(m, result[m], flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
