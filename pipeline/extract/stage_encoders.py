"""Stage 3, encoders: which audio/face/scene encoders the workers load, and whether they fit the media.

``--encoders random`` (seeded random weights), ``--encoders DIR``, or by default the encoders cached for
this media cache, these train+dev labels and the current training recipe
(:meth:`pipeline.store.layout.CacheLayout.encoders_dir`), trained now if missing, on the labels of the
manifest (:func:`training_labels`; the media cache's key and ``label`` column do not follow label fixes).
Before embedding, each encoder's input contract is compared with the settings stored in ``media.h5``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipeline.corpora.base import CLASS_MAPS
from pipeline.extract.options import ExtractError, ExtractOptions
from pipeline.manifest import Utterance
from pipeline.names import ENCODER_KINDS
from pipeline.shown import brief
from pipeline.store.cache import config_hash

logger = logging.getLogger(__name__)


#: The splits encoder training reads (train learns, dev selects the epoch); their labels key the cache.
TRAINING_SPLITS = ("train", "dev")


def training_labels(utterances: Iterable[Utterance]) -> dict[str, str]:
    """Utterance id -> label ("" for none) of the train and dev utterances: what encoder training learns."""
    return {u.id: u.label or "" for u in utterances if u.split in TRAINING_SPLITS}


def labels_key(labels: Mapping[str, str]) -> str:
    """12 hex digits naming a set of training labels (order-free), part of the encoder folder's key."""
    return config_hash({"labels": sorted(labels.items())})


def stored_labels(media_path: str | Path) -> dict[str, str]:
    """The train and dev labels stored in a ``media.h5`` (those of the manifest it was decoded from)."""
    from pipeline.store.h5rows import RowReader

    out: dict[str, str] = {}
    for split in TRAINING_SPLITS:
        try:
            reader = RowReader(media_path, split)
        except KeyError:
            continue
        with reader:
            out.update(zip(map(str, reader.utt_ids), map(str, reader.column("label")), strict=True))
    return out


def stage_encoders(
    opts: ExtractOptions, media_path: Path | None, media_key: str, labels: Mapping[str, str]
) -> str | None:
    """The encoders workers load: ``random``, or the absolute path of a given, cached or trained folder.

    ``labels`` (:func:`training_labels`) are what default encoders are trained on and keyed by.
    """
    if not opts.needs_media:
        return None
    if opts.encoders == "random":
        logger.info(
            "encoders: RANDOM weights (seeded, reproducible) -- features carry no learned information"
        )
        return "random"
    if opts.encoders is not None:
        folder = Path(opts.encoders).resolve()
        check_encoder_dir(folder, "--encoders")
        return str(folder)
    folder, missing = cached_encoders(opts, media_key, labels)
    if not missing:
        logger.info("encoders: using cached %s", folder)
        return str(folder)
    check_trainable(opts, folder)
    if media_path is None:  # the media stage runs first whenever media are needed
        raise ExtractError("encoder training needs the media cache, and none was written")
    try:
        from pipeline.encoders.train import train_encoders
        from pipeline.encoders.train_config import TrainEncodersConfig
    except ImportError as e:
        raise ExtractError(
            f"no trained encoders in {folder} (missing {missing}) and encoder training is not available "
            f"({e}); pass `--encoders random` for seeded random weights or `--encoders DIR` with "
            "audio.pt, face.pt, scene.pt"
        ) from e
    logger.info(
        "encoders: training %s on %s -> %s (pass --encoders DIR|random to skip)", missing, media_path, folder
    )
    # triplets only over the corpus's standard classes (IEMOCAP's xxx/oth/sur are not emotions to learn)
    train_encoders(
        TrainEncodersConfig(
            media=media_path,
            out=folder,
            modalities=tuple(missing),
            device=opts.device,
            classes=CLASS_MAPS.get(opts.dataset),
            labels=labels,
        )
    )
    check_encoder_dir(folder, "trained encoders")
    return str(folder)


def cached_encoders(
    opts: ExtractOptions, media_key: str, labels: Mapping[str, str]
) -> tuple[Path, list[str]]:
    """The default encoder folder for this media, these labels and the current recipe, and the
    checkpoints it still lacks."""
    folder = opts.layout.encoders_dir(media_key, labels_key(labels))
    return folder, [m for m in ENCODER_KINDS if not (folder / f"{m}.pt").exists()]


def check_trainable(opts: ExtractOptions, folder: Path) -> None:
    """Encoders can be trained only with the train split selected."""
    if "train" not in opts.splits:
        raise ExtractError(
            f"no trained encoders in {folder}, and they are trained on the train split, which "
            f"--splits {','.join(opts.splits)} leaves out; add train to --splits, or pass "
            "`--encoders DIR` or `--encoders random`"
        )


def check_encoder_dir(folder: Path, what: str) -> None:
    """``folder`` holds ``audio.pt``, ``face.pt``, ``scene.pt``, or :class:`ExtractError` says what to do."""
    missing = [f"{m}.pt" for m in ENCODER_KINDS if not (folder / f"{m}.pt").exists()]
    if missing:
        raise ExtractError(
            f"{what} {folder} lacks {missing}; train them with `m2f train-encoders` "
            "or pass `--encoders random`"
        )


def check_given_encoders(opts: ExtractOptions, media_cfg: dict) -> None:
    """``--encoders DIR`` holds the three checkpoints, and given encoders fit this run's media config."""
    if opts.encoders is None:
        return
    given = "random" if opts.encoders == "random" else str(Path(opts.encoders).resolve())
    if given != "random":
        check_encoder_dir(Path(given), "--encoders")
        check_encoder_weights(Path(given))
    check_input_contract(given, media_cfg, opts.modalities, "the media config of this run")


