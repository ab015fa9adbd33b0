"""Training samples of the extractors, read lazily from ``media.h5`` (written by the extraction engine).

One sample is one utterance with a label and the modality present:

* audio: ``waveform`` (16 kHz mono) in the encoder's audio view (:func:`pipeline.encoders.inputs.audio_view`):
  at most the contract's ``max_seconds``, a random crop (augmented) in training, the centre in
  evaluation, as extraction embeds it. A training batch pads its clips to the longest with
  ``lengths``; the encoder keeps the padding out of the log-mel standardisation and the pooling.
* face: the utterance's stored crops ``faces``; training draws one crop at random, evaluation takes
  the crop with the largest ``face_weight`` (the largest face of its frame).
* scene: the stored frames ``scenes``; training draws one frame at random, evaluation the middle one.

Labels are the raw corpus strings; the class list is fixed from the train split (labels with at least
two samples) and shared by dev. They come from the ``labels`` given (utterance id -> label, the current
manifest's: ``m2f extract`` passes them) or else from the file's ``label`` column (the labels of the
manifest the media was decoded from, which a later label fix does not change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.encoders.augment import AudioAugment, augment_waveform, image_augmenter
from pipeline.encoders.inputs import InputContract, audio_view, pad_waveforms
from pipeline.store.h5rows import RowReader

FLAG_OF = {"audio": "has_audio", "face": "has_face", "scene": "has_visual"}
DEFAULT_AUDIO_AUGMENT = AudioAugment()


class MediaSamples:
    """Labelled samples of one modality in one split of a media.h5, read row by row.

    Parameters
    ----------
    path : path-like
        The media.h5 file.
    split : str
        ``train``, ``dev`` or ``test``.
    modality : {"audio", "face", "scene"}
        Which stored field a sample is made of.
    classes : sequence of str, optional
        Keep only these labels (in this order = class ids). Default: every non-empty label of the
        split, sorted.
    labels : mapping of str to str, optional
        Utterance id -> label of every row of the split; default: the stored ``label`` column.

    Attributes
    ----------
    rows : np.ndarray
        Row numbers of the samples in the split.
    labels : np.ndarray
        Integer class id of each sample.
    classes : tuple of str
        The class names.
    """

    def __init__(
        self,
        path: str | Path,
        split: str,
        modality: str,
        classes: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ):
        if modality not in FLAG_OF:
            raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(FLAG_OF)}")
        self.path = Path(path)
        self.split = split
        self.modality = modality
        self.reader = RowReader(self.path, split)
        self.given_labels = labels
        if labels is None:
            raw = np.asarray(self.reader.column("label"), dtype=object).astype(str)
        else:
            missing = [u for u in self.reader.utt_ids if u not in labels]
            if missing:
                self.reader.close()
                raise ValueError(
                    f"{self.path} ({split}): no label given for {len(missing)} row(s), e.g. "
                    f"{missing[0]!r}; give the labels of the manifest it was decoded from"
                )
            raw = np.array([labels[u] or "" for u in self.reader.utt_ids], dtype=object).astype(str)
        flag = self.reader.column(FLAG_OF[modality]).astype(bool)
        if classes is None:
            classes = sorted({lab for lab in raw[flag] if lab})
        self.classes = tuple(str(c) for c in classes)
        cid = {c: i for i, c in enumerate(self.classes)}
        keep = flag & np.array([lab in cid for lab in raw], dtype=bool)
        self.rows = np.flatnonzero(keep)
        self.labels = np.array([cid[lab] for lab in raw[keep]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def label_counts(self) -> dict[str, int]:
        """Number of samples per class name."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def raw(self, i: int, train: bool, rng: np.random.Generator) -> np.ndarray:
        """The stored array of sample ``i``: a waveform ``(n,)`` or one uint8 image ``(3, S, S)``."""
        row = int(self.rows[i])
        if self.modality == "audio":
            return np.asarray(self.reader.row(row, ["waveform"])["waveform"], dtype=np.float32)
        if self.modality == "face":
            r = self.reader.row(row, ["faces", "face_weight"])
            faces, weights = r["faces"], np.asarray(r["face_weight"])
            k = int(rng.integers(len(faces))) if train else int(np.argmax(weights))
            return faces[k]
        frames = self.reader.row(row, ["scenes"])["scenes"]
        k = int(rng.integers(len(frames))) if train else len(frames) // 2
        return frames[k]

    def close(self) -> None:
        self.reader.close()


