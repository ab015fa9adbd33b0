"""Dialogues from a features.h5 split, as padded tensors with masks, and the class maps.

A split is loaded once into dense ``(n_dialogues, max_len, D)`` tensors per modality (the whole split
fits in memory for MELD and IEMOCAP: MELD train at D = 1024 + 300 + 600 is ~0.9 GB padded, float32),
moved to the training device once, and batched by indexing. Three masks travel with it:

``mask``      (n_dialogues, L) bool: a real utterance (False = padding).
``present``   per modality (n_dialogues, L) bool: the cache's ``has_*`` flag. The model replaces rows
              whose modality is missing with a learned embedding, so a zero vector is never
              mistaken for a signal.
``labels``    (n_dialogues, L) int64: class index, or :data:`IGNORE` for padding and for utterances
              whose raw label is outside the class map (IEMOCAP ``xxx``, ``sur``, ...). Those
              utterances stay in the dialogue as context but count in neither loss nor metrics.
``residual``  (n_dialogues, L, n_classes) float32, only for ``m2f train-dialog --head-residual``: the
              fine-tuned text model's head logits saved at extraction (``text_logits``), their classes
              put in the class map's order by name (:func:`head_order`).
``speakers``  (n_dialogues, L) int64: the speaker within the dialogue, numbered by first appearance
              (0, 1, ...); :data:`~trainer.dialogue.model.NO_SPEAKER` for padding and an empty speaker name.
              Only same-or-other counts (``m2f train-dialog --speakers same-other``), never the name.

Class maps (which raw labels count, in which order) are trainer configuration, never decided at
extraction: ``meld`` (7), ``iemocap`` (6), ``sample`` (MELD's 7), ``custom`` (the labels present in
train, sorted).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.corpora.base import CLASS_MAPS, IEMOCAP_CLASSES, MELD_CLASSES  # noqa: F401  (re-exported)
from pipeline.names import DATASETS, MODALITY_OF_LETTER, modality_letters, parse_modalities
from pipeline.store.features import (
    MODALITY_FIELDS,
    list_splits,
    logits_classes,
    read_attrs,
    read_split,
    validate_features,
)
from trainer.dialogue.model import NO_SPEAKER

#: Label index of padding and of utterances outside the class map (``ignore_index`` of the loss).
IGNORE = -100

#: One class-map preset per dataset: the fixed maps of pipeline.corpora.base, and ``custom``.
CLASS_MAP_CHOICES = DATASETS


class FeaturesError(ValueError):
    """A features.h5 the trainer cannot use: one line naming the file, split, dataset and row."""


def normalize_modalities(modalities: str | Iterable[str]) -> str:
    """The letters ``t``, ``a``, ``v`` of a modality subset, in canonical ``tav`` order.

    Accepts what every command's ``--modalities`` accepts (:func:`pipeline.names.parse_modalities`):
    letters (``"ta"``), names (``"text,audio"``) or an iterable of names.

    Raises
    ------
    ValueError
        On an empty value or an unknown letter or name.
    """
    try:
        return modality_letters(parse_modalities(modalities))
    except ValueError:
        raise ValueError(
            f"--modalities {modalities!r}: give a non-empty subset of text, audio, visual as letters "
            "('tav', 'ta') or names ('text,audio,visual')"
        ) from None


def preset_for_dataset(dataset: str) -> str:
    """Class-map preset for a features file's ``dataset`` attribute (unknown corpora: ``custom``)."""
    return dataset if dataset in CLASS_MAPS else "custom"


def resolve_class_names(preset: str, train_labels: Sequence[str]) -> list[str]:
    """The ordered class names of a class-map preset.

    Parameters
    ----------
    preset : str
        ``meld``, ``iemocap``, ``sample`` or ``custom``.
    train_labels : sequence of str
        Raw labels of the train split; ``custom`` uses the distinct non-empty ones, sorted.

    Raises
    ------
    ValueError
        On an unknown preset, or a ``custom`` map with fewer than two labels in train.
    """
    if preset in CLASS_MAPS:
        return list(CLASS_MAPS[preset])
    if preset != "custom":
        raise ValueError(f"unknown class map {preset!r}; choose one of {CLASS_MAP_CHOICES}")
    names = sorted({str(x) for x in train_labels if str(x)})
    if len(names) < 2:
        raise ValueError(
            f"custom class map: train has {len(names)} distinct labels ({names}); "
            "a classifier needs at least 2"
        )
    return names


