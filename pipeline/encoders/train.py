"""Triplet training of the audio, face and scene extractors from ``media.h5`` (docs/DESIGN.md section 2.4).

For each modality: class-balanced batches of the train split (P emotions x K samples), the encoder
embeds them, online semi-hard mining (FaceNet) picks the triplets, and Eq. 9 (:mod:`.losses`) is
minimised with Adam (lr 1e-4, weight decay 1e-6). After every epoch a probe (:mod:`.probe`) is fitted
on train embeddings and scored on dev (weighted F1); the best epoch by that score is kept (model
selection on dev, never test). The untrained encoder gets the same probe first, and both figures go
into the checkpoint's ``meta["quality"]``.

Epochs: the paper trains up to 60 (audio) / 100 (visual) epochs; those are the defaults on CUDA. On CPU
the default is :data:`~pipeline.encoders.train_config.CPU_EPOCHS` (5) so that a small corpus finishes in
minutes; set ``epochs`` to choose. One epoch = ``ceil(N_train / batch_size)`` batches unless
``steps_per_epoch`` says otherwise.

Resume: after each epoch the full training state (weights, optimiser, best weights, history) is
written atomically to ``<out_dir>/.train-state/<modality>.pt``; a rerun after a kill continues from
the last finished epoch and, since every epoch's random stream is derived from ``(seed, epoch)``,
follows the same path as an uninterrupted run. A finished ``<out_dir>/<modality>.pt`` is not
retrained unless ``overwrite``.

Too little data (fewer than 2 labels with >= 2 samples, e.g. no faces at all): the untrained
encoder is saved with ``meta["trained"] = False`` and a note, and a warning is issued; extraction
goes on.

The run's settings are :class:`~pipeline.encoders.train_config.TrainEncodersConfig`, one
:class:`~pipeline.encoders.train_config.EncoderTrainConfig` per modality; the batches come from
:class:`~pipeline.encoders.loader.TrainLoader`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.encoders.checkpoint import save_encoder
from pipeline.encoders.loader import TrainLoader
from pipeline.encoders.losses import extractor_loss, mine_semihard
from pipeline.encoders.network import Encoder, build_encoder
from pipeline.encoders.probe import embed_samples, probe_weighted_f1, subset
from pipeline.encoders.samples import MediaSamples
from pipeline.encoders.train_config import EncoderTrainConfig, TrainEncodersConfig
from pipeline.names import ENCODER_KINDS
from pipeline.store.atomic import atomic_torch_save
from pipeline.store.locks import folder_lock

logger = logging.getLogger(__name__)

STATE_FORMAT = "m2f-encoder-train-state-1"
_PART_NAMES = ("triplet", "var", "cov", "active", "margin")


def train_encoders(config: TrainEncodersConfig) -> Path:
    """Train the extractors of ``config.modalities`` on ``config.media``; write ``<out>/<modality>.pt``.

    Parameters
    ----------
    config : TrainEncodersConfig
        The run (frozen): media file, output folder, modalities, device and the recipe; each
        modality's :class:`EncoderTrainConfig` is ``config.for_modality(m)``. A finished checkpoint is
        kept unless ``config.overwrite``; a killed run resumes from ``<out>/.train-state/``.

    Returns
    -------
    Path
        The output folder ``config.out``, holding one ``<modality>.pt`` per modality.

    Raises
    ------
    FileNotFoundError
        ``config.media`` does not exist.
    ValueError
        An unknown modality, a missing train split, or a training state of other settings.
    pipeline.store.locks.CacheLockedError
        Another run is training encoders into ``config.out``.
    """
    media_path = Path(config.media)
    if not media_path.exists():
        raise FileNotFoundError(
            f"media file {media_path} does not exist; run `m2f extract` (media stage) "
            "first or pass the right --media path"
        )
    unknown = [m for m in config.modalities if m not in ENCODER_KINDS]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; expected some of {ENCODER_KINDS}")
    out_dir = Path(config.out)
    # two runs on one corpus would train into the same folder with the same temporary names
    with folder_lock(out_dir, ".train-encoders.lock", f"training encoders into {out_dir}"):
        for m in config.modalities:
            cfg = config.for_modality(m)
            target = out_dir / f"{m}.pt"
            if target.exists() and not config.overwrite:
                logger.info("%s exists; not retraining (pass overwrite=True / --overwrite)", target)
                continue
            train_encoder(media_path, target, cfg, device=config.device, labels=config.labels)
    return out_dir


def state_path_for(out_path: Path) -> Path:
    """Where the resumable training state of checkpoint ``out_path`` lives."""
    return out_path.parent / ".train-state" / out_path.name


def train_encoder(
    media_path: str | Path,
    out_path: str | Path,
    cfg: EncoderTrainConfig,
    device: str = "cpu",
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Train one extractor per ``cfg`` and save it to ``out_path`` (resuming a killed run).

    Returns
    -------
    Path
        ``out_path``.
    """
    media_path, out_path = Path(media_path), Path(out_path)
    train = _open_split(media_path, "train", cfg.modality, cfg.classes, labels)
    assert train is not None  # required=True: a missing split raises instead
    counts = train.label_counts()
    usable = [c for c, n in counts.items() if n >= 2]
    encoder = build_encoder(cfg.modality, seed=cfg.seed, **_contract(train, cfg))
    base_meta = {
        "modality": cfg.modality,
        "media": str(media_path),
        "train_config": cfg.to_dict(),
        "classes": list(train.classes),
        "train_counts": counts,
        "labels_from": "media.h5" if labels is None else "given (the manifest's)",
    }
    if len(usable) < 2:
        note = (
            f"too little {cfg.modality} data in {media_path} to train (label counts {counts}; need at "
            "least 2 labels with >= 2 samples): the encoder keeps its seeded random weights"
        )
        logger.warning(note)
        train.close()
        return save_encoder(
            encoder,
            out_path,
            **plain({"trained": False, "note": note, "history": [], "quality": None, **base_meta}),
        )
    dev = _open_split(media_path, "dev", cfg.modality, train.classes, labels, required=False)
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


