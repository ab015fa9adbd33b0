"""Triplet training of the audio, face and scene extractors from ``media.h5`` (docs/DESIGN.md section 2.4).

For each modality: class-balanced batches of the train split (P emotions x K samples), the encoder
embeds them, online semi-hard mining (FaceNet) picks the triplets, and Eq. 9 (:mod:`.losses`) is
minimised with Adam (lr 1e-4, weight decay 1e-6). After every epoch a probe (:mod:`.probe`) is fitted
on train embeddings and scored on dev (weighted F1); the best epoch by that score is kept (model
selection on dev, never test). The untrained encoder gets the same probe first, and both figures go
into the checkpoint's ``meta["quality"]``.

Epochs: the paper trains up to 60 (audio) / 100 (visual) epochs; those are the defaults on CUDA. On CPU
the default is :data:`CPU_EPOCHS` (5) so that a small corpus finishes in minutes; pass ``epochs`` to
choose. One epoch = ``ceil(N_train / batch_size)`` batches unless ``steps_per_epoch`` says otherwise.

Resume: after each epoch the full training state (weights, optimiser, best weights, history) is
written atomically to ``<out_dir>/.train-state/<modality>.pt``; a rerun after a kill continues from
the last finished epoch and, since every epoch's random stream is derived from ``(seed, epoch)``,
follows the same path as an uninterrupted run. A finished ``<out_dir>/<modality>.pt`` is not
retrained unless ``overwrite``.

Too little data (fewer than 2 labels with >= 2 samples, e.g. no faces at all): the untrained
encoder is saved with ``meta["trained"] = False`` and a note, and a warning is issued; extraction
goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.atomic import atomic_torch_save
from pipeline.encoders.augment import AudioAugment
from pipeline.encoders.data import MediaSamples, TrainBatches, balanced_batches
from pipeline.encoders.losses import LossConfig, extractor_loss, mine_semihard
from pipeline.encoders.model import ENCODER_KINDS, Encoder, build_encoder, save_encoder
from pipeline.encoders.probe import embed_samples, probe_weighted_f1, subset
from pipeline.locks import folder_lock

log = logging.getLogger(__name__)

CPU_EPOCHS = 5
PAPER_EPOCHS = {"audio": 60, "face": 100, "scene": 100}
DEFAULT_BATCH = {"cpu": 32, "cuda": 128}
STATE_FORMAT = "m2f-encoder-train-state-1"
_PART_NAMES = ("triplet", "var", "cov", "active", "margin")


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


def train_encoders(media_path: str | Path, out_dir: str | Path,
                   modalities: Sequence[str] = ENCODER_KINDS, epochs: int | None = None,
                   device: str = "cpu", seed: int = 0, batch_size: int | None = None,
                   steps_per_epoch: int | None = None, overwrite: bool = False,
                   contract_overrides: dict[str, dict] | None = None, **options) -> dict[str, Path]:
    """Train the extractors of ``modalities`` on ``media.h5`` and write ``<out_dir>/<modality>.pt``.

    Parameters
    ----------
    media_path : path-like
        ``cache/<dataset>/media-<hash>/media.h5`` with ``train`` (and ideally ``dev``) splits.
    out_dir : path-like
        Folder of the checkpoints (``audio.pt``, ``face.pt``, ``scene.pt``).
    modalities : sequence of str
        Any of ``audio``, ``face``, ``scene``.
    epochs : int, optional
        Default: 60 audio / 100 visual on CUDA (the paper), :data:`CPU_EPOCHS` on CPU.
    device : str
        ``cpu`` or ``cuda`` (bf16 autocast and batch 128 by default there).
    seed : int
        Initial weights and random streams.
    batch_size : int, optional
        Default 32 on CPU, 128 on CUDA.
    steps_per_epoch : int, optional
        Batches per epoch (default: one pass over the train samples).
    overwrite : bool
        Retrain even when ``<out_dir>/<modality>.pt`` exists.
    contract_overrides : dict, optional
        Per modality, overrides of the input contract, e.g. ``{"face": {"image_size": 64}}``.
    **options
        Other :class:`EncoderTrainConfig` fields (``clip_seconds``, ``probe``, ``probe_max_train``,
        ``loss``, ``classes``, ...).

    Returns
    -------
    dict
        Modality -> checkpoint path.

    Raises
    ------
    pipeline.locks.CacheLockedError
        Another run is training encoders into ``out_dir``.
    """
    media_path = Path(media_path)
    if not media_path.exists():
        raise FileNotFoundError(f"media file {media_path} does not exist; run `m2f extract` (media stage) "
                                "first or pass the right --media path")
    unknown = [m for m in modalities if m not in ENCODER_KINDS]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; expected some of {ENCODER_KINDS}")
    kind = torch.device(device).type
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    # two runs on one corpus would train into the same folder with the same temporary names
    with folder_lock(out_dir, ".train-encoders.lock", f"training encoders into {out_dir}"):
        for m in modalities:
            cfg = EncoderTrainConfig(
                modality=m, epochs=epochs if epochs is not None else default_epochs(m, device),
                batch_size=batch_size or DEFAULT_BATCH.get(kind, 32), steps_per_epoch=steps_per_epoch,
                seed=seed, amp=(kind == "cuda"),
                contract_overrides=dict((contract_overrides or {}).get(m, {})), **options)
            target = out_dir / f"{m}.pt"
            if target.exists() and not overwrite:
                log.info("%s exists; not retraining (pass overwrite=True / --overwrite)", target)
                paths[m] = target
                continue
            paths[m] = train_encoder(media_path, target, cfg, device=device)
    return paths


def default_epochs(modality: str, device: str) -> int:
    """The paper's epochs on CUDA (60 audio, 100 visual); :data:`CPU_EPOCHS` on CPU."""
    return PAPER_EPOCHS[modality] if torch.device(device).type == "cuda" else CPU_EPOCHS


