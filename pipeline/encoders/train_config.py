"""Settings of one encoder's triplet training: :class:`EncoderTrainConfig` and the epoch/batch defaults.

On CUDA the paper's epochs (:data:`PAPER_EPOCHS`, 60 audio / 100 visual); on CPU :data:`CPU_EPOCHS`;
batches of :data:`DEFAULT_BATCH` samples per device type.

A change to what these settings' defaults produce (or to the loss, mining, augmentation, selection)
must bump :data:`ENCODER_RECIPE_VERSION` (defined in :mod:`pipeline.encoders.recipe_version`, which the cache
layout imports without torch): cached default encoders are keyed by it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from pipeline.encoders.augment import AudioAugment
from pipeline.encoders.losses import LossConfig
from pipeline.encoders.recipe_version import ENCODER_RECIPE_VERSION

__all__ = [
    "CPU_EPOCHS",
    "DEFAULT_BATCH",
    "ENCODER_RECIPE_VERSION",
    "PAPER_EPOCHS",
    "EncoderTrainConfig",
    "default_epochs",
]

CPU_EPOCHS = 5
PAPER_EPOCHS = {"audio": 60, "face": 100, "scene": 100}
DEFAULT_BATCH = {"cpu": 32, "cuda": 128}


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Everything that shapes one extractor's training (saved in its checkpoint).

    Parameters
    ----------
    modality : str
        ``audio``, ``face`` or ``scene``.
    epochs : int
        Number of epochs.
    batch_size : int
        Target batch size (P classes x K samples).
    steps_per_epoch : int or None
        Batches per epoch; None = ``ceil(N_train / batch_size)``.
    lr, weight_decay : float
        Adam settings (paper: 1e-4, 1e-6).
    seed : int
        Seeds the initial weights and every epoch's random stream.
    clip_seconds : float or None
        The audio window (the encoder contract's ``max_seconds``): training crops, model selection and
        extraction all see at most this much of a clip. None = the contract's default (10 s).
    probe : {"logreg", "knn"}
        The quality probe.
    probe_max_train, probe_max_dev : int or None
        Stratified caps on the samples embedded for the probe (None = all).
    amp : bool
        bf16 autocast (CUDA only).
    probe_every : int
        Probe (and select the best epoch) every this many epochs, and after the last one; the probe embeds
        up to ``probe_max_train + probe_max_dev`` samples, a cost worth spreading out on a GPU.
    num_workers : int or None
        DataLoader worker processes that read and augment batches, started once for all epochs with the
        ``forkserver`` start method (no fork of a process that runs dask's threads); None = 0 on CPU
        (the cores are busy training), ``min(8, cpus - 1)`` on CUDA. Does not change the numbers.
    classes : tuple of str or None
        Labels to train on; None = every non-empty train label.
    contract_overrides : dict
        Passed to :func:`build_encoder` (e.g. ``{"image_size": 64}``).
    loss : LossConfig
        Form and weights of Eq. 9.
    audio_augment : AudioAugment
        Waveform augmentation ranges.
    """

    modality: str
    epochs: int
    batch_size: int
    steps_per_epoch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-6
    seed: int = 0
    clip_seconds: float | None = None
    probe: str = "logreg"
    probe_max_train: int | None = 2000
    probe_max_dev: int | None = 2000
    amp: bool = False
    probe_every: int = 1
    num_workers: int | None = None
    classes: tuple[str, ...] | None = None
    contract_overrides: dict = field(default_factory=dict)
    loss: LossConfig = LossConfig()
    audio_augment: AudioAugment = AudioAugment()

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 4:
            raise ValueError(f"need epochs >= 1 and batch_size >= 4, got {self.epochs}, {self.batch_size}")
        if self.probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, got {self.probe_every}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["loss"] = self.loss.to_dict()
        d["audio_augment"] = self.audio_augment.to_dict()
        d["classes"] = None if self.classes is None else list(self.classes)
        d["contract_overrides"] = dict(self.contract_overrides)
        return d


def default_epochs(modality: str, device: str) -> int:
    """The paper's epochs on CUDA (60 audio, 100 visual); :data:`CPU_EPOCHS` on CPU."""
    return PAPER_EPOCHS[modality] if torch.device(device).type == "cuda" else CPU_EPOCHS