def _open_split(
    media_path: Path,
    split: str,
    modality: str,
    classes,
    labels: Mapping[str, str] | None,
    required: bool = True,
) -> MediaSamples | None:
    try:
        return MediaSamples(media_path, split, modality, classes, labels)
    except KeyError as e:
        if required:
            raise ValueError(
                f"{media_path} has no {split!r} split ({e}); encoders train on the train split "
                "of the media cache: rebuild it with `m2f extract`"
            ) from e
        logger.warning(
            f"{media_path} has no {split!r} split: model selection and the quality figure use a "
            "held-out fifth of train"
        )
        return None


def _contract(train: MediaSamples, cfg: EncoderTrainConfig) -> dict:
    """Contract overrides; images default to the stored crop size, audio's window is ``clip_seconds``."""
    over = dict(cfg.contract_overrides)
    if cfg.modality == "audio" and cfg.clip_seconds is not None:
        over["max_seconds"] = float(cfg.clip_seconds)
    if cfg.modality != "audio" and "image_size" not in over and len(train):
        over["image_size"] = int(train.raw(0, False, np.random.default_rng(0)).shape[-1])
    return over


def _fit(
    encoder: Encoder,
    train: MediaSamples,
    dev: MediaSamples | None,
    cfg: EncoderTrainConfig,
    device: str,
    state_path: Path,
) -> dict:
    """The epoch loop with per-epoch probe, best-epoch selection and resumable state. Returns meta."""
    encoder.to(device)
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    probe_sets = _probe_sets(train, dev, cfg)
    state = _load_state(state_path, cfg)
    if state is None:
        untrained = _probe(encoder, probe_sets, cfg, device)
        state = {
            "epoch": 0,
            "history": [],
            "best_score": -math.inf,
            "best_epoch": 0,
            "best": _cpu_state(encoder),
            "untrained": untrained,
        }
        logger.info("%s: untrained probe %s wF1 %.4f", cfg.modality, cfg.probe, untrained)
    else:
        encoder.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        logger.info("%s: resuming after epoch %d from %s", cfg.modality, state["epoch"], state_path)
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
        logger.info(
            "%s epoch %d/%d: loss %.4f, dev probe wF1 %s (%.1f s)",
            cfg.modality,
            epoch,
            cfg.epochs,
            losses["loss"],
            "-" if score is None else f"{score:.4f}",
            entry["seconds"],
        )
    loader.close()
    encoder.load_state_dict(state["best"])
    n_tr, n_dev = len(probe_sets[0][1]), len(probe_sets[1][1])
    held_out = "dev weighted F1" if probe_sets[1][0] is dev else "weighted F1 on a held-out fifth of train"
    quality = {
        "probe": cfg.probe,
        "metric": held_out,
        "trained": state["best_score"],
        "untrained": state["untrained"],
        "n_probe_train": n_tr,
        "n_probe_dev": n_dev,
    }
    return {
        "history": state["history"],
        "best_epoch": state["best_epoch"],
        "quality": quality,
        "dev_counts": dev.label_counts() if dev is not None else None,
    }


def train_epoch(
    encoder: Encoder,
    opt: torch.optim.Optimizer,
    train: MediaSamples,
    cfg: EncoderTrainConfig,
    device: str,
    epoch: int,
    steps: int,
    loader: TrainLoader | None = None,
) -> dict[str, float]:
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
    fx = embed_samples(encoder, fit_s, fit_i, device=device, batch_size=cfg.batch_size)
    sx = embed_samples(encoder, score_s, score_i, device=device, batch_size=cfg.batch_size)
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


def _save_state(
    path: Path, state: dict, encoder: Encoder, opt: torch.optim.Optimizer, cfg: EncoderTrainConfig
) -> None:
    atomic_torch_save(
        {
            **state,
            "format": STATE_FORMAT,
            "config": _resume_key(cfg),
            "model": _cpu_state(encoder),
            "optim": opt.state_dict(),
        },
        path,
    )


def _load_state(path: Path, cfg: EncoderTrainConfig) -> dict | None:
    """The saved training state, or None when there is none; a state of other settings is an error."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"training state {path} is unreadable ({e}); delete it to start this encoder from scratch"
        ) from e
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an m2f encoder training state; delete it to start from scratch")
    if state["config"] != _resume_key(cfg):
        raise ValueError(
            f"training state {path} was made with other settings ({state['config']}); rerun "
            "with the same options, or delete it to start from scratch"
        )
    return state
