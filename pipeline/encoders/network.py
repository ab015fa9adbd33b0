"""The utterance-level extractor network (docs/DESIGN.md section 2.4).

One architecture serves audio, face and scene: a ResNet18 trunk and one linear projector to
``embed_dim`` (300), trained as a triplet network. What the network expects of its input (sample
rate, mel settings, crop size, normalisation) is its :class:`~pipeline.encoders.inputs.InputContract`,
which lives on the model and is saved in every checkpoint,
so extraction and training cannot disagree about it.

Inputs: see :mod:`pipeline.encoders.inputs` (the contract, the log-mel and image fronts).

``Encoder.forward`` returns L2-normalised ``(B, embed_dim)`` vectors (what extraction writes and the
triplet loss compares); ``Encoder.project`` the projector output before normalisation (what the
variance and covariance terms regularise).

Saving, loading and naming checkpoints: :mod:`pipeline.encoders.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.encoders.inputs import ImageNorm, InputContract, LogMel, audio_view
from pipeline.names import ENCODER_KINDS


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of one extractor: ResNet18 + linear projector to ``embed_dim``."""

    contract: InputContract
    embed_dim: int = 300
    backbone: str = "resnet18"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "contract": self.contract.to_dict(),
            "embed_dim": self.embed_dim,
            "backbone": self.backbone,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        return cls(
            InputContract.from_dict(d["contract"]),
            d.get("embed_dim", 300),
            d.get("backbone", "resnet18"),
            dict(d.get("extra", {})),
        )


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


_MapAndValid = tuple[torch.Tensor, torch.Tensor]  # a feature map and its real time steps per row


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
    x, keep = x.float(), keep.float()  # batch statistics in fp32, as autocast runs BatchNorm
    count = keep.sum() * x.shape[2]
    mean = (x * keep).sum(dim=(0, 2, 3)) / count
    var = (((x - mean[None, :, None, None]) ** 2) * keep).sum(dim=(0, 2, 3)) / count
    tracked, running_mean, running_var = bn.num_batches_tracked, bn.running_mean, bn.running_var
    if tracked is None or running_mean is None or running_var is None or bn.momentum is None:
        raise ValueError("masked BatchNorm needs running statistics and a momentum (ResNet18's have both)")
    with torch.no_grad():
        tracked += 1
        running_mean.lerp_(mean.to(running_mean.dtype), bn.momentum)
        unbiased = var * count / (count - 1).clamp_min(1)
        running_var.lerp_(unbiased.to(running_var.dtype), bn.momentum)
    scale = bn.weight / torch.sqrt(var + bn.eps)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + bn.bias[None, :, None, None]


def _masked_block(
    block: torchvision.models.resnet.BasicBlock, x: torch.Tensor, valid: torch.Tensor
) -> _MapAndValid:
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


def _masked_trunk(trunk: torchvision.models.ResNet, h: torch.Tensor, valid: torch.Tensor) -> _MapAndValid:
    """ResNet18's convolutional stages over log-mels whose frames past ``valid`` are padding.

    Every map is zeroed past its real time steps before it feeds a convolution, which is what the
    convolution's own zero padding gives a clip computed alone, and BatchNorm's batch statistics count
    real positions only; so in eval mode a padded clip gets the features it gets alone.
    """
    h = trunk.conv1(h)
    valid = _halve(valid)
    keep = _time_keep(h, valid)
    h = trunk.relu(_masked_bn(trunk.bn1, h, keep)) * keep
    h = trunk.maxpool(h)  # values are >= 0 after ReLU, so the zeros act as the pool's -inf padding
    valid = _halve(valid)
    h = h * _time_keep(h, valid)
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        for block in layer:
            h, valid = _masked_block(block, h, valid)
    return h, valid


@torch.inference_mode()
def embed_waveforms(
    encoder: Encoder, waveforms: Sequence[np.ndarray], batch_size: int, device: str | torch.device = "cpu"
) -> np.ndarray:
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
            chunk = idx[j : j + batch_size]
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
