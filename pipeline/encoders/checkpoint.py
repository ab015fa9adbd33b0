"""Encoder checkpoints: save and load one encoder, load the set ``m2f extract`` uses, and name it.

Checkpoints are plain ``torch.save`` dicts of tensors and JSON-able values, loaded with
``torch.load(weights_only=True)``: a checkpoint from a stranger cannot run code. The identity of an
encoder set (:func:`encoder_identity`) is part of the features cache key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.encoders.network import Encoder, EncoderConfig, build_encoder
from pipeline.names import ENCODER_KINDS
from pipeline.store.atomic import atomic_torch_save, content_identity


def save_encoder(encoder: Encoder, path: str | Path, **meta) -> Path:
    """Save weights, config/contract and any JSON-able ``meta`` (history, quality, ...) atomically."""
    return atomic_torch_save(
        {
            "format": "m2f-encoder-1",
            "config": encoder.config.to_dict(),
            "state_dict": encoder.state_dict(),
            "meta": meta,
        },
        path,
    )


def load_checkpoint(path: str | Path) -> dict:
    """Read an encoder checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncation, foreign objects
        raise ValueError(
            f"{path} is not a loadable m2f encoder checkpoint ({e}); "
            "re-run `m2f train-encoders` to rebuild it"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != "m2f-encoder-1":
        raise ValueError(f"{path} is not an m2f encoder checkpoint (format {ckpt.get('format')!r})")
    return ckpt


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Load an encoder saved by :func:`save_encoder`, in eval mode on ``device``."""
    ckpt = load_checkpoint(path)
    enc = Encoder(EncoderConfig.from_dict(ckpt["config"]))
    enc.load_state_dict(ckpt["state_dict"])
    return enc.eval().to(device)


def encoder_identity(spec: str | Path, seed: int = 0, image_sizes: dict[str, int] | None = None) -> str:
    """Identity of an encoder set (part of the features cache key), without building the models.

    ``random-seed<seed>`` (plus the image sizes random encoders were given), or 16 hex digits of a
    hash of the three checkpoint files' contents. :attr:`EncoderSet.identity` is this value.
    """
    if str(spec) == "random":
        sizes = dict(image_sizes or {})
        return f"random-seed{seed}" + "".join(f"-{m}{sizes[m]}" for m in sorted(sizes))
    blob = "".join(content_identity(Path(spec) / f"{m}.pt") for m in ENCODER_KINDS)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class EncoderSet:
    """The three utterance-level extractors used by ``m2f extract``.

    ``identity`` names the weights (``random-seed0`` or a hash of the checkpoint files) and is part of
    the cache key, so embeddings from different encoders never mix.
    """

    audio: Encoder
    face: Encoder
    scene: Encoder
    identity: str
    random: bool = False

    def to(self, device: str | torch.device) -> EncoderSet:
        """Move the encoders to ``device``; on CPU their conv weights go channels-last.

        oneDNN's CPU convolutions are ~30 % faster on channels-last weights (ResNet18 at 112 px, one
        thread) and give the same embeddings to float rounding (bench/RESULTS.md, "Per-clip cost
        halved"); the conversion happens once, where extraction and prediction load their encoders.
        """
        cpu = torch.device(device).type == "cpu"
        for m in ENCODER_KINDS:
            getattr(self, m).to(device)
            if cpu:
                getattr(self, m).to(memory_format=torch.channels_last)
        return self


def load_encoder_set(
    spec: str | Path,
    device: str | torch.device = "cpu",
    seed: int = 0,
    image_sizes: dict[str, int] | None = None,
) -> EncoderSet:
    """Load ``audio.pt``, ``face.pt``, ``scene.pt`` from folder ``spec``, or random weights for ``"random"``.

    ``"random"`` draws each encoder from a fixed seed (``seed``, ``seed + 1``, ``seed + 2``), so two
    runs agree. A folder missing a checkpoint raises FileNotFoundError saying what to run.
    ``image_sizes`` (e.g. ``{"face": 80, "scene": 64}``, the media cache's crop sizes) sets the contract of
    random encoders and is checked against the contract of loaded ones.
    """
    image_sizes = dict(image_sizes or {})
    if str(spec) == "random":
        encs = {
            m: build_encoder(m, seed=seed + i, **({"image_size": image_sizes[m]} if m in image_sizes else {}))
            for i, m in enumerate(ENCODER_KINDS)
        }
        return EncoderSet(**encs, identity=encoder_identity(spec, seed, image_sizes), random=True).to(device)
    folder = Path(spec)
    missing = [m for m in ENCODER_KINDS if not (folder / f"{m}.pt").exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks encoder checkpoints {[m + '.pt' for m in missing]}; train them with "
            f"`m2f train-encoders --modality all ...` or pass `--encoders random` for random weights"
        )
    encs = {m: load_encoder(folder / f"{m}.pt", device) for m in ENCODER_KINDS}
    for m, size in image_sizes.items():
        if encs[m].contract.image_size != size:
            raise ValueError(
                f"{folder / (m + '.pt')} expects {encs[m].contract.image_size} px images but "
                f"the media cache stores {size} px; retrain the encoders on this media cache"
            )
    return EncoderSet(encs["audio"], encs["face"], encs["scene"], identity=encoder_identity(folder)).to(
        device
    )
