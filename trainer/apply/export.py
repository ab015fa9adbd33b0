"""``m2f export``: a trained run -> a self-contained model folder that ``m2f predict`` loads safely.

Layout of ``MODEL_DIR``::

    README.md                       model card: dataset, modalities, dev/test weighted F1, date, version
    m2f_model.json                  format, class names, dialogue-model config, how features were made
    label_map.json                  the run's label map (classes in index order, excluded raw labels)
    dialog.safetensors              the dialogue model's weights (the chosen seed's best.pt)
    encoders/<kind>.safetensors     audio, face, scene encoders (only when the model reads audio/visual)
    encoders/<kind>.json            their config (input contract) and training notes
    text_model/                     the text model folder: safetensors weights, tokenizer, m2f_text.json
                                    (only when the model reads text; with its classification head when
                                    the dialogue model adds the head's logits, ``--head-residual``)
    checksums.json                  sha256 of every other file

Loading (:func:`load_model_folder`) never unpickles and never runs code from the folder: it is verified
once by :mod:`trainer.apply.model_folder` (checksums, an allow-list of names and formats, no symlinks, no
``auto_map``, size caps) while its bytes are copied into a private folder, and everything is then read
from that copy only. A refused folder is a one-line :class:`ModelFolderError`.

Where the encoders and the text model come from: the features file of the run records their
*identities* (a hash of the weight files), not their paths. Export looks for the folder with that
identity in the features file's cache (:class:`pipeline.store.layout.CacheLayout`: its encoders folders and
finished fine-tuned text models), among the shipped MiniLM, and in the folders passed as ``encoders`` /
``text_model``; ``random``
encoders are rebuilt from their seed. A folder is used only if its identity matches.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.shown import brief, shown
from pipeline.store.atomic import atomic_write_json, atomic_write_text
from trainer.apply.model_folder import (
    CHECKSUMS,
    DIALOGUE_WEIGHTS,
    ENCODER_DIR,
    META,
    TEXT_DIR,
    ModelFolderError,
    allowed_name,
    checksums_digest,
    folder_files,
    private_copy,
    read_json_capped,
    text_model_file,
    write_checksums,
)
from trainer.dialogue.model import DialogueEnsemble, DialogueModel, DialogueModelConfig
from trainer.dialogue.selection import selection_text

logger = logging.getLogger(__name__)

MODEL_FORMAT = "m2f-model-1"
#: Most members an exported ensemble may hold (checked before any model is built).
MAX_MEMBERS = 32


# -- safetensors -----------------------------------------------------------------------------------
def save_weights(path: Path, state_dict: dict[str, torch.Tensor], kind: str) -> Path:
    """Write a state dict as safetensors (contiguous CPU copies), atomically."""
    from safetensors.torch import save_file

    from pipeline.store.atomic import commit_tmp, tmp_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = tmp_path(path)
    save_file(tensors, str(tmp), metadata={"format": kind})
    return commit_tmp(tmp, path)


def load_weights(path: Path, name: Path | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file (CPU); anything else (a pickle, a truncated file) is refused cleanly.

    ``name``: the path to print in errors (the user's folder, not the private copy read).
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for every malformed header
        raise ModelFolderError(
            f"{shown(name or path)}: not a safetensors weights file ({type(e).__name__}: "
            f"{shown(e)}); m2f never unpickles weights, export the model again"
        ) from None


def _read_json(path: Path, name: Path | None = None) -> dict:
    """A JSON object (a run's or a model folder's settings) or a one-line :class:`ModelFolderError`."""
    data = read_json_capped(path, name=name)
    if not isinstance(data, dict):
        raise ModelFolderError(f"{shown(name or path)}: not a JSON object; export the model again")
    return data


#: Caps on the dialogue model's settings (checked before any tensor is allocated).
DIALOGUE_CAPS = {"n_classes": 1000, "fusion_layers": 64, "heads": 64, "hidden": 16384, "ff_mult": 16}
MAX_DIM, MAX_LAYERS = 1 << 16, 64


def check_dialogue_config(config: object, meta: dict, where: str) -> DialogueModelConfig:
    """The dialogue-model config of ``m2f_model.json``: right types, sizes within caps, a name per class."""
    fail = f"{where}: dialog_model "
    if not isinstance(config, dict):
        raise ModelFolderError(f"{fail}is not a JSON object; export the model again")
    try:
        cfg = DialogueModelConfig.from_dict(config)
        ints = {k: getattr(cfg, k) for k in DIALOGUE_CAPS}
        ints.update({f"dims.{k}": v for k, v in dict(cfg.dims).items()})
        ints.update({f"layers.{k}": v for k, v in dict(cfg.layers).items()})
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelFolderError(
            f"{fail}is not a dialogue-model config ({shown(e)}); export the model again"
        ) from None
    caps = {
        **DIALOGUE_CAPS,
        **{k: MAX_DIM for k in ints if k.startswith("dims.")},
        **{k: MAX_LAYERS for k in ints if k.startswith("layers.")},
    }
    for key, value in ints.items():
        if type(value) is not int or not 0 <= value <= caps[key]:
            raise ModelFolderError(
                f"{fail}{key} = {shown(value)!s:.40} is not an integer in 0..{caps[key]}; "
                "export the model again"
            )
    if (
        not isinstance(cfg.modalities, str)
        or not cfg.modalities
        or set(cfg.modalities) - set("tav")
        or set(cfg.modalities) - set(cfg.dims)
    ):
        raise ModelFolderError(
            f"{fail}modalities {shown(cfg.modalities)!s:.40} are not letters of tav with "
            "a width each; export the model again"
        )
    flags = {"causal": cfg.causal, "head_residual": cfg.head_residual}
    for key, value in flags.items():
        if type(value) is not bool:
            raise ModelFolderError(
                f"{fail}{key} = {shown(value)!s:.40} is not true or false; export the model again"
            )
    names = meta.get("class_names")
    if not (
        isinstance(names, list) and all(isinstance(c, str) for c in names) and len(set(names)) == len(names)
    ):
        raise ModelFolderError(
            f"{where}: class_names is missing or not a list of distinct names; export the model again"
        )
    if len(names) != cfg.n_classes:
        raise ModelFolderError(
            f"{where}: {len(names)} class_names for a dialogue model of {cfg.n_classes} "
            "classes; export the model again"
        )
    try:
        cfg.validate()
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFolderError(f"{fail}is impossible ({shown(e)}); export the model again") from None
    return cfg


# -- loading -----------------------------------------------------------------------------------------
@dataclass
class ExportedModel:
    """A verified model folder with its dialogue model built (see :func:`load_model_folder`).

    ``folder`` is the private copy of the verified bytes, the only place anything is read from after
    verification; ``origin`` the folder the user named (for messages). :meth:`close` removes the copy
    (also done when the object is garbage-collected).
    """

    folder: Path
    meta: dict
    model: DialogueModel | DialogueEnsemble
    class_names: list[str]
    origin: Path | None = None
    checksums_sha256: str = ""

    def __post_init__(self) -> None:
        if self.origin is not None and self.folder != self.origin:
            import weakref

            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def close(self) -> None:
        """Remove the private copy (the model built from it stays usable; its folders do not)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()

    def shown_name(self, rel: str) -> str:
        """``rel`` inside the user's folder, for a message."""
        return shown((self.origin or self.folder) / rel)

    @property
    def modalities(self) -> str:
        """Letters of the modalities the dialogue model reads (``tav`` order)."""
        return self.model.config.modalities

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.model.config.dims)

    @property
    def text_model(self) -> Path | None:
        """The text model folder (in the private copy), or None for a model that reads no text."""
        return self.folder / TEXT_DIR if "t" in self.modalities else None

    @property
    def media_config(self) -> dict | None:
        """The media settings the run's features were made with (None for a text-only model)."""
        features = self.meta.get("features")
        return features.get("media") if isinstance(features, dict) else None

    def write_encoder_checkpoints(self, out: str | Path) -> Path:
        """Write the encoders as the ``<kind>.pt`` checkpoints ``m2f extract --encoders DIR`` reads.

        The weights come from the verified safetensors files; the checkpoints are plain tensors,
        read back by the engine with ``torch.load(weights_only=True)``.
        """
        from pipeline.encoders.checkpoint import save_encoder
        from pipeline.encoders.network import Encoder, EncoderConfig
        from pipeline.names import ENCODER_KINDS

        out = Path(out)
        origin = self.origin or self.folder
        for kind in ENCODER_KINDS:
            rel = f"{ENCODER_DIR}/{kind}"
            info = _read_json(self.folder / f"{rel}.json", origin / f"{rel}.json")
            try:
                encoder = Encoder(EncoderConfig.from_dict(info["config"]))
                encoder.load_state_dict(
                    load_weights(self.folder / f"{rel}.safetensors", origin / f"{rel}.safetensors")
                )
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                if isinstance(e, ModelFolderError):
                    raise
                raise ModelFolderError(
                    f"{self.shown_name(rel)}.safetensors does not fit its config "
                    f"({shown(str(e).splitlines()[0] if str(e) else type(e).__name__)}); "
                    "export the model again"
                ) from None
            random = {"random": True} if (info.get("meta") or {}).get("random") else {}
            save_encoder(encoder, out / f"{kind}.pt", exported_from=str(origin), **random)
        return out