def state_path_for(out_path: Path) -> Path:
    """Where the resumable training state of checkpoint ``out_path`` lives."""
    return out_path.parent / ".train-state" / out_path.name


def train_encoder(media_path: str | Path, out_path: str | Path, cfg: EncoderTrainConfig,
                  device: str = "cpu") -> Path:
    """Train one extractor per ``cfg`` and save it to ``out_path`` (resuming a killed run).

    Returns
    -------
    Path
        ``out_path``.
    """
    media_path, out_path = Path(media_path), Path(out_path)
    train = _open_split(media_path, "train", cfg.modality, cfg.classes)
    counts = train.label_counts()
    usable = [c for c, n in counts.items() if n >= 2]
    encoder = build_encoder(cfg.modality, seed=cfg.seed, **_contract(train, cfg))
    base_meta = {"modality": cfg.modality, "media": str(media_path), "train_config": cfg.to_dict(),
                 "classes": list(train.classes), "train_counts": counts}
    if len(usable) < 2:
        note = (f"too little {cfg.modality} data in {media_path} to train (label counts {counts}; need at "
                "least 2 labels with >= 2 samples): the encoder keeps its seeded random weights")
        log.warning(note)
        train.close()
        return save_encoder(encoder, out_path, **plain(
            {"trained": False, "note": note, "history": [], "quality": None, **base_meta}))
    dev = _open_split(media_path, "dev", cfg.modality, train.classes, required=False)
    try:
        meta = _fit(encoder, train, dev, cfg, device, state_path_for(out_path))
    finally:
        train.close()
        if dev is not None:
            dev.close()
    encoder.cpu().eval()
    saved = save_encoder(encoder, out_path, **plain({"trained": True, **base_meta, **meta}))
    state_path_for(out_path).unlink(missing_ok=True)
    return saved


def plain(obj):
    """``obj`` with numpy scalars and tuples turned into Python values (``weights_only``-loadable)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _open_split(media_path: Path, split: str, modality: str, classes, required: bool = True
                ) -> MediaSamples | None:
    try:
        return MediaSamples(media_path, split, modality, classes)
    except KeyError as e:
        if required:
            raise ValueError(f"{media_path} has no {split!r} split ({e}); encoders train on the train split "
                             "of the media cache: rebuild it with `m2f extract`") from e
        log.warning(f"{media_path} has no {split!r} split: model selection and the quality figure use a "
                    "held-out fifth of train")
        return None


def _contract(train: MediaSamples, cfg: EncoderTrainConfig) -> dict:
    """Contract overrides; images default to the stored crop size, audio's window is ``clip_seconds``."""
    over = dict(cfg.contract_overrides)
    if cfg.modality == "audio" and cfg.clip_seconds is not None:
        over["max_seconds"] = float(cfg.clip_seconds)
    if cfg.modality != "audio" and "image_size" not in over and len(train):
        over["image_size"] = int(train.raw(0, False, np.random.default_rng(0)).shape[-1])
    return over


