"""The utterance-level extractor network and its input contract (docs/DESIGN.md section 2.4).

One architecture serves audio, face and scene: a ResNet18 trunk and one linear projector to
``embed_dim`` (300), trained as a triplet network. What the network expects of its input (sample
rate, mel settings, crop size, normalisation) is its :class:`InputContract`, which lives on the
model and is saved in every checkpoint, so extraction and training cannot disagree about it.

Inputs
------
audio : float32 waveforms ``(B, T)`` at ``contract.sample_rate`` (zero padded); the model computes
    the log-mel "image" itself (n_fft 400, hop 160, 128 mels), standardised per utterance and
    repeated to 3 channels.
face, scene : uint8 or float images ``(B, 3, S, S)`` with S = ``contract.image_size`` (RGB, 0-255);
    the model scales to [0, 1] and applies the contract's mean/std.

Outputs are L2-normalised ``(B, embed_dim)`` vectors (the space the triplet loss works in).

Checkpoints are plain ``torch.save`` dicts of tensors and JSON-able values, loaded with
``torch.load(weights_only=True)``: a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
import torchvision
from torch import nn

from pipeline.atomic import atomic_torch_save, content_identity
from pipeline.names import ENCODER_KINDS


@dataclass(frozen=True)
class InputContract:
    """What an encoder expects of its input. Saved with every checkpoint.

    Parameters
    ----------
    modality : str
        ``audio``, ``face`` or ``scene``.
    sample_rate, n_fft, hop_length, n_mels, max_seconds : audio settings
        16 kHz mono; mel frame 400 samples, hop 160, 128 bands; at most 10 s (centre cut).
    image_size : int
        Side of the square face crop / scene frame in pixels.
    mean, std : tuple of float
        Per-channel normalisation applied after scaling pixels to [0, 1].
    """

    modality: str
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128
    max_seconds: float = 10.0
    image_size: int = 112
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputContract:
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of one extractor: ResNet18 + linear projector to ``embed_dim``."""

    contract: InputContract
    embed_dim: int = 300
    backbone: str = "resnet18"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"contract": self.contract.to_dict(), "embed_dim": self.embed_dim,
                "backbone": self.backbone, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        return cls(InputContract.from_dict(d["contract"]), d.get("embed_dim", 300),
                   d.get("backbone", "resnet18"), dict(d.get("extra", {})))


class LogMel(nn.Module):
    """Waveform ``(B, T)`` -> standardised log-mel "RGB image" ``(B, 3, n_mels, frames)``."""

    def __init__(self, contract: InputContract):
        super().__init__()
        with warnings.catch_warnings():
            # 128 bands on a 400-point FFT (the paper's settings) leave a few low bands empty
            warnings.filterwarnings("ignore", message="At least one mel filterbank")
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=contract.sample_rate, n_fft=contract.n_fft, win_length=contract.n_fft,
                hop_length=contract.hop_length, n_mels=contract.n_mels, power=2.0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # fp32 even under training's bf16 autocast: the mel filterbank and log as in extraction
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.log(self.mel(wave.float()) + 1e-6)
        mu = spec.mean(dim=(1, 2), keepdim=True)
        sd = spec.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        return ((spec - mu) / sd).unsqueeze(1).expand(-1, 3, -1, -1)


class ImageNorm(nn.Module):
    """uint8/float RGB ``(B, 3, S, S)`` in 0-255 -> normalised float."""

    def __init__(self, contract: InputContract):
        super().__init__()
        self.register_buffer("mean", torch.tensor(contract.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(contract.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() / 255.0 - self.mean) / self.std


class Encoder(nn.Module):
    """ResNet18 trunk + linear projector; output L2-normalised embeddings.

    Examples
    --------
    >>> enc = Encoder(EncoderConfig(InputContract("face")))
    >>> enc(torch.zeros(2, 3, 112, 112, dtype=torch.uint8)).shape
    torch.Size([2, 300])
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.contract = config.contract
        if config.backbone != "resnet18":
            raise ValueError(f"unknown backbone {config.backbone!r}; only 'resnet18' is built in")
        trunk = torchvision.models.resnet18(weights=None)
        trunk.fc = nn.Identity()
        self.front = LogMel(self.contract) if self.contract.modality == "audio" else ImageNorm(self.contract)
        self.trunk = trunk
        self.projector = nn.Linear(512, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.trunk(self.front(x))), dim=-1)


def build_encoder(modality: str, seed: int | None = None, **contract_overrides) -> Encoder:
    """A fresh encoder for ``modality``; with ``seed`` its random weights are reproducible."""
    if modality not in ENCODER_KINDS:
        raise ValueError(f"unknown modality {modality!r}; expected one of {ENCODER_KINDS}")
    if seed is not None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    enc = Encoder(EncoderConfig(InputContract(modality, **contract_overrides)))
    if seed is not None:
        torch.random.set_rng_state(gen_state)
    return enc.eval()


def save_encoder(encoder: Encoder, path: str | Path, **meta) -> Path:
    """Save weights, config/contract and any JSON-able ``meta`` (history, quality, ...) atomically."""
    return atomic_torch_save({"format": "m2f-encoder-1", "config": encoder.config.to_dict(),
                              "state_dict": encoder.state_dict(), "meta": meta}, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read an encoder checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncation, foreign objects
        raise ValueError(f"{path} is not a loadable m2f encoder checkpoint ({e}); "
                         "re-run `m2f train-encoders` to rebuild it") from e
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
        for m in ENCODER_KINDS:
            getattr(self, m).to(device)
        return self


def load_encoder_set(spec: str | Path, device: str | torch.device = "cpu", seed: int = 0,
                     image_sizes: dict[str, int] | None = None) -> EncoderSet:
    """Load ``audio.pt``, ``face.pt``, ``scene.pt`` from folder ``spec``, or random weights for ``"random"``.

    ``"random"`` draws each encoder from a fixed seed (``seed``, ``seed + 1``, ``seed + 2``), so two
    runs agree. A folder missing a checkpoint raises FileNotFoundError saying what to run.
    ``image_sizes`` (e.g. ``{"face": 80, "scene": 64}``, the media cache's crop sizes) sets the contract of
    random encoders and is checked against the contract of loaded ones.
    """
    image_sizes = dict(image_sizes or {})
    if str(spec) == "random":
        encs = {m: build_encoder(m, seed=seed + i, **({"image_size": image_sizes[m]}
                                                      if m in image_sizes else {}))
                for i, m in enumerate(ENCODER_KINDS)}
        return EncoderSet(**encs, identity=encoder_identity(spec, seed, image_sizes), random=True).to(device)
    folder = Path(spec)
    missing = [m for m in ENCODER_KINDS if not (folder / f"{m}.pt").exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks encoder checkpoints {[m + '.pt' for m in missing]}; train them with "
            f"`m2f train-encoders --modality all ...` or pass `--encoders random` for random weights")
    encs = {m: load_encoder(folder / f"{m}.pt", device) for m in ENCODER_KINDS}
    for m, size in image_sizes.items():
        if encs[m].contract.image_size != size:
            raise ValueError(f"{folder / (m + '.pt')} expects {encs[m].contract.image_size} px images but "
                             f"the media cache stores {size} px; retrain the encoders on this media cache")
    return EncoderSet(**encs, identity=encoder_identity(folder))