def is_model_folder(path: Path) -> bool:
    """True for a real folder (not a symlink) holding only what `m2f export` writes, with its format."""
    try:
        if path.is_symlink() or not path.is_dir() or not (path / CHECKSUMS).is_file():
            return False
        meta = read_json_capped(path / META)
        return (
            isinstance(meta, dict)
            and meta.get("format") == MODEL_FORMAT
            and all(allowed_name(n) for n in folder_files(path))
        )
    except (ModelFolderError, OSError):
        return False


def load_model_folder(folder: str | Path, device: str = "cpu") -> ExportedModel:
    """Verify an exported folder once, copy its verified bytes privately, build its dialogue model.

    Everything (settings, weights, encoders, text model) is read from the private copy only
    (:func:`trainer.apply.model_folder.private_copy`), so a file changed after verification is never used.

    Raises
    ------
    ModelFolderError
        Not a folder, a file that does not match ``checksums.json``, a refused file, unreadable weights
        or config (one line).
    """
    origin = Path(folder)
    copy = private_copy(origin)
    try:
        meta = _read_json(copy / META, origin / META)
        where = shown(origin / META)
        if meta.get("format") != MODEL_FORMAT:
            raise ModelFolderError(
                f"{where}: format {shown(meta.get('format'))!s:.40} is not "
                f"{MODEL_FORMAT!r}; "
                "export the model again with this m2f"
            )
        if not isinstance(meta.get("features"), dict):
            raise ModelFolderError(f"{where}: no features settings; export the model again")
        cfg = check_dialogue_config(meta.get("dialog_model"), meta, where)
        if cfg.head_residual:
            residual_classes(copy / TEXT_DIR, list(meta["class_names"]), shown(origin / TEXT_DIR))
        n_members = ensemble_size(meta.get("ensemble"), where)
        state = load_weights(copy / DIALOGUE_WEIGHTS, origin / DIALOGUE_WEIGHTS)
        model: DialogueModel | DialogueEnsemble
        try:
            if n_members:
                model = DialogueEnsemble([DialogueModel(cfg) for _ in range(n_members)])
            else:
                model = DialogueModel(cfg)
            model.load_state_dict(state)  # strict: a missing or unexpected tensor is refused
        except RuntimeError as e:
            raise ModelFolderError(
                f"{shown(origin / DIALOGUE_WEIGHTS)}: does not fit the dialogue-model config "
                f"in {META} ({shown(str(e).splitlines()[0])}); export the model "
                "again"
            ) from None
        digest = checksums_digest(copy)
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    return ExportedModel(copy, meta, model.eval().to(device), list(meta["class_names"]), origin, digest)


