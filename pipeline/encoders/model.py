"""The utterance-level extractor network and its input contract (docs/DESIGN.md section 2.4).

One architecture serves audio, face and scene: a ResNet18 trunk and one linear projector to
``embed_dim`` (300), trained as a triplet network. What the network expects of its input (sample
rate, mel settings, crop size, normalisation) is its :class:`InputContract`, which lives on the
model and is saved in every checkpoint, so extraction and training cannot disagree about it.

Inputs
------
audio : float32 waveforms ``(B, T)`` at ``contract.sample_rate`` and, for a batch of clips of different
    lengths, ``lengths (B,)`` (real samples per row; the rest is zero padding). The model computes the
    log-mel "image" itself (n_fft 400, hop 160, 128 mels) of each row's real samples only, standardised
    over that row's real frames, padded frames set to 0, repeated to 3 channels; the ResNet's global
    average pool runs over the real frames only. The audio *view* is the same in training, model
    selection and extraction (:func:`audio_view`): at most ``contract.max_seconds`` of the clip (a
    random crop in training, the centre otherwise), never padded before standardisation.
face, scene : uint8 or float images ``(B, 3, S, S)`` with S = ``contract.image_size`` (RGB, 0-255);
    the model scales to [0, 1] and applies the contract's mean/std.

``Encoder.forward`` returns L2-normalised ``(B, embed_dim)`` vectors (what extraction writes and the
triplet loss compares); ``Encoder.project`` the projector output before normalisation (what the
variance and covariance terms regularise).

Checkpoints are plain ``torch.save`` dicts of tensors and JSON-able values, loaded with
``torch.load(weights_only=True)``: a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
    sample_rate, n_fft, hop_length, n_mels : audio settings
        16 kHz mono; mel frame 400 samples, hop 160, 128 bands.
    max_seconds : float
        The audio window: the encoder sees at most this much of a clip (training: a random crop;
        model selection and extraction: the centre), 10 s by default.
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
    """Waveforms ``(B, T)`` -> standardised log-mel "RGB image" ``(B, 3, n_mels, frames)``.

    With ``lengths``, row i is ``wave[i, :lengths[i]]``: its log-mel is computed from those samples
    alone and standardised over its own frames, and the frames past them are 0 (the standardised
    mean), so a clip's image does not depend on how much padding its batch needed. A clip shorter
    than one FFT frame is zero padded to ``n_fft`` samples (the same in every view).
    """

    def __init__(self, contract: InputContract):
        super().__init__()
        self.n_fft, self.hop_length = contract.n_fft, contract.hop_length
        with warnings.catch_warnings():
            # 128 bands on a 400-point FFT (the paper's settings) leave a few low bands empty
            warnings.filterwarnings("ignore", message="At least one mel filterbank")
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=contract.sample_rate, n_fft=contract.n_fft, win_length=contract.n_fft,
                hop_length=contract.hop_length, n_mels=contract.n_mels, power=2.0)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of log-mel frames of clips of ``lengths`` samples."""
        return 1 + lengths.clamp_min(self.n_fft) // self.hop_length

    def _standardised(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.shape[-1] < self.n_fft:
            wave = F.pad(wave, (0, self.n_fft - wave.shape[-1]))
        # fp32 even under training's bf16 autocast: the mel filterbank and log as in extraction
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.log(self.mel(wave.float()) + 1e-6)
        mu = spec.mean(dim=(-2, -1), keepdim=True)
        sd = spec.std(dim=(-2, -1), keepdim=True).clamp_min(1e-5)
        return (spec - mu) / sd

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None or bool((lengths == wave.shape[-1]).all()):
            spec = self._standardised(wave)
        else:
            frames = self.frames(lengths)
            spec = wave.new_zeros((len(wave), self.mel.n_mels, int(frames.max())), dtype=torch.float32)
            for i, n in enumerate(lengths.tolist()):
                row = self._standardised(wave[i:i + 1, :n])[0]
                spec[i, :, :row.shape[-1]] = row
        return spec.unsqueeze(1).expand(-1, 3, -1, -1)


class ImageNorm(nn.Module):
    """uint8/float RGB ``(B, 3, S, S)`` in 0-255 -> normalised float."""

    def __init__(self, contract: InputContract):
        super().__init__()
        self.register_buffer("mean", torch.tensor(contract.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(contract.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() / 255.0 - self.mean) / self.std


#: The projector's default initial weights are scaled by this. Training regularises the projector output
#: with VICReg's variance (pushes each dimension's std up to 1) and covariance (grows with the fourth
#: power of the scale) terms; from PyTorch's default init the covariance term starts at its small-batch
#: noise floor (~(d - 1) / (B - 1) per matrix times the scale^4, e.g. 3.7 for faces) and, weighted 5,
#: spends the first epochs shrinking the scale instead of letting the triplet term learn (face probe
#: 0.56 vs 0.86 without it, docs/LOSSES.md). Starting small, the variance term grows the scale until
#: the two balance. Scaling weights and bias together leaves ``forward`` (unit vectors) unchanged.
PROJECTOR_INIT_SCALE = 0.1


class Encoder(nn.Module):
    """ResNet18 trunk + linear projector; ``forward`` gives L2-normalised embeddings.

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
        with torch.no_grad():  # see PROJECTOR_INIT_SCALE; the unit-vector output does not change
            self.projector.weight.mul_(PROJECTOR_INIT_SCALE)
            self.projector.bias.mul_(PROJECTOR_INIT_SCALE)

    def pooled_features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """ResNet18 features ``(B, 512)``; audio rows with ``lengths`` see only their real frames."""
        t = self.trunk
        if not isinstance(self.front, LogMel):
            return t(self.front(x))
        h = self.front(x, lengths)
        if lengths is None or bool((lengths == x.shape[-1]).all()):
            return t(h)
        h, valid = _masked_trunk(t, h, self.front.frames(lengths))
        keep = _time_keep(h, valid)
        return (h * keep).sum(dim=(2, 3)) / (valid.to(h.dtype) * h.shape[2])[:, None]

    def project(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The projector output ``(B, embed_dim)`` before normalisation (what Var/Cov regularise)."""
        return self.projector(self.pooled_features(x, lengths))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.project(x, lengths), dim=-1)


_MapAndValid = tuple[torch.Tensor, torch.Tensor]   # a feature map and its real time steps per row


def _time_keep(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 1, T)`` mask of the first ``valid[b]`` time steps of a ``(B, C, F, T)`` map."""
    steps = torch.arange(x.shape[-1], device=x.device)
    return (steps[None, :] < valid[:, None]).to(x.dtype)[:, None, None, :]


def _halve(valid: torch.Tensor) -> torch.Tensor:
    """Time steps after a stride-2 conv or pool with ``padding = kernel // 2``: ceil(n / 2)."""
    return (valid + 1) // 2


def _masked_bn(bn: nn.BatchNorm2d, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """BatchNorm whose training statistics (and running averages) come from the kept positions only."""
    if not bn.training:
        return bn(x)
    x, keep = x.float(), keep.float()             # batch statistics in fp32, as autocast runs BatchNorm
    count = keep.sum() * x.shape[2]
    mean = (x * keep).sum(dim=(0, 2, 3)) / count
    var = (((x - mean[None, :, None, None]) ** 2) * keep).sum(dim=(0, 2, 3)) / count
    with torch.no_grad():
        bn.num_batches_tracked += 1
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), bn.momentum)
        unbiased = var * count / (count - 1).clamp_min(1)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), bn.momentum)
    scale = bn.weight / torch.sqrt(var + bn.eps)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + bn.bias[None, :, None, None]


