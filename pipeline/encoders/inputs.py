"""What an encoder expects of its input and the layer that prepares it (docs/DESIGN.md section 2.4).

:class:`InputContract` (sample rate, mel settings, crop size, normalisation) lives on the model and is
saved in every checkpoint, so extraction and training cannot disagree about it; :class:`LogMel` and
:class:`ImageNorm` are the network's front layers; :func:`audio_view` and :func:`pad_waveforms` shape
the audio a batch holds.

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
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn


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
                sample_rate=contract.sample_rate,
                n_fft=contract.n_fft,
                win_length=contract.n_fft,
                hop_length=contract.hop_length,
                n_mels=contract.n_mels,
                power=2.0,
            )

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
                row = self._standardised(wave[i : i + 1, :n])[0]
                spec[i, :, : row.shape[-1]] = row
        return spec.unsqueeze(1).expand(-1, 3, -1, -1)


class ImageNorm(nn.Module):
    """uint8/float RGB ``(B, 3, S, S)`` in 0-255 -> normalised float."""

    mean: torch.Tensor  # buffers (register_buffer), declared for the type checker
    std: torch.Tensor

    def __init__(self, contract: InputContract):
        super().__init__()
        self.register_buffer("mean", torch.tensor(contract.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(contract.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() / 255.0 - self.mean) / self.std


def audio_view(
    wave: np.ndarray, contract: InputContract, rng: np.random.Generator | None = None
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
    return wave[start : start + limit]


def pad_waveforms(waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips of different lengths: zero padded ``(B, T_max)`` float32 and ``lengths (B,)``."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    x = torch.zeros((len(waves), int(lengths.max()) if len(waves) else 0), dtype=torch.float32)
    for i, w in enumerate(waves):
        x[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return x, lengths