def default_layers(preset: str) -> int:
    """N_T = N_A = N_V of the paper: 5 for IEMOCAP, 1 for MELD (and sample/custom)."""
    return 5 if preset == "iemocap" else 1


@dataclass
class DialogueSplit:
    """One split as padded dialogue tensors (see the module docstring).

    Attributes
    ----------
    features : dict letter -> Tensor (n_dialogues, L, D) float32
    present : dict letter -> Tensor (n_dialogues, L) bool
    mask : Tensor (n_dialogues, L) bool
    labels : Tensor (n_dialogues, L) int64 (class index or :data:`IGNORE`)
    speakers : Tensor (n_dialogues, L) int64 (speaker within the dialogue, or ``NO_SPEAKER``)
    lengths : ndarray (n_dialogues,) int64, on the host (batch trimming needs no device sync)
    utt_id, raw_label : ndarray (n_rows,) of str, file row order
    flat_index : ndarray (n_rows,) int64, position of each file row in the flattened (n_dialogues * L)
    """

    name: str
    features: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    mask: torch.Tensor
    labels: torch.Tensor
    speakers: torch.Tensor
    lengths: np.ndarray
    utt_id: np.ndarray
    raw_label: np.ndarray
    flat_index: np.ndarray
    excluded: dict[str, int] = field(default_factory=dict)
    residual: torch.Tensor | None = None

    @property
    def n_dialogues(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return int(self.mask.shape[1])

    @property
    def n_scored(self) -> int:
        """Utterances whose label is in the class map."""
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device | str) -> DialogueSplit:
        """A copy with every tensor on ``device``."""
        return DialogueSplit(
            name=self.name,
            features={k: v.to(device) for k, v in self.features.items()},
            present={k: v.to(device) for k, v in self.present.items()},
            mask=self.mask.to(device),
            labels=self.labels.to(device),
            speakers=self.speakers.to(device),
            lengths=self.lengths,
            utt_id=self.utt_id,
            raw_label=self.raw_label,
            flat_index=self.flat_index,
            excluded=dict(self.excluded),
            residual=None if self.residual is None else self.residual.to(device),
        )

    def batch(self, index: torch.Tensor, max_len: int | None = None) -> dict[str, Any]:
        """Rows ``index`` (a LongTensor on the split's device), cut to ``max_len`` positions."""
        length = self.max_len if max_len is None else max_len
        return {
            "features": {k: v[index, :length] for k, v in self.features.items()},
            "present": {k: v[index, :length] for k, v in self.present.items()},
            "mask": self.mask[index, :length],
            "labels": self.labels[index, :length],
            "speakers": self.speakers[index, :length],
            "residual": None if self.residual is None else self.residual[index, :length],
        }


