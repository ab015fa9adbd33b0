"""Options of ``m2f train-dialog`` and their resolution against the features file and the machine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from pipeline.names import DEVICES as EXTRACT_DEVICES
from trainer.dialogue.data import (
    CLASS_MAP_CHOICES,
    default_layers,
    head_order,
    inspect_features,
    normalize_modalities,
    preset_for_dataset,
    resolve_class_names,
)
from trainer.dialogue.model import FUSIONS, POSITIONS, SPEAKERS, DialogueModelConfig

#: Defaults of ``--positions`` / ``--speakers``. On the generated fusion corpus dev does not separate them
#: from ``none`` (bench/RESULTS.md, dialogue context ablation); these can use a conversation and start as the
#: bag model (zero biases). To be revisited with the MELD text ablation.
DEFAULT_POSITIONS = "relative"
DEFAULT_SPEAKERS = "same-other"
#: ``device`` values: ``auto`` is CUDA when visible, else the CPU.
DEVICES = ("auto", *EXTRACT_DEVICES)
#: ``--select``: which model of a seed becomes ``best.pt`` (always judged on dev, never on test). ``wf1``: the
#: epoch of the best dev weighted F1; ``loss``: the epoch of the lowest dev cross-entropy; ``average``: the
#: element-wise mean of the weights of the last ``--average-last`` epochs trained. Patience counts epochs
#: without a better dev weighted F1 (``wf1``) or without a lower dev loss (``loss``, ``average``).
SELECT_RULES = ("wf1", "loss", "average")
#: ``--average-last`` when ``--select average`` is given without it.
DEFAULT_AVERAGE_LAST = 5

#: Options a run folder written before they existed lacks in its ``config.json``, with the value such a run
#: had: resuming it with these values is resuming the same run.
OLDER_RUN_VALUES = {"select": "wf1", "average_last": None, "head_residual": False}

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


def _option(help: str, **more) -> dict:
    """Field metadata read by ``cli.py`` to build the ``m2f train-dialog`` option of that field."""
    return {"help": help, **more}


@dataclass(frozen=True)
class DialogueTrainConfig:
    """Everything :func:`trainer.dialogue.fit.train_dialogue` (``m2f train-dialog``) is told.

    Immutable; resolved against the features file and the machine by :func:`resolve_config`. Each
    field's default, choices and ``--help`` text live here once: ``cli.py`` builds the command's options
    from the fields' metadata.

    Parameters
    ----------
    features : str
        A ``features.h5`` written by ``m2f extract``.
    out : str
        The run folder; seed ``k`` trains into ``<out>/seed<k>/``.
    modalities : str
        Letters of ``tav`` (or the comma form, normalised by :func:`resolve_config`).
    fusion : {"attention", "concat"}
        Multi-head attention fusion (M2FNet) or plain concatenation.
    seeds, first_seed : int
        Number of repeats and the seed of the first.
    epochs, patience : int
        Maximum epochs; stop after ``patience`` epochs without a better dev score (the one ``select``
        names: dev weighted F1 for ``wf1``, dev loss for ``loss`` and ``average``).
    select : {"wf1", "loss", "average"}
        Which model becomes ``best.pt``: the epoch of the best dev weighted F1, the epoch of the lowest
        dev loss, or the mean of the weights of the last ``average_last`` epochs (:data:`SELECT_RULES`).
    average_last : int or None
        K of ``select="average"`` (None: :data:`DEFAULT_AVERAGE_LAST`); refused with another rule.
    device : {"auto", "cpu", "cuda"}
        ``auto``: CUDA when visible.
    lr, weight_decay, dropout, batch_size, bucket : float or int
        AdamW settings, dropout, dialogues per batch, length-bucketing window in batches (0 = off).
    heads, layers, fusion_layers, hidden, ff_mult : int or None
        Model shape (:class:`trainer.dialogue.model.DialogueModelConfig`); ``layers=None``: 5 for IEMOCAP,
        else 1.
    positions, speakers : str
        Attention biases by relative distance and by same/other speaker.
    causal : bool
        Each utterance attends only to itself and earlier ones.
    head_residual : bool
        Final logits = the classifier's output + the fine-tuned text head's logits saved in the features
        file (``text_logits``, mapped to the class map by name); the classifier's last layer starts at
        zero, and the untrained model (the head itself) is scored on dev as epoch 0, which selection may
        keep (``wf1``, ``loss``).
    class_map : str or None
        Which labels count; None: the file's dataset.
    compile : bool
        ``torch.compile`` the model.
    threads : int or None
        ``torch.set_num_threads`` for the run; None leaves torch's choice.
    progress : bool
        Show a tqdm bar.
    checkpoint_seconds : float
        Write ``last.pt`` at most this often; 0 = every epoch.
    """

    features: str = field(metadata=_option("A features.h5 (m2f extract).", path=True))
    out: str = field(
        metadata=_option(
            "Run folder; seeds go to OUT/seed<k>/. Rerunning the same command resumes a killed run.",
            path=True,
        )
    )
    modalities: str = field(
        default="tav",
        metadata=_option(
            "Letters of `tav` (t text, a audio, v visual) or a comma list of text, audio, visual."
        ),
    )
    fusion: str = field(
        default="attention",
        metadata=_option("Multi-head attention fusion (M2FNet) or plain concatenation.", choices=FUSIONS),
    )
    seeds: int = field(default=1, metadata=_option("Number of seeds (repeats); report gives mean ± std."))
    first_seed: int = field(default=0, metadata=_option("Seed of the first repeat."))
    epochs: int = field(default=100, metadata=_option("Maximum epochs."))
    patience: int = field(
        default=15,
        metadata=_option(
            "Stop after this many epochs without a better dev score: dev wF1 for --select wf1, "
            "a lower dev loss for loss and average."
        ),
    )
    select: str = field(
        default="wf1",
        metadata=_option(
            "The model kept as best.pt, judged on dev only: the epoch of the best dev weighted F1 (wf1), "
            "of the lowest dev cross-entropy (loss), or the mean of the weights of the last "
            "--average-last epochs trained (average).",
            choices=SELECT_RULES,
        ),
    )
    average_last: int | None = field(
        default=None,
        metadata=_option(
            f"K of --select average: the last K epochs' weights are kept and averaged "
            f"[default: {DEFAULT_AVERAGE_LAST}]; only with --select average."
        ),
    )
    device: str = field(default="auto", metadata=_option("", choices=DEVICES))
    lr: float = field(default=5e-4, metadata=_option("AdamW learning rate."))
    weight_decay: float = field(default=5e-4, metadata=_option("AdamW weight decay."))
    dropout: float = field(default=0.4, metadata=_option(""))
    batch_size: int = field(default=16, metadata=_option("Dialogues per batch."))
    bucket: int = field(
        default=50,
        metadata=_option(
            "Batch dialogues of similar length: sort inside windows of BUCKET batches (0 = off)."
        ),
    )
    heads: int = field(default=4, metadata=_option("Attention heads (must divide D_T, D_A, D_V)."))
    layers: int | None = field(
        default=None,
        metadata=_option("Transformer layers per modality N_T = N_A = N_V [default: 5 for iemocap, else 1]."),
    )
    fusion_layers: int = field(default=5, metadata=_option("Attention fusion layers m."))
    hidden: int = field(default=256, metadata=_option("Width of the classifier's hidden layer."))
    ff_mult: int = field(default=2, metadata=_option("Encoder feed-forward width as a multiple of D."))
    positions: str = field(
        default=DEFAULT_POSITIONS,
        metadata=_option(
            "Utterance order in the modality encoders: a learned attention bias by relative distance.",
            choices=POSITIONS,
        ),
    )
    speakers: str = field(
        default=DEFAULT_SPEAKERS,
        metadata=_option(
            "A learned attention bias for same-speaker vs other-speaker pairs of utterances.",
            choices=SPEAKERS,
        ),
    )
    causal: bool = field(
        default=False,
        metadata=_option(
            "Each utterance attends only to itself and earlier ones (encoders and fusion): "
            "predictions never use later utterances."
        ),
    )
    head_residual: bool = field(
        default=False,
        metadata=_option(
            "Final logits = the dialogue classifier's output + the fine-tuned text head's logits saved by "
            "m2f extract (text_logits); the classifier's last layer starts at zero, so the untrained model "
            "predicts what the text head predicts, and it is scored on dev as epoch 0, which "
            "--select wf1/loss may keep. Needs text and a features file made with a fine-tuned text model."
        ),
    )
    class_map: str | None = field(
        default=None,
        metadata=_option(
            "Which labels count [default: from the file's dataset attribute].", choices=CLASS_MAP_CHOICES
        ),
    )
    compile: bool = field(
        default=False, metadata=_option("torch.compile the model.", flag="--compile/--no-compile")
    )
    threads: int | None = field(
        default=None, metadata=_option("CPU threads for torch [default: torch's choice].")
    )
    progress: bool = field(
        default=True,
        metadata=_option("Show a tqdm bar with loss and dev wF1.", flag="--progress/--no-progress"),
    )
    checkpoint_seconds: float = field(
        default=60.0,
        metadata=_option("Write the resume checkpoint (last.pt) at most this often; 0 = every epoch."),
    )


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
            head_residual=t.head_residual,
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
    if device not in DEVICES:
        raise ValueError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    return device


def resolve_config(config: DialogueTrainConfig) -> ResolvedConfig:
    """Fill in what the features file decides: dataset preset, class names, N, widths, device.

    Raises
    ------
    FileNotFoundError, ValueError
        On a missing file, missing splits, a bad option; messages say what to do.
    """
    config = dataclasses.replace(config, modalities=normalize_modalities(config.modalities))
    if min(config.seeds, config.epochs, config.batch_size, config.patience) < 1:
        raise ValueError("--seeds, --epochs, --batch-size and --patience must be at least 1")
    config = _resolve_selection(config)
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
    resolved.model_config().validate()  # --head-residual without text is refused here, in one line
    if config.head_residual:
        head_order(info.text_logits_classes, names, str(info.path))  # one line when it cannot
    return resolved


def _resolve_selection(config: DialogueTrainConfig) -> DialogueTrainConfig:
    """Check ``select`` and ``average_last`` together; fill in K for ``average``."""
    if config.select not in SELECT_RULES:
        raise ValueError(f"--select {config.select!r}: choose one of {', '.join(SELECT_RULES)}")
    if config.select != "average":
        if config.average_last is not None:
            raise ValueError(
                f"--average-last {config.average_last} goes with --select average only "
                f"(given: --select {config.select}); drop it or choose --select average"
            )
        return config
    k = DEFAULT_AVERAGE_LAST if config.average_last is None else config.average_last
    if not 1 <= k <= config.epochs:
        raise ValueError(
            f"--average-last {k}: average 1 to --epochs ({config.epochs}) epochs' weights; "
            "choose K in that range"
        )
    return dataclasses.replace(config, average_last=k)


def _train_labels(path: str) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return list(f["train"]["label"].asstr()[()])