def check_encoder_weights(folder: Path) -> None:
    """Load each checkpoint of ``folder`` as the workers will, and check its weights are finite.

    Raises
    ------
    ExtractError
        One line naming the first checkpoint that cannot be loaded or holds NaN/infinity.
    """
    import torch

    from pipeline.encoders.checkpoint import load_encoder

    for kind in ENCODER_KINDS:
        path = folder / f"{kind}.pt"
        try:
            encoder = load_encoder(path)
        except Exception as e:  # a foreign pickle, truncated bytes, wrong shapes: all mean "not usable"
            raise ExtractError(
                f"--encoders: {path} cannot be loaded ({type(e).__name__}: {brief(e)}); "
                "retrain it with `m2f train-encoders` or pass `--encoders random`"
            ) from e
        bad = [
            name
            for name, t in encoder.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad:
            raise ExtractError(
                f"--encoders: {path} holds NaN or infinite weights (in {bad[0]}); retrain it "
                "with `m2f train-encoders` or pass `--encoders random`"
            )


def encoder_identity(spec: str | None, seed: int = 0) -> str | None:
    """Identity of the encoder weights (part of the features cache key), without building the models.

    :func:`pipeline.encoders.checkpoint.encoder_identity`, also behind ``EncoderSet.identity``; None for no
    encoders.
    """
    if spec is None:
        return None
    from pipeline.encoders.checkpoint import encoder_identity as identity

    return identity(spec, seed)


# -- input contracts --------------------------------------------------------------------------------
def encoder_contracts(spec: str) -> dict:
    """Each encoder's :class:`pipeline.encoders.inputs.InputContract`, read from its checkpoint.

    Random encoders (``"random"``) are built with the default contract.
    """
    from pipeline.encoders.checkpoint import load_checkpoint
    from pipeline.encoders.inputs import InputContract
    from pipeline.encoders.network import EncoderConfig

    if spec == "random":
        return {m: InputContract(m) for m in ENCODER_KINDS}
    folder = Path(spec)
    try:
        return {
            m: EncoderConfig.from_dict(load_checkpoint(folder / f"{m}.pt")["config"]).contract
            for m in ENCODER_KINDS
        }
    except (FileNotFoundError, ValueError) as e:
        raise ExtractError(str(e).splitlines()[0]) from e


def random_kinds(spec: str) -> set[str]:
    """Encoder kinds whose weights are seeded random: all for ``random``, else those whose checkpoint's
    meta says ``random`` (encoders exported from a run made with ``--encoders random``)."""
    from pipeline.encoders.checkpoint import load_checkpoint

    if spec == "random":
        return set(ENCODER_KINDS)
    files = {m: Path(spec) / f"{m}.pt" for m in ENCODER_KINDS}
    metas = {m: load_checkpoint(f).get("meta") or {} for m, f in files.items() if f.exists()}
    return {m for m, meta in metas.items() if meta.get("random")}


def contract_mismatches(
    spec: str, contracts: dict, media_cfg: dict, modalities: Sequence[str], media_name: str
) -> list[str]:
    """What the encoders expect that the media does not hold, one sentence each (empty: they agree).

    Audio: sample rate and longest clip (``max_seconds``). Face and scene: the image size, for trained
    encoders only; random ones have no trained size (stored crops are resized to their contract).
    """
    where = "random audio encoder" if spec == "random" else f"{Path(spec) / 'audio.pt'}"
    out = []
    if "audio" in modalities:
        c = contracts["audio"]
        if int(c.sample_rate) != int(media_cfg["sample_rate"]):
            out.append(
                f"{where} expects {c.sample_rate} Hz audio but {media_name} holds "
                f"{media_cfg['sample_rate']} Hz"
            )
        if float(c.max_seconds) != float(media_cfg["max_seconds"]):
            out.append(
                f"{where} expects clips of at most {c.max_seconds:g} s but {media_name} holds up to "
                f"{float(media_cfg['max_seconds']):g} s"
            )
    if "visual" in modalities:
        resized = random_kinds(spec)  # random weights have no trained size: crops are resized to them
        for kind, key in (("face", "face_size"), ("scene", "scene_size")):
            if kind in resized:
                continue
            size = contracts[kind].image_size
            if int(size) != int(media_cfg[key]):
                out.append(
                    f"{Path(spec) / (kind + '.pt')} expects {size} px {kind} images but {media_name} "
                    f"holds {media_cfg[key]} px"
                )
    return out


def stored_media_config(media_file: Path) -> dict:
    """The :class:`pipeline.utterance.process.MediaConfig` a ``media.h5`` was written with (its
    ``media_config``)."""
    from pipeline.store.features import read_attrs

    stored = read_attrs(media_file).get("media_config")
    if not isinstance(stored, str):
        raise ExtractError(f"{media_file} carries no media_config attribute; delete its folder and rerun")
    return json.loads(stored)


def check_input_contract(
    spec: str | None, media_cfg: dict, modalities: Sequence[str], media_name: str
) -> None:
    """Compare the encoders' input contracts with a media config (see :func:`contract_mismatches`).

    Raises
    ------
    ExtractError
        One line naming both values of the first mismatch and what to do.
    """
    if spec is None:
        return
    bad = contract_mismatches(spec, encoder_contracts(spec), media_cfg, modalities, media_name)
    if bad:
        more = f" ({len(bad) - 1} more mismatch(es))" if len(bad) > 1 else ""
        raise ExtractError(
            f"{bad[0]}{more}; use encoders trained on this media (`m2f train-encoders`) or "
            "extract the media with the encoders' settings"
        )