def dialogue_blocks(dialogue_id: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the contiguous dialogue blocks of a split (file row order)."""
    if len(dialogue_id) == 0:
        return []
    change = np.flatnonzero(dialogue_id[1:] != dialogue_id[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(dialogue_id)]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def encode_labels(raw: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Class index of each raw label, :data:`IGNORE` where it is not in ``class_names``."""
    lookup = {name: i for i, name in enumerate(class_names)}
    return np.array([lookup.get(str(x), IGNORE) for x in raw], dtype=np.int64)


def speaker_indices(speaker: np.ndarray, blocks: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per row, its speaker's number within its dialogue block by first appearance; ``NO_SPEAKER`` for
    an empty name (unknown speaker)."""
    out = np.full(len(speaker), NO_SPEAKER, dtype=np.int64)
    for start, end in blocks:
        seen: dict[str, int] = {}
        for row in range(start, end):
            name = str(speaker[row]).strip()
            if name:
                out[row] = seen.setdefault(name, len(seen))
    return out


def head_order(head_classes: Sequence[str] | None, class_names: Sequence[str], where: str) -> np.ndarray:
    """Column of the text head's logits for each class of the class map, matched by name.

    Raises
    ------
    FeaturesError
        One line: ``where`` has no head logits (re-extract with a fine-tuned text folder), or the head's
        classes are not the class map's.
    """
    if head_classes is None:
        raise FeaturesError(
            f"{where} holds no text_logits (the fine-tuned text head's logits), which --head-residual adds; "
            "re-extract it with a fine-tuned text folder (m2f extract fine-tunes one by default; a "
            "--text-model folder written by the fine-tuning works too), or drop --head-residual"
        )
    if sorted(head_classes) != sorted(class_names) or len(set(head_classes)) != len(head_classes):
        raise FeaturesError(
            f"{where}: the text head's classes {list(head_classes)} are not the class map's "
            f"{list(class_names)}; --head-residual needs a text model fine-tuned on these classes "
            "(choose the matching --class-map, or drop --head-residual)"
        )
    where_of = {name: i for i, name in enumerate(head_classes)}
    return np.array([where_of[name] for name in class_names], dtype=np.int64)


def load_split(
    path: str | Path,
    split: str,
    class_names: Sequence[str],
    modalities: str = "tav",
    head_residual: bool = False,
) -> DialogueSplit:
    """Load a split of a features.h5 as padded dialogue tensors (on the CPU).

    Parameters
    ----------
    path : path-like
        A features.h5 in the format of :mod:`pipeline.store.features`.
    split : str
        ``train``, ``dev`` or ``test``.
    class_names : sequence of str
        The class map; other raw labels become :data:`IGNORE`.
    modalities : str
        Which of ``t``, ``a``, ``v`` to load.
    head_residual : bool
        Also load the text head's logits as ``residual`` (in the class map's order).

    Raises
    ------
    KeyError
        If the file has no such split.
    ValueError
        If a dialogue is not one contiguous block (the file breaks the cache format).
    """
    return split_from_arrays(
        read_split(path, split), split, class_names, modalities, f"{path}/{split}", head_residual
    )


def split_from_arrays(
    arrays,
    split: str,
    class_names: Sequence[str],
    modalities: str = "tav",
    where: str = "the features",
    head_residual: bool = False,
) -> DialogueSplit:
    """:func:`load_split` of rows already in memory (a :class:`pipeline.store.features.SplitArrays`, e.g. the
    rows ``m2f predict`` just featurized), in the same row order rules."""
    blocks = dialogue_blocks(arrays.dialogue_id)
    if len({arrays.dialogue_id[s] for s, _ in blocks}) != len(blocks):
        raise ValueError(
            f"{where}: a dialogue is split over several blocks; the file breaks the "
            "cache format (rows sorted by dialogue then position); rebuild it with m2f extract"
        )
    lengths = np.array([e - s for s, e in blocks], dtype=np.int64)
    n_dialogues, max_len = len(blocks), int(lengths.max(initial=0))
    dialogue_of_row = np.repeat(np.arange(n_dialogues), lengths)
    pos_in_dialogue = np.arange(len(arrays)) - np.repeat([s for s, _ in blocks], lengths)
    flat_index = dialogue_of_row * max_len + pos_in_dialogue

    def scatter(values: np.ndarray, fill) -> torch.Tensor:
        out = np.full((n_dialogues * max_len,) + values.shape[1:], fill, dtype=values.dtype)
        out[flat_index] = values
        return torch.from_numpy(out.reshape((n_dialogues, max_len) + values.shape[1:]))

    labels = encode_labels(arrays.label, class_names)
    features, present = {}, {}
    for m in normalize_modalities(modalities):
        emb_name, flag_name = MODALITY_FIELDS[MODALITY_OF_LETTER[m]]
        features[m] = scatter(np.asarray(getattr(arrays, emb_name), dtype=np.float32), 0.0)
        present[m] = scatter(np.asarray(getattr(arrays, flag_name), dtype=bool), False)
    residual = None
    if head_residual:
        order = head_order(getattr(arrays, "text_logits_classes", None), class_names, where)
        residual = scatter(np.asarray(arrays.text_logits, dtype=np.float32)[:, order], 0.0)
    excluded = Counter(str(x) for x, y in zip(arrays.label, labels, strict=True) if y == IGNORE)
    return DialogueSplit(
        name=split,
        features=features,
        present=present,
        mask=scatter(np.ones(len(arrays), dtype=bool), False),
        labels=scatter(labels, IGNORE),
        speakers=scatter(speaker_indices(arrays.speaker, blocks), NO_SPEAKER),
        lengths=lengths,
        utt_id=np.asarray(arrays.utt_id, dtype=object),
        raw_label=np.asarray(arrays.label, dtype=object),
        flat_index=flat_index,
        excluded=dict(excluded),
        residual=residual,
    )


@dataclass(frozen=True)
class FeatureFileInfo:
    """What the trainer needs to know about a features.h5 before loading it."""

    path: str
    dataset: str
    splits: tuple[str, ...]
    dims: dict[str, int]
    #: the classes of the saved text head logits (``text_logits``), None when the file has none
    text_logits_classes: tuple[str, ...] | None = None


def check_features(path: str | Path) -> None:
    """Stop on the first problem of a features.h5 (:func:`pipeline.store.features.validate_features`).

    A file that is not HDF5, a missing or short dataset, a 1-D embedding, widths that differ between
    splits, ids or positions out of order, a NaN or infinity: each would otherwise surface as a
    traceback deep in torch, or train silently on garbage.

    Raises
    ------
    FeaturesError
        One line: the first problem (file, split, dataset, row) and how many more there are.
    """
    problems = validate_features(path)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise FeaturesError(f"{problems[0]}{more}; rebuild the file with `m2f extract`")


def inspect_features(path: str | Path) -> FeatureFileInfo:
    """Dataset attribute, splits and embedding widths of a features.h5, after checking the whole file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    FeaturesError
        If the file breaks the cache format or holds a non-finite number (:func:`check_features`).
    ValueError
        If it lacks a train or dev split (dev selects the epoch; test is optional).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such features file; build one with `m2f extract`")
    check_features(path)
    attrs = read_attrs(path)
    splits = tuple(list_splits(path))
    missing = [s for s in ("train", "dev") if s not in splits]
    if missing:
        raise ValueError(
            f"{path}: missing split(s) {missing} (it has {list(splits)}); the trainer needs train "
            "and dev (the epoch is selected on dev, never on test)"
        )
    with h5py.File(path, "r") as f:
        train = f["train"]
        dims = {x: int(train[MODALITY_FIELDS[m][0]].shape[1]) for x, m in MODALITY_OF_LETTER.items()}
        per_split = {logits_classes(f[s]) for s in splits}
    return FeatureFileInfo(
        path=str(path),
        dataset=str(attrs.get("dataset", "custom")),
        splits=splits,
        dims=dims,
        # every split has the same head logits, or the file counts as having none
        text_logits_classes=per_split.pop() if len(per_split) == 1 else None,
    )


def batch_order(
    n_dialogues: int,
    batch_size: int,
    generator: torch.Generator | None,
    lengths: np.ndarray | None = None,
    bucket: int = 50,
) -> list[torch.Tensor]:
    """Dialogue indices cut into batches (CPU tensors).

    Parameters
    ----------
    n_dialogues, batch_size : int
    generator : torch.Generator or None
        Shuffle with it; None keeps file order (or length order, see ``lengths``).
    lengths : ndarray, optional
        Dialogue lengths. With a generator: dialogues are shuffled, sorted by length inside windows of
        ``bucket * batch_size`` dialogues, cut into batches, and the batches shuffled, so a batch
        holds dialogues of similar length (less padding) while the order stays random. Without a
        generator: batches of length-sorted dialogues (for evaluation).
    bucket : int
        Window size in batches for the length sort.
    """
    if generator is None:
        order = (
            torch.arange(n_dialogues)
            if lengths is None
            else torch.from_numpy(np.argsort(lengths, kind="stable"))
        )
        return list(torch.split(order, batch_size))
    order = torch.randperm(n_dialogues, generator=generator)
    if lengths is None:
        return list(torch.split(order, batch_size))
    windows = torch.split(order, bucket * batch_size)
    order = torch.cat([w[torch.from_numpy(np.argsort(lengths[w.numpy()], kind="stable"))] for w in windows])
    batches = list(torch.split(order, batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
