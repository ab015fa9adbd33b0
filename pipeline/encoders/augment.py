"""Training-time augmentation of the extractors' inputs (never used at extraction).

Audio (docs/DESIGN.md section 2.2): time stretch by a factor 0.8-1.25 without changing pitch (torchaudio's
phase vocoder on a complex STFT, then ``torch.istft``), and additive white Gaussian noise at an SNR of
5-40 dB (``torchaudio.functional.add_noise``). The mel spectrogram is computed afterwards by the
encoder's own front end.

Images (face crops, scene frames): ``torchvision.transforms.v2`` random resized crop (scale 0.8-1),
horizontal flip and mild brightness/contrast jitter; no hue change, so colour stays informative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torchvision.transforms import v2


@dataclass(frozen=True)
class AudioAugment:
    """Ranges of the waveform augmentation.

    Parameters
    ----------
    snr_db : (float, float)
        AWGN signal-to-noise ratio range in dB, drawn uniformly.
    stretch : (float, float)
        Time-stretch rate range (>1 faster/shorter), drawn log-uniformly.
    n_fft, hop_length : int
        STFT of the phase vocoder.
    """

    snr_db: tuple[float, float] = (5.0, 40.0)
    stretch: tuple[float, float] = (0.8, 1.25)
    n_fft: int = 512
    hop_length: int = 128

    def to_dict(self) -> dict:
        return {
            "snr_db": list(self.snr_db),
            "stretch": list(self.stretch),
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
        }


def time_stretch(wave: torch.Tensor, rate: float, n_fft: int = 512, hop_length: int = 128) -> torch.Tensor:
    """Stretch a mono waveform ``(T,)`` in time by ``1 / rate`` keeping its pitch (phase vocoder).

    Returns a waveform of ``round(T / rate)`` samples.
    """
    if wave.numel() < n_fft or rate == 1.0:
        return wave.clone()
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave, n_fft, hop_length, window=window, return_complex=True)
    phase_advance = torch.linspace(0, math.pi * hop_length, spec.shape[-2], device=wave.device)[:, None]
    stretched = AF.phase_vocoder(spec, rate, phase_advance)
    return torch.istft(stretched, n_fft, hop_length, window=window, length=round(wave.numel() / rate))


def add_white_noise(
    wave: torch.Tensor, snr_db: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add white Gaussian noise at ``snr_db`` to a waveform ``(T,)`` (a silent input stays silent)."""
    noise = torch.randn(wave.shape, generator=generator, dtype=wave.dtype)
    return AF.add_noise(wave[None], noise[None], torch.tensor([snr_db], dtype=wave.dtype))[0]


def augment_waveform(
    wave: np.ndarray, max_samples: int, rng: np.random.Generator, cfg: AudioAugment = AudioAugment()
) -> np.ndarray:
    """Random crop of a clip, time stretch and AWGN: at most ``max_samples`` samples, never padded.

    A segment of ``min(len(wave), max_samples * rate)`` samples is cut at a random place, stretched
    by ``1 / rate`` (so it fits ``max_samples``) and noised. A clip shorter than the window keeps its
    whole (stretched) length: the training view of a clip is the view extraction sees, augmented.
    """
    rate = float(np.exp(rng.uniform(np.log(cfg.stretch[0]), np.log(cfg.stretch[1]))))
    seg = min(len(wave), int(round(max_samples * rate)))
    start = int(rng.integers(0, len(wave) - seg + 1))
    piece = torch.from_numpy(np.ascontiguousarray(wave[start : start + seg], dtype=np.float32))
    piece = time_stretch(piece, rate, cfg.n_fft, cfg.hop_length)[:max_samples]
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    return add_white_noise(piece, float(rng.uniform(*cfg.snr_db)), gen).numpy().astype(np.float32, copy=False)


def image_augmenter(size: int) -> v2.Compose:
    """Random image augmentation of a uint8 ``(3, S, S)`` tensor, output ``(3, size, size)`` uint8."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    )