def residual_classes(text_folder: Path, class_names: list[str], where: str) -> tuple[str, ...]:
    """The head classes of the text model a ``--head-residual`` dialogue model adds the logits of; a folder
    without that head, or with other classes, is a one-line :class:`ModelFolderError`."""
    from pipeline.text.embedder import head_classes
    from trainer.dialogue.data import FeaturesError, head_order

    try:
        classes = head_classes(text_folder) if text_folder.is_dir() else None
        if classes is None:
            raise FeaturesError(f"{where} holds no text model with a classification head")
        head_order(classes, class_names, where)
    except ValueError as e:
        raise ModelFolderError(
            f"the dialogue model adds the text head's logits (--head-residual), but {shown(e)}; "
            "export the model again"
        ) from None
    return classes


def ensemble_size(ensemble: object, where: str) -> int:
    """Members of the ensemble recorded in ``m2f_model.json`` (0 for a single model)."""
    if ensemble is None:
        return 0
    seeds = ensemble.get("seeds") if isinstance(ensemble, dict) else None
    if not (
        isinstance(seeds, list)
        and 2 <= len(seeds) <= MAX_MEMBERS
        and all(type(x) is int for x in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        raise ModelFolderError(
            f"{where}: ensemble is not a list of 2..{MAX_MEMBERS} distinct seeds; export the model again"
        )
    return len(seeds)


# -- choosing the seed -------------------------------------------------------------------------------
def _finished_seeds(run: Path) -> list[tuple[Path, dict]]:
    """The seed folders of ``run`` that finished with a ``best.pt``, with their report summaries."""
    from trainer.report.summary import seed_dirs, summarize_seed

    try:
        dirs = seed_dirs(run)
    except FileNotFoundError as e:
        raise ModelFolderError(str(e)) from None
    done = [(d, summarize_seed(d)) for d in dirs]
    return [(d, s) for d, s in done if s["state"] == "done" and (d / "best.pt").exists()]


def dev_loss(seed_dir: Path) -> float:
    """Mean dev cross-entropy of a seed's saved dev predictions (its labelled rows); inf when it has none."""
    from trainer.report.summary import read_probabilities

    _, gold, probs, names = read_probabilities(seed_dir / "predictions_dev.csv")
    index = {c: i for i, c in enumerate(names)}
    rows = [(k, index[g]) for k, g in enumerate(gold) if g in index]
    if not rows:
        return math.inf
    p = probs[[k for k, _ in rows], [i for _, i in rows]]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def seed_rule(summary: dict) -> str:
    """How the default seed of a run is chosen: by the run's own ``--select`` criterion, on dev."""
    return "lowest dev loss" if summary.get("select") in ("loss", "average") else "best dev weighted F1"


def choose_seed(run: Path, seed: int | None = None) -> tuple[Path, dict]:
    """The seed folder to export and its report summary (dev/test metrics from its predictions).

    Default: the finished seed that the run's own selection criterion prefers on dev (ties: the lowest
    seed): the best dev weighted F1 for ``--select wf1``, the lowest dev cross-entropy of its saved dev
    predictions for ``loss`` and ``average`` (whose models were kept by dev loss).
    """
    done = _finished_seeds(run)
    if seed is not None:
        for d, s in done:
            if s["seed"] == seed:
                return d, s
        raise ModelFolderError(
            f"{run}: no finished seed {seed} (finished: {[s['seed'] for _, s in done]}); "
            "pick one of those with --seed"
        )
    if not done:
        raise ModelFolderError(f"{run}: no finished seed with best.pt yet; let `m2f train-dialog` finish")
    if seed_rule(done[0][1]) == "lowest dev loss":
        return min(done, key=lambda ds: (dev_loss(ds[0]), ds[1]["seed"]))
    return max(done, key=lambda ds: (ds[1].get("dev", {}).get("weighted_f1", -1.0), -ds[1]["seed"]))


def choose_seeds(run: Path, seeds: Literal["all"] | list[int]) -> list[tuple[Path, dict]]:
    """The seed folders of an ensemble: every finished seed (``"all"``) or the seeds named, in seed order."""
    done = sorted(_finished_seeds(run), key=lambda ds: ds[1]["seed"])
    finished: list[int] = [s["seed"] for _, s in done]
    if seeds != "all":
        missing = sorted(set(seeds) - set(finished))
        if missing:
            raise ModelFolderError(
                f"{run}: no finished seed {missing} (finished: {finished}); pick from those with --seeds"
            )
        done = [(d, s) for d, s in done if s["seed"] in set(seeds)]
    if len(done) < 2:
        raise ModelFolderError(
            f"{run}: an ensemble needs two finished seeds or more (finished: {finished}); "
            "train more with `m2f train-dialog --seeds N`, or export one with --seed"
        )
    if len(done) > MAX_MEMBERS:
        raise ModelFolderError(f"{run}: {len(done)} seeds; an ensemble holds at most {MAX_MEMBERS}")
    return done


def parse_seeds(text: str | None) -> Literal["all"] | list[int] | None:
    """``--seeds``: ``all`` or a comma list of seed numbers (None when not given)."""
    if text is None:
        return None
    if text.strip() == "all":
        return "all"
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ModelFolderError(
            f"--seeds {shown(text)}: give `all` or a comma list of seeds, e.g. 0,1,2"
        ) from None
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ModelFolderError(f"--seeds {shown(text)}: give two distinct seeds or more (or `all`)")
    return seeds


# -- finding the encoders and the text model -----------------------------------------------------------
def _cache_folders(features: Path, kind: str) -> list[Path]:
    """The encoders (``kind="encoders"``) or fine-tuned text model folders of the features file's cache."""
    from pipeline.store.layout import CacheLayout

    layout = CacheLayout.of_features(features)
    return layout.all_encoders_dirs() if kind == "encoders" else layout.all_text_model_dirs()


def find_encoders(identity: str, features: Path, given: str | None = None) -> str:
    """``random`` or the folder whose encoders have ``identity`` (recorded in the features file)."""
    from pipeline.encoders.checkpoint import load_encoder_set
    from pipeline.names import ENCODER_KINDS

    if identity.startswith("random-"):
        return "random"
    candidates = ([Path(given)] if given else []) + _cache_folders(features, "encoders")
    for folder in candidates:
        if all((folder / f"{k}.pt").is_file() for k in ENCODER_KINDS):
            if load_encoder_set(folder).identity == identity:
                return str(folder)
    raise ModelFolderError(
        f"{features}: made with encoders {identity}, found in none of {[str(c) for c in candidates]}; pass "
        "--encoders DIR (the folder given to `m2f extract --encoders`)"
    )


def find_text_model(identity: str, features: Path, given: str | None = None) -> str:
    """The text model folder (or hub id) whose identity starts like ``identity`` (the features file's)."""
    from pipeline.text.embedder import DEFAULT_TEXT_MODEL, model_identity

    name = identity.split("|", 1)[0]
    if name.startswith("hub:"):
        return given or name.removeprefix("hub:")
    wanted = name.split(":", 1)[-1]
    candidates = (
        ([Path(given)] if given else []) + [Path(DEFAULT_TEXT_MODEL)] + _cache_folders(features, "text-model")
    )
    for folder in candidates:
        if (folder / "config.json").is_file() and model_identity(str(folder), True).endswith(":" + wanted):
            return str(folder)
    raise ModelFolderError(
        f"{features}: made with text model {name}, found in none of {[str(c) for c in candidates]}; pass "
        "--text-model DIR (the folder given to `m2f extract --text-model`)"
    )


# -- writing -----------------------------------------------------------------------------------------
def export_encoders(spec: str, out: Path) -> str:
    """The encoders of ``spec`` (``.pt`` folder or ``random``) as safetensors + JSON; returns the identity."""
    from pipeline.encoders.checkpoint import load_checkpoint, load_encoder_set
    from pipeline.names import ENCODER_KINDS

    encoders = load_encoder_set(spec)
    out.mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(ENCODER_KINDS):
        encoder = getattr(encoders, kind)
        meta = (
            {"random": True, "seed": i}
            if encoders.random
            else load_checkpoint(Path(spec) / f"{kind}.pt")["meta"]
        )
        save_weights(out / f"{kind}.safetensors", encoder.state_dict(), "m2f-encoder-1")
        atomic_write_json(out / f"{kind}.json", {"config": encoder.config.to_dict(), "meta": meta})
    return encoders.identity


def export_text_model(source: str, out: Path) -> None:
    """Copy a text model folder (its top-level files) into ``out``; a hub model or pickle weights are
    loaded by transformers and saved as safetensors instead."""
    from pipeline.text.embedder import load_text_model, resolve_model_source

    src, is_local = resolve_model_source(source)
    folder = Path(src)
    out.mkdir(parents=True, exist_ok=True)
    if is_local and any(folder.glob("*.safetensors")):
        for p in sorted(folder.iterdir()):
            # only the files a model folder may hold (trainer.apply.model_folder): no pickles, no code, not
            # extract's cache marker (it holds a path of this machine)
            if p.is_file() and text_model_file(p.name):
                shutil.copyfile(p, out / p.name)
        return
    tokenizer, model = load_text_model(src)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    for p in out.iterdir():  # save_pretrained may add files a model folder does not hold
        if not text_model_file(p.name):
            p.unlink()
    if is_local and (folder / "m2f_text.json").is_file():
        shutil.copyfile(folder / "m2f_text.json", out / "m2f_text.json")


def check_text_identity(recorded: str, folder: Path, source: str | Path | None = None) -> str:
    """The copied folder's identity; raises if its settings (pooling, length, context) differ.

    Raises
    ------
    ModelFolderError
        One line naming ``source`` (the folder it was copied from) when the copy cannot be loaded (a
        broken ``m2f_text.json``, unreadable weights) or embeds with other settings.
    """
    from pipeline.text.embedder import TextEmbedder

    try:
        copied = TextEmbedder(str(folder)).identity
    except (ValueError, OSError) as e:
        raise ModelFolderError(
            f"{source or folder}: cannot be loaded as the run's text model ({brief(e)}); pass the text model "
            "the features were made with (--text-model)"
        ) from e
    if copied.split("|", 1)[1] != recorded.split("|", 1)[1]:
        raise ModelFolderError(
            f"{folder}: embeds as {copied!r}, but the run's features were made as "
            f"{recorded!r}; export cannot reproduce its text features"
        )
    return copied


def _metric(summary: dict, split: str) -> dict | None:
    m = summary.get(split)
    return None if m is None else {"weighted_f1": m["weighted_f1"], "accuracy": m["accuracy"], "n": m["n"]}


def _cell(text: str) -> str:
    """A Markdown table cell: a ``|`` of its own would end it."""
    return text.replace("|", "\\|")


def _live_line(live: dict | None) -> str:
    if not live:
        return "-"
    if live["causal"]:
        return "causal: each prediction depends only on what was said up to its end (`m2f live`, `m2f serve`)"
    why = (
        "a bidirectional dialogue model"
        if not live["dialog_causal"]
        else "a text model that reads the next utterance"
    )
    return f"bidirectional ({why}): live use needs `--allow-revisions`"


def context_text(model_config: dict) -> str:
    """How the dialogue model reads a conversation: order, speakers, and whether it is causal."""
    order = {"relative": "relative positions"}.get(model_config.get("positions", "none"), "no positions")
    speakers = {"same-other": "same/other speaker"}.get(model_config.get("speakers", "none"), "no speakers")
    reads = (
        "causal: each utterance from itself and earlier ones only"
        if model_config.get("causal")
        else "bidirectional: each utterance from the whole conversation"
    )
    return f"{order}, {speakers}; {reads}"


def model_card(meta: dict) -> str:
    """The README.md of an exported folder."""
    from pipeline.names import MODALITIES, MODALITY_OF_LETTER

    src, feats, metrics = meta["source"], meta["features"], meta["metrics"]
    mods = [MODALITY_OF_LETTER[m] for m in meta["dialog_model"]["modalities"]]

    def pct(split: str) -> str:
        m = metrics.get(split)
        if m is None:
            return "-"
        return f"{100 * m['weighted_f1']:.2f} (accuracy {100 * m['accuracy']:.2f}, n = {m['n']})"

    media = feats.get("media") or {}
    # folders exported before --select name the best dev epoch only
    model_of_seed = (
        f"model: {src['selected']}" if "selected" in src else f"best dev epoch {src['best_epoch']}"
    )
    rows = [
        ("dataset", f"{meta['dataset']} (class map {meta['class_map']})"),
        ("classes", ", ".join(meta["class_names"])),
        ("modalities", ", ".join(mods) + f" ({meta['dialog_model']['fusion']} fusion)"),
        ("context", context_text(meta["dialog_model"])),
        (
            "logits",
            "the dialogue classifier's output + the text model's own head logits (`--head-residual`)"
            if meta["dialog_model"].get("head_residual")
            else "the dialogue classifier's output",
        ),
        ("dev weighted F1", pct("dev")),
        ("test weighted F1", pct("test")),
        (
            (
                "run",
                f"`{src['run']}`, seed {src['seed']} ({src['chosen']}), {model_of_seed}",
            )
            if "ensemble" not in meta
            else (
                "run",
                f"`{src['run']}`, an ensemble of seeds {', '.join(map(str, src['seed']))} (the mean of their "
                f"class probabilities; best dev epochs {', '.join(map(str, src['best_epoch']))})",
            )
        ),
        ("features", f"`{src['features']}`: {', '.join(m for m in MODALITIES if m in feats['modalities'])}"),
        ("text model", f"`{TEXT_DIR}/` ({meta['text_identity']})" if meta.get("text_identity") else "-"),
        ("live use", _live_line(meta.get("live"))),
        ("encoders", f"`{ENCODER_DIR}/` ({feats.get('encoders')})" if "encoders" in meta["files"] else "-"),
        (
            "media",
            ", ".join(
                f"{k} {media[k]}"
                for k in ("n_frames", "face_size", "scene_size", "sample_rate")
                if k in media
            )
            or "-",
        ),
        ("exported", f"{meta['created_utc'][:10]} with m2f {meta['m2f_version']}"),
    ]
    lines = [
        f"# m2f model: {meta['dataset']}, {'+'.join(mods)}",
        "",
        "An M2FNet dialogue model (emotion of each utterance of a conversation) exported by `m2f export`.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {_cell(v)} |" for k, v in rows],
        "",
        "The F1 figures are the run's own, on its dev and test splits"
        + (" (the ensemble's: its mean probabilities scored)" if "ensemble" in meta else "")
        + "; other data may score differently.",
        "",
        "## Use",
        "",
        "```bash",
        "m2f predict --model THIS_FOLDER conversation.csv --out predictions.csv",
        "m2f predict --model THIS_FOLDER talk.mp4 --subtitles talk.srt --out predictions.csv \\",
        "    --plot timeline.png",
        "```",
        "",
        "Prediction runs the same extraction as `m2f extract` with this folder's encoders, text model and",
        "media settings, then the dialogue model. A modality an utterance lacks (no clip, no audio) gets the",
        "model's learned missing vector and is flagged in the output.",
        "",
        "## Files",
        "",
        "`m2f_model.json` (configuration), `label_map.json`, `dialog.safetensors`"
        + (", `encoders/` (safetensors + JSON)" if "encoders" in meta["files"] else "")
        + (f", `{TEXT_DIR}/`" if meta.get("text_identity") else "")
        + ". Loading checks every file against `checksums.json` and reads weights as safetensors only.",
        "",
        "`checksums.json` proves the files are unchanged since export, not who exported them. Compare its",
        "own sha256 (`sha256sum checksums.json`; `m2f export` and `m2f predict` print it) with the value",
        "the publisher states through a channel you trust.",
        "",
    ]
    return "\n".join(lines)


def export_model(
    run: str | Path,
    out: str | Path,
    seed: int | None = None,
    encoders: str | None = None,
    text_model: str | None = None,
    overwrite: bool = False,
    seeds: Literal["all"] | list[int] | None = None,
) -> Path:
    """``m2f export``: write the model folder of one seed of ``run``, or of an ensemble of its seeds, into
    ``out`` (see the module docs).

    Parameters
    ----------
    run : path
        A ``m2f train-dialog --out`` folder (or one ``seed<k>/`` folder).
    out : path
        The model folder to create; written under a temporary name and renamed when complete.
    seed : int, optional
        Which seed; default the finished seed its run's ``--select`` criterion prefers on dev
        (:func:`choose_seed`).
    encoders, text_model : str, optional
        Where to look first for the encoders / text model the features were made with.
    overwrite : bool
        Replace an existing ``out``.
    seeds : ``"all"`` or list of int, optional
        Export an ensemble of these finished seeds instead of one (``seed`` must then be None): their
        weights go into one file, and loading averages their class probabilities
        (:class:`trainer.dialogue.model.DialogueEnsemble`). The card gives the ensemble's dev/test figures.

    Raises
    ------
    ModelFolderError
        On a run that is not finished, a missing features file, encoders or text model not found.
    """
    from pipeline import __version__
    from pipeline.store.features import read_attrs
    from trainer.dialogue.fit import load_model

    run, out = Path(run), Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ModelFolderError(f"{shown(out)} exists; choose another --out or pass --overwrite to replace it")
    if (out.exists() or out.is_symlink()) and not is_model_folder(out):
        raise ModelFolderError(
            f"{shown(out)}: --overwrite replaces only a folder written by `m2f export`, "
            "and this is not one; choose another --out or remove it yourself"
        )
    if seed is not None and seeds is not None:
        raise ModelFolderError("give --seed (one model) or --seeds (an ensemble), not both")
    members = choose_seeds(run, seeds) if seeds is not None else None
    seed_dir, summary = members[0] if members else choose_seed(run, seed)
    config = _read_json(seed_dir / "config.json")
    features = Path(config["features"])
    if not features.is_file():
        raise ModelFolderError(
            f"{features}: the run's features file is gone; export needs it (it records "
            "how features were made); rebuild it with the same `m2f extract` command"
        )
    feature_config = read_attrs(features)["config"]
    model, class_names = load_model(seed_dir / "best.pt")
    mods = model.config.modalities
    weights, weights_kind = model.state_dict(), "m2f-dialog-1"
    if members:
        models = [model]
        for member_dir, _ in members[1:]:
            if _read_json(member_dir / "config.json").get("features") != config["features"]:
                raise ModelFolderError(
                    f"{member_dir}: trained on other features than {seed_dir}; not one run"
                )
            member, names = load_model(member_dir / "best.pt")
            if list(names) != list(class_names):
                raise ModelFolderError(f"{member_dir}: other classes than {seed_dir}; not one run")
            models.append(member)
        try:
            weights = DialogueEnsemble(models).state_dict()  # the members must share one config
        except ValueError as e:
            raise ModelFolderError(f"{run}: {e}") from None
        weights_kind = "m2f-dialog-ensemble-1"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))  # new, never a planted one
    tmp.chmod(0o755)
    try:
        files = ["dialog"]
        save_weights(tmp / DIALOGUE_WEIGHTS, weights, weights_kind)
        shutil.copyfile(seed_dir / "label_map.json", tmp / "label_map.json")
        if "a" in mods or "v" in mods:
            spec = (
                encoders
                if encoders == "random"
                else find_encoders(feature_config["encoders"], features, encoders)
            )
            logger.info("export: encoders %s", spec)
            if export_encoders(spec, tmp / ENCODER_DIR) != feature_config["encoders"]:
                raise ModelFolderError(f"{spec}: not the encoders {feature_config['encoders']} of {features}")
            files.append("encoders")
        text_identity = None
        if "t" in mods:
            source = find_text_model(feature_config["text_model"], features, text_model)
            logger.info("export: text model %s", source)
            export_text_model(source, tmp / TEXT_DIR)
            text_identity = check_text_identity(feature_config["text_model"], tmp / TEXT_DIR, source)
            files.append("text_model")
        head_classes = None
        if model.config.head_residual:  # the exported text model must give the logits it was trained on
            head_classes = residual_classes(tmp / TEXT_DIR, list(class_names), str(source))
            if list(head_classes) != list(feature_config.get("text_logits") or []):
                raise ModelFolderError(
                    f"{source}: its head's classes {list(head_classes)} are not those of the logits "
                    f"{feature_config.get('text_logits')} in {features}; pass the text model the "
                    "features were made with (--text-model)"
                )
        status = _read_json(seed_dir / "status.json")
        metrics = {"dev": _metric(summary, "dev"), "test": _metric(summary, "test")}
        if members:
            from trainer.report.summary import ensemble_metrics

            dirs = [d for d, _ in members]
            metrics = {
                split: _metric({split: ensemble_metrics(dirs, split)}, split) for split in ("dev", "test")
            }
        text_context = "past"  # a model without text reads nothing ahead through it
        if "t" in mods:
            from pipeline.text.embedder import finetuned_settings

            text_context = finetuned_settings(tmp / TEXT_DIR).get("context", "full")
        causal = bool(model.config.causal) and text_context == "past"
        meta = {
            "format": MODEL_FORMAT,
            "m2f_version": __version__,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset": config["dataset"],
            "class_map": config["class_map"],
            "class_names": list(class_names),
            "dialog_model": model.config.to_dict(),
            "features": {k: feature_config.get(k) for k in ("modalities", "media", "encoders", "text_model")},
            "text_identity": text_identity,
            # --head-residual: the text head's classes, whose logits the dialogue model adds (by name)
            "text_head_classes": None if head_classes is None else list(head_classes),
            # live use (trainer/apply/live.py): causal = every prediction depends on the past only
            "live": {
                "causal": causal,
                "dialog_causal": bool(model.config.causal),
                "text_context": text_context,
            },
            "files": files,
            "metrics": metrics,
            "source": {
                "run": str(run.resolve()),
                "seed": [s["seed"] for _, s in members] if members else summary["seed"],
                "best_epoch": (
                    [_read_json(d / "status.json").get("best_epoch") for d, _ in members]
                    if members
                    else status.get("best_epoch")
                ),
                "chosen": "--seeds" if members else "--seed" if seed is not None else seed_rule(summary),
                # the rule that made each seed's best.pt (m2f train-dialog --select)
                "selected": (
                    [selection_text(_read_json(d / "status.json")) for d, _ in members]
                    if members
                    else selection_text(status)
                ),
                "features": str(features.resolve()),
            },
        }
        if members:
            meta["ensemble"] = {
                "seeds": [s["seed"] for _, s in members],
                "combine": "mean of the members' class probabilities",
            }
        atomic_write_json(tmp / META, meta)
        atomic_write_text(tmp / "README.md", model_card(meta))
        write_checksums(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() or out.is_symlink():
        shutil.rmtree(out)  # a model folder (checked above), never a symlink
    tmp.rename(out)
    logger.info(
        "export: %s; sha256 of its checksums.json %s (give it with the folder: it identifies exactly "
        "these files)",
        out,
        checksums_digest(out),
    )
    return out
