"""Options of ``m2f train-dialog`` and their resolution against the features file and the machine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from trainer.dialogue.data import (
    CLASS_MAP_CHOICES,
    default_layers,
    inspect_features,
    normalize_modalities,
    preset_for_dataset,
    resolve_class_names,
)
from trainer.dialogue.model import DialogueModelConfig

#: Defaults of ``--positions`` / ``--speakers``. On the generated fusion corpus dev does not separate them
#: from ``none`` (bench/RESULTS.md, dialogue context ablation); these can use a conversation and start as the
#: bag model (zero biases). To be revisited with the MELD text ablation.
DEFAULT_POSITIONS = "relative"
DEFAULT_SPEAKERS = "same-other"

#: Options that may differ between a killed run and its resumption.
RESUME_FREE_KEYS = (
    "out",
    "seeds",
    "device",
    "threads",
    "progress",
    "compile",
    "epochs",
    "patience",
    "checkpoint_seconds",
)


@dataclass(frozen=True)
class DialogueTrainConfig:
    """Options of ``m2f train-dialog`` (see its ``--help``). Immutable; resolved by :func:`resolve_config`."""

    features: str
    out: str
    modalities: str = "tav"
    fusion: str = "attention"
    seeds: int = 1
    first_seed: int = 0
    epochs: int = 100
    patience: int = 15
    device: str = "auto"
    lr: float = 5e-4
    weight_decay: float = 5e-4
    dropout: float = 0.4
    batch_size: int = 16
    heads: int = 4
    layers: int | None = None
    fusion_layers: int = 5
    hidden: int = 256
    ff_mult: int = 2
    positions: str = DEFAULT_POSITIONS
    speakers: str = DEFAULT_SPEAKERS
    causal: bool = False
    class_map: str | None = None
    compile: bool = False
    threads: int | None = None
    progress: bool = True
    bucket: int = 50
    checkpoint_seconds: float = 60.0


@dataclass(frozen=True)
class ResolvedConfig:
    """A :class:`DialogueTrainConfig` with everything the file decides filled in."""

    train: DialogueTrainConfig
    dataset: str
    class_map: str
    class_names: tuple[str, ...]
    layers: int
    dims: dict[str, int]
    splits: tuple[str, ...]
    device: str

    def model_config(self) -> DialogueModelConfig:
        t = self.train
        return DialogueModelConfig(
            dims=dict(self.dims),
            n_classes=len(self.class_names),
            modalities=t.modalities,
            fusion=t.fusion,
            layers=dict.fromkeys(t.modalities, self.layers),
            fusion_layers=t.fusion_layers,
            heads=t.heads,
            dropout=t.dropout,
            hidden=t.hidden,
            ff_mult=t.ff_mult,
            positions=t.positions,
            speakers=t.speakers,
            causal=t.causal,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self.train)
        d.update(
            dataset=self.dataset,
            class_map=self.class_map,
            class_names=list(self.class_names),
            layers=self.layers,
            dims=dict(self.dims),
            splits=list(self.splits),
            device=self.device,
            model=self.model_config().to_dict(),
        )
        return d


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: choose cpu, cuda or auto")
    return device


def resolve_config(config: DialogueTrainConfig) -> ResolvedConfig:
    """Fill in what the features file decides: dataset preset, class names, N, widths, device.

    Raises
    ------
    FileNotFoundError, ValueError
        On a missing file, missing splits, a bad option; messages say what to do.
    """
    config = dataclasses.replace(config, modalities=normalize_modalities(config.modalities))
    if config.seeds < 1 or config.epochs < 1 or config.batch_size < 1:
        raise ValueError("--seeds, --epochs and --batch-size must be at least 1")
    info = inspect_features(config.features)
    preset = config.class_map or preset_for_dataset(info.dataset)
    if preset not in CLASS_MAP_CHOICES:
        raise ValueError(f"--class-map {preset!r}: choose one of {CLASS_MAP_CHOICES}")
    train_labels = _train_labels(info.path) if preset == "custom" else []
    names = resolve_class_names(preset, train_labels)
    resolved = ResolvedConfig(
        train=config,
        dataset=info.dataset,
        class_map=preset,
        class_names=tuple(names),
        layers=config.layers if config.layers is not None else default_layers(preset),
        dims=info.dims,
        splits=info.splits,
        device=resolve_device(config.device),
    )
    resolved.model_config().validate()
    return resolved


def _train_labels(path: str) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return list(f["train"]["label"].asstr()[()])