def _fit(encoder: Encoder, train: MediaSamples, dev: MediaSamples | None, cfg: EncoderTrainConfig,
         device: str,
         state_path: Path) -> dict:
    """The epoch loop with per-epoch probe, best-epoch selection and resumable state. Returns meta."""
    encoder.to(device)
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    probe_sets = _probe_sets(train, dev, cfg)
    state = _load_state(state_path, cfg)
    if state is None:
        untrained = _probe(encoder, probe_sets, cfg, device)
        state = {"epoch": 0, "history": [], "best_score": -math.inf, "best_epoch": 0,
                 "best": _cpu_state(encoder), "untrained": untrained}
        log.info("%s: untrained probe %s wF1 %.4f", cfg.modality, cfg.probe, untrained)
    else:
        encoder.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        log.info("%s: resuming after epoch %d from %s", cfg.modality, state["epoch"], state_path)
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(train) / cfg.batch_size))
    loader = TrainLoader(train, encoder, cfg, device, steps)
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        losses = train_epoch(encoder, opt, train, cfg, device, epoch, steps, loader=loader)
        probed = epoch % cfg.probe_every == 0 or epoch == cfg.epochs
        score = _probe(encoder, probe_sets, cfg, device) if probed else None
        entry = {"epoch": epoch, **losses, "dev_probe_wf1": score, "seconds": time.perf_counter() - t0}
        state["history"].append(entry)
        if score is not None and score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, best=_cpu_state(encoder))
        state["epoch"] = epoch
        _save_state(state_path, state, encoder, opt, cfg)
        log.info("%s epoch %d/%d: loss %.4f, dev probe wF1 %s (%.1f s)", cfg.modality, epoch, cfg.epochs,
                 losses["loss"], "-" if score is None else f"{score:.4f}", entry["seconds"])
    loader.close()
    encoder.load_state_dict(state["best"])
    n_tr, n_dev = len(probe_sets[0][1]), len(probe_sets[1][1])
    held_out = "dev weighted F1" if probe_sets[1][0] is dev else "weighted F1 on a held-out fifth of train"
    quality = {"probe": cfg.probe, "metric": held_out,
               "trained": state["best_score"], "untrained": state["untrained"],
               "n_probe_train": n_tr, "n_probe_dev": n_dev}
    return {"history": state["history"], "best_epoch": state["best_epoch"], "quality": quality,
            "dev_counts": dev.label_counts() if dev is not None else None}


class EpochBatches(torch.utils.data.Dataset):
    """The augmented batches of every epoch, keyed ``(epoch, b)``: one dataset for persistent workers.

    Epoch ``e``'s batches are :func:`balanced_batches` drawn from ``(seed, e)`` and loaded by
    :class:`TrainBatches`, exactly as a loader built for that epoch alone would load them.
    """

    def __init__(self, train: MediaSamples, contract, cfg: EncoderTrainConfig, steps: int):
        # what TrainBatches reads of the samples, without their open HDF5 file (sent to the workers)
        self.train = SimpleNamespace(path=train.path, split=train.split, modality=train.modality,
                                     classes=train.classes, labels=train.labels)
        self.contract, self.cfg, self.steps = contract, cfg, steps
        self._epoch: tuple[int, TrainBatches] | None = None

    def __len__(self) -> int:
        return self.steps

    def for_epoch(self, epoch: int) -> TrainBatches:
        if self._epoch is None or self._epoch[0] != epoch:
            cfg = self.cfg
            batches = balanced_batches(self.train.labels, cfg.batch_size, self.steps,
                                       np.random.default_rng([cfg.seed, epoch]))
            self._epoch = (epoch, TrainBatches(self.train, batches, self.contract, cfg.seed, epoch,
                                               cfg.audio_augment))
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

    def __init__(self, train: MediaSamples, encoder: Encoder, cfg: EncoderTrainConfig, device: str,
                 steps: int):
        self.workers = resolve_workers(cfg.num_workers, device)
        self.keys = _EpochKeys(steps)
        self.loader = torch.utils.data.DataLoader(
            EpochBatches(train, encoder.contract, cfg, steps), batch_size=None, sampler=self.keys,
            num_workers=self.workers, worker_init_fn=_single_thread if self.workers else None,
            multiprocessing_context="forkserver" if self.workers else None,
            persistent_workers=self.workers > 0, pin_memory=torch.device(device).type == "cuda")

    def epoch(self, epoch: int):
        """An iterator over epoch ``epoch``'s ``(x, y)`` batches."""
        self.keys.epoch = epoch
        return iter(self.loader)

    def close(self) -> None:
        self.loader = None  # the persistent workers stop with their iterator