def _masked_block(block: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> _MapAndValid:
    """A torchvision BasicBlock on a map whose time steps past ``valid`` are zero (and stay zero)."""
    out_valid = _halve(valid) if block.conv1.stride[-1] == 2 else valid
    out = block.conv1(x)
    keep = _time_keep(out, out_valid)
    out = block.relu(_masked_bn(block.bn1, out, keep)) * keep
    out = _masked_bn(block.bn2, block.conv2(out), keep)
    if block.downsample is not None:
        conv, bn = block.downsample
        identity = _masked_bn(bn, conv(x), keep)
    else:
        identity = x
    return block.relu(out + identity) * keep, out_valid


def _masked_trunk(trunk: nn.Module, h: torch.Tensor, valid: torch.Tensor) -> _MapAndValid:
    """ResNet18's convolutional stages over log-mels whose frames past ``valid`` are padding.

    Every map is zeroed past its real time steps before it feeds a convolution, which is what the
    convolution's own zero padding gives a clip computed alone, and BatchNorm's batch statistics count
    real positions only; so in eval mode a padded clip gets the features it gets alone.
    """
    h = trunk.conv1(h)
    valid = _halve(valid)
    keep = _time_keep(h, valid)
    h = trunk.relu(_masked_bn(trunk.bn1, h, keep)) * keep
    h = trunk.maxpool(h)          # values are >= 0 after ReLU, so the zeros act as the pool's -inf padding
    valid = _halve(valid)
    h = h * _time_keep(h, valid)
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        for block in layer:
            h, valid = _masked_block(block, h, valid)
    return h, valid


def audio_view(wave: np.ndarray, contract: InputContract, rng: np.random.Generator | None = None
               ) -> np.ndarray:
    """The part of a clip the audio encoder sees: at most ``contract.max_seconds``, never padded.

    Parameters
    ----------
    wave : np.ndarray
        Mono waveform ``(n,)`` at ``contract.sample_rate``.
    contract : InputContract
        Gives the window ``max_seconds``.
    rng : np.random.Generator, optional
        Training: the window starts at a random sample. None (model selection, extraction): the centre.

    Returns
    -------
    np.ndarray
        ``wave`` itself when it fits the window, else a window-long slice of it.
    """
    limit = int(round(contract.max_seconds * contract.sample_rate))
    if len(wave) <= limit:
        return wave
    start = int(rng.integers(0, len(wave) - limit + 1)) if rng is not None else (len(wave) - limit) // 2
    return wave[start:start + limit]


def pad_waveforms(waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips of different lengths: zero padded ``(B, T_max)`` float32 and ``lengths (B,)``."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    x = torch.zeros((len(waves), int(lengths.max()) if len(waves) else 0), dtype=torch.float32)
    for i, w in enumerate(waves):
        x[i, :len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return x, lengths


@torch.inference_mode()
def embed_waveforms(encoder: Encoder, waveforms: Sequence[np.ndarray], batch_size: int,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The audio encoder over clips in their extraction view -> ``(N, D)`` float32.

    Each clip is cut to the encoder's window (:func:`audio_view`, centre) and batched only with clips
    of the same length, so no padding enters the network and a clip's vector never depends on its
    neighbours (a resumed extraction equals an uninterrupted one). Empty clips give zero rows. Model
    selection (:func:`pipeline.encoders.probe.embed_samples`) embeds through this same function.
    """
    out = np.zeros((len(waveforms), encoder.config.embed_dim), np.float32)
    views = [audio_view(np.asarray(w, np.float32), encoder.contract) for w in waveforms]
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(views):
        if len(w) > 0:
            by_len.setdefault(len(w), []).append(i)
    for idx in by_len.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j:j + batch_size]
            x = torch.from_numpy(np.stack([views[i] for i in chunk])).to(device)
            out[chunk] = encoder(x).float().cpu().numpy()
    return out


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
