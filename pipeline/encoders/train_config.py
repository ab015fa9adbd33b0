"""Settings of one encoder's triplet training: :class:`EncoderTrainConfig` and the epoch/batch defaults.

On CUDA the paper's epochs (:data:`PAPER_EPOCHS`, 60 audio / 100 visual); on CPU :data:`CPU_EPOCHS`;
batches of :data:`DEFAULT_BATCH` samples per device type.

A change to what these settings' defaults produce (or to the loss, mining, augmentation, selection)
must bump :data:`ENCODER_RECIPE_VERSION` (defined in :mod:`pipeline.encoders.recipe_version`, which the cache
layout imports without torch): cached default encoders are keyed by it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.encoders.augment import AudioAugment
from pipeline.encoders.losses import LossConfig
from pipeline.encoders.recipe_version import ENCODER_RECIPE_VERSION
from pipeline.names import ENCODER_KINDS

__all__ = [
    "CPU_EPOCHS",
    "DEFAULT_BATCH",
    "ENCODER_RECIPE_VERSION",
    "PAPER_EPOCHS",
    "EncoderTrainConfig",
    "TrainEncodersConfig",
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


#: The fields of :class:`EncoderTrainConfig` that :class:`TrainEncodersConfig` decides per modality.
_PER_MODALITY = ("modality", "epochs", "batch_size", "steps_per_epoch", "seed", "amp", "classes")


@dataclass(frozen=True)
class TrainEncodersConfig:
    """What :func:`pipeline.encoders.train.train_encoders` (``m2f train-encoders``) is told.

    Immutable. One :class:`EncoderTrainConfig` per modality follows from it (:meth:`for_modality`).
    Fields with a ``help`` in their metadata are ``m2f train-encoders`` options (``cli.py`` reads them).

    Parameters
    ----------
    media : path-like
        ``cache/<dataset>/media-<hash>/media.h5`` with ``train`` (and ideally ``dev``) splits.
    out : path-like
        Folder of the checkpoints (``audio.pt``, ``face.pt``, ``scene.pt``).
    modalities : tuple of str
        Any of ``audio``, ``face``, ``scene``.
    epochs : int or None
        None: 60 audio / 100 visual on CUDA (the paper), :data:`CPU_EPOCHS` on CPU.
    device : {"cpu", "cuda"}
        On CUDA: bf16 autocast and batch 128 by default.
    batch_size : int or None
        None: :data:`DEFAULT_BATCH` of the device type.
    steps_per_epoch : int or None
        Batches per epoch; None: one pass over the train samples.
    seed : int
        Initial weights and random streams.
    classes : tuple of str or None
        Labels to train on; None: every non-empty train label.
    overwrite : bool
        Retrain even when ``<out>/<modality>.pt`` exists.
    labels : mapping of str to str or None
        Utterance id -> label for every train and dev row (the current manifest's); None: the ``label``
        column of ``media.h5`` (the manifest's at decoding time).
    contract_overrides : mapping
        Per modality, overrides of the input contract, e.g. ``{"face": {"image_size": 64}}``.
    overrides : mapping
        Other :class:`EncoderTrainConfig` fields, the same for every modality (``clip_seconds``,
        ``probe``, ``probe_every``, ``loss``, ...); their defaults stay there.
    """

    media: str | Path
    out: str | Path
    modalities: tuple[str, ...] = ENCODER_KINDS
    epochs: int | None = field(
        default=None,
        metadata={
            "help": "Epochs per encoder. Default: 60 audio / 100 visual on cuda (the paper), 5 on cpu."
        },
    )
    device: str = field(
        default="cpu",
        metadata={"help": "cuda: bf16 autocast and batch 128 by default.", "choices": ("cpu", "cuda")},
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "Batch size (default 32 on cpu, 128 on cuda)."}
    )
    steps_per_epoch: int | None = field(
        default=None, metadata={"help": "Batches per epoch (default: one pass over the train samples)."}
    )
    seed: int = field(default=0, metadata={"help": "Initial weights and sampling."})
    classes: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "Comma list of labels to train on (e.g. IEMOCAP's six). Default: every non-empty label."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Retrain even if a checkpoint exists."})
    labels: Mapping[str, str] | None = None
    contract_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(EncoderTrainConfig)} - {"contract_overrides"}
        wrong = sorted(k for k in self.overrides if k not in names or k in _PER_MODALITY)
        if wrong:
            raise ValueError(
                f"overrides {wrong}: not EncoderTrainConfig fields set through overrides "
                f"(the run's own fields are {list(_PER_MODALITY[1:])}; contract_overrides is per modality)"
            )

    def for_modality(self, modality: str) -> EncoderTrainConfig:
        """The :class:`EncoderTrainConfig` of ``modality``: the device's defaults where None."""
        kind = torch.device(self.device).type
        return EncoderTrainConfig(
            modality=modality,
            epochs=self.epochs if self.epochs is not None else default_epochs(modality, self.device),
            batch_size=self.batch_size or DEFAULT_BATCH.get(kind, 32),
            steps_per_epoch=self.steps_per_epoch,
            seed=self.seed,
            amp=(kind == "cuda"),
            classes=self.classes,
            contract_overrides=dict(self.contract_overrides.get(modality, {})),
            **self.overrides,
        )