def train_epoch(encoder: Encoder, opt: torch.optim.Optimizer, train: MediaSamples, cfg: EncoderTrainConfig,
                device: str, epoch: int, steps: int, loader: TrainLoader | None = None) -> dict[str, float]:
    """One epoch of ``steps`` semi-hard triplet steps; its random stream depends only on (seed, epoch).

    ``loader``: the run's :class:`TrainLoader` (one is made for this epoch alone without it).

    Returns
    -------
    dict
        Mean ``loss`` (Eq. 9), ``triplet``, ``var``, ``cov``, ``active`` (fraction of triplets whose
        hinge is on) and ``margin`` over the steps, ``steps`` taken and ``triplets_per_step``.
    """
    if loader is None:
        loader = TrainLoader(train, encoder, cfg, device, steps)
    encoder.train()
    sums = dict.fromkeys(("loss", *_PART_NAMES), 0.0)
    n_steps, n_triplets = 0, 0
    for x, lengths, y in loader.epoch(epoch):
        x, y = x.to(device, non_blocking=True), y.to(device)
        if lengths is not None:
            lengths = lengths.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp):
            z = encoder.project(x, lengths)
        a, p, n = mine_semihard(F.normalize(z.float(), dim=-1), y)
        if len(a) == 0:
            continue
        parts = extractor_loss(z[a], z[p], z[n], cfg.loss)
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()
        vals = parts.as_floats()
        sums["loss"] += vals["total"]
        for k in _PART_NAMES:
            sums[k] += vals[k]
        n_steps += 1
        n_triplets += len(a)
    encoder.eval()
    out = {k: v / max(n_steps, 1) for k, v in sums.items()}
    out["steps"] = n_steps
    out["triplets_per_step"] = n_triplets / max(n_steps, 1)
    return out


def resolve_workers(num_workers: int | None, device: str) -> int:
    """DataLoader workers: as given, else 0 on CPU and ``min(8, cpus - 1)`` on CUDA."""
    if num_workers is not None:
        return num_workers
    return min(8, max((os.cpu_count() or 1) - 1, 0)) if torch.device(device).type == "cuda" else 0


def _single_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _probe_sets(train: MediaSamples, dev: MediaSamples | None, cfg: EncoderTrainConfig):
    """(samples, indices) for the probe's fit and score parts; without dev, a held-out fifth of train."""
    tr_idx = subset(train.labels, cfg.probe_max_train, cfg.seed)
    if dev is not None and len(dev):
        return (train, tr_idx), (dev, subset(dev.labels, cfg.probe_max_dev, cfg.seed))
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(tr_idx)
    cut = max(1, len(perm) // 5)
    return (train, np.sort(perm[cut:])), (train, np.sort(perm[:cut]))


def _probe(encoder: Encoder, probe_sets, cfg: EncoderTrainConfig, device: str) -> float:
    (fit_s, fit_i), (score_s, score_i) = probe_sets
    kw = {"device": device, "batch_size": cfg.batch_size}
    fx = embed_samples(encoder, fit_s, fit_i, **kw)
    sx = embed_samples(encoder, score_s, score_i, **kw)
    return probe_weighted_f1(fx, fit_s.labels[fit_i], sx, score_s.labels[score_i], cfg.probe, cfg.seed)


def _cpu_state(encoder: Encoder) -> dict:
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


def _resume_key(cfg: EncoderTrainConfig) -> dict:
    d = cfg.to_dict()
    d.pop("epochs")  # more epochs may be asked for on a rerun
    d.pop("num_workers")  # batches are the same whatever the number of workers
    if d["probe_every"] == 1:
        d.pop("probe_every")  # states written before the option resume as before
    return d


def _save_state(path: Path, state: dict, encoder: Encoder, opt: torch.optim.Optimizer,
                cfg: EncoderTrainConfig) -> None:
    atomic_torch_save({**state, "format": STATE_FORMAT, "config": _resume_key(cfg),
                       "model": _cpu_state(encoder), "optim": opt.state_dict()}, path)


def _load_state(path: Path, cfg: EncoderTrainConfig) -> dict | None:
    """The saved training state, or None when there is none; a state of other settings is an error."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"training state {path} is unreadable ({e}); delete it to start this encoder "
                         "from scratch") from e
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an m2f encoder training state; delete it to start from scratch")
    if state["config"] != _resume_key(cfg):
        raise ValueError(f"training state {path} was made with other settings ({state['config']}); rerun "
                         "with the same options, or delete it to start from scratch")
    return state
