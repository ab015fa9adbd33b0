"""Training batches for the encoders: one DataLoader for all epochs of a run (:class:`TrainLoader`).

:class:`EpochBatches` serves every epoch's augmented class-balanced batches keyed ``(epoch, b)``, so
persistent worker processes (started once, with ``forkserver``) load every epoch.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import torch

from pipeline.encoders.network import Encoder
from pipeline.encoders.samples import MediaSamples, TrainBatches, balanced_batches
from pipeline.encoders.train_config import EncoderTrainConfig


class EpochBatches(torch.utils.data.Dataset):
    """The augmented batches of every epoch, keyed ``(epoch, b)``: one dataset for persistent workers.

    Epoch ``e``'s batches are :func:`balanced_batches` drawn from ``(seed, e)`` and loaded by
    :class:`TrainBatches`, exactly as a loader built for that epoch alone would load them.
    """

    def __init__(self, train: MediaSamples, contract, cfg: EncoderTrainConfig, steps: int):
        # what TrainBatches reads of the samples, without their open HDF5 file (sent to the workers)
        self.train = SimpleNamespace(
            path=train.path,
            split=train.split,
            modality=train.modality,
            classes=train.classes,
            labels=train.labels,
            given_labels=train.given_labels,
        )
        self.contract, self.cfg, self.steps = contract, cfg, steps
        self._epoch: tuple[int, TrainBatches] | None = None

    def __len__(self) -> int:
        return self.steps

    def for_epoch(self, epoch: int) -> TrainBatches:
        if self._epoch is None or self._epoch[0] != epoch:
            cfg = self.cfg
            batches = balanced_batches(
                self.train.labels, cfg.batch_size, self.steps, np.random.default_rng([cfg.seed, epoch])
            )
            self._epoch = (
                epoch,
                TrainBatches(self.train, batches, self.contract, cfg.seed, epoch, cfg.audio_augment),
            )
        return self._epoch[1]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        epoch, b = key
        return self.for_epoch(epoch)[b]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_epoch": None}


class _EpochKeys(torch.utils.data.Sampler):
    """``(epoch, 0) .. (epoch, steps - 1)``; runs in the main process, so setting ``epoch`` is enough."""

    def __init__(self, steps: int):
        self.steps, self.epoch = steps, 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return ((self.epoch, b) for b in range(self.steps))


class TrainLoader:
    """One DataLoader for all epochs of a run: its worker processes start once and stay.

    Workers are started with ``forkserver`` (a fork of a process running dask's or tqdm's threads can
    deadlock) and run single-threaded.
    """

    def __init__(
        self, train: MediaSamples, encoder: Encoder, cfg: EncoderTrainConfig, device: str, steps: int
    ):
        self.workers = resolve_workers(cfg.num_workers, device)
        self.keys = _EpochKeys(steps)
        self.loader: torch.utils.data.DataLoader | None = torch.utils.data.DataLoader(
            EpochBatches(train, encoder.contract, cfg, steps),
            batch_size=None,
            sampler=self.keys,
            num_workers=self.workers,
            worker_init_fn=_single_thread if self.workers else None,
            multiprocessing_context="forkserver" if self.workers else None,
            persistent_workers=self.workers > 0,
            pin_memory=torch.device(device).type == "cuda",
        )

    def epoch(self, epoch: int):
        """An iterator over epoch ``epoch``'s ``(x, y)`` batches."""
        self.keys.epoch = epoch
        if self.loader is None:
            raise RuntimeError("the loader is closed")
        return iter(self.loader)

    def close(self) -> None:
        self.loader = None  # the persistent workers stop with their iterator


def resolve_workers(num_workers: int | None, device: str) -> int:
    """DataLoader workers: as given, else 0 on CPU and ``min(8, cpus - 1)`` on CUDA."""
    if num_workers is not None:
        return num_workers
    return min(8, max((os.cpu_count() or 1) - 1, 0)) if torch.device(device).type == "cuda" else 0


def _single_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)