def load_batch(
    samples: MediaSamples,
    indices: Sequence[int] | np.ndarray,
    contract: InputContract,
    train: bool,
    rng: np.random.Generator,
    audio_augment: AudioAugment | None = DEFAULT_AUDIO_AUGMENT,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model-ready batch and, for audio, the real length of each clip.

    Parameters
    ----------
    samples : MediaSamples
        Where the samples come from.
    indices : sequence of int
        Sample numbers.
    contract : InputContract
        The encoder's input contract (sample rate, audio window, image size).
    train : bool
        Random crop/frame/face and augmentation (True) or the fixed evaluation view (False).
    rng : np.random.Generator
        Source of the random choices (image transforms draw from torch's global generator).
    audio_augment : AudioAugment or None
        Waveform augmentation when ``train``; None disables it (the crop stays random).

    Returns
    -------
    x : torch.Tensor
        Zero-padded waveforms ``(B, T_max)`` float32, or images ``(B, 3, S, S)`` uint8.
    lengths : torch.Tensor or None
        ``(B,)`` real samples per audio row; None for images.
    """
    if samples.modality == "audio":
        window = int(round(contract.max_seconds * contract.sample_rate))
        waves = []
        for i in indices:
            w = samples.raw(i, train, rng)
            if train and audio_augment is not None:
                waves.append(augment_waveform(w, window, rng, audio_augment))
            else:
                waves.append(audio_view(w, contract, rng if train else None))
        return pad_waveforms(waves)
    size = contract.image_size
    imgs = [torch.from_numpy(np.ascontiguousarray(samples.raw(i, train, rng))) for i in indices]
    if train:
        aug = image_augmenter(size)
        return torch.stack([aug(img) for img in imgs]), None
    batch = torch.stack(imgs)
    if batch.shape[-1] != size or batch.shape[-2] != size:
        batch = (
            F.interpolate(
                batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    return batch, None


def balanced_batches(
    labels: np.ndarray, batch_size: int, n_batches: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Class-balanced batches of sample indices (P classes x K samples, FaceNet style).

    Only classes with at least two samples take part. P = all of them when ``batch_size`` allows
    two per class, else a random ``batch_size // 2`` of them; K = ``batch_size // P`` distinct samples
    per class (fewer when a class is smaller).

    Returns
    -------
    list of np.ndarray
        ``n_batches`` index arrays.
    """
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    by_class = [ix for ix in by_class if len(ix) >= 2]
    if len(by_class) < 2:
        raise ValueError("class-balanced batches need at least 2 labels with >= 2 samples each")
    p = min(len(by_class), max(batch_size // 2, 2))
    k = max(batch_size // p, 2)
    batches = []
    for _ in range(n_batches):
        chosen = rng.choice(len(by_class), size=p, replace=False)
        batches.append(
            np.concatenate(
                [rng.choice(by_class[c], size=min(k, len(by_class[c])), replace=False) for c in chosen]
            )
        )
    return batches


class TrainBatches(torch.utils.data.Dataset):
    """The augmented training batches of one epoch, loadable in DataLoader worker processes.

    Batch ``b`` draws its random choices from ``(seed, epoch, b)`` only, so the batches are the same
    whatever the number of workers, and a resumed epoch repeats an uninterrupted one. Each worker
    opens its own reader of the media file (h5py handles are not shared across processes).

    Parameters
    ----------
    samples : MediaSamples
        The train samples (only their path, split, modality, classes, labels and given labels are used).
    batches : list of np.ndarray
        Sample indices of each batch (from :func:`balanced_batches`).
    contract : InputContract
        The encoder's input contract.
    seed, epoch : int
        Identify the random stream.
    audio_augment : AudioAugment or None
        Waveform augmentation.
    """

    def __init__(
        self,
        samples: MediaSamples | SimpleNamespace,  # or its fields alone (EpochBatches, sent to workers)
        batches: list[np.ndarray],
        contract: InputContract,
        seed: int,
        epoch: int,
        audio_augment: AudioAugment | None,
    ):
        self.where = (samples.path, samples.split, samples.modality, samples.classes, samples.given_labels)
        self.labels = samples.labels
        self.batches = batches
        self.contract = contract
        self.seed, self.epoch = seed, epoch
        self.audio_augment = audio_augment
        self._samples: MediaSamples | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Batch ``b``: inputs, audio lengths (None for images) and labels."""
        if self._samples is None:
            self._samples = MediaSamples(*self.where)
        idx = self.batches[b]
        rng = np.random.default_rng([self.seed, self.epoch, b])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**62)))  # torchvision's random image transforms
            x, lengths = load_batch(
                self._samples, idx, self.contract, train=True, rng=rng, audio_augment=self.audio_augment
            )
        return x, lengths, torch.from_numpy(self.labels[idx])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_samples": None}  # workers open their own reader
