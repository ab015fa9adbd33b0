"""``m2f export``: a trained run -> a self-contained model folder that ``m2f predict`` loads safely.

Layout of ``MODEL_DIR``::

    README.md                       model card: dataset, modalities, dev/test weighted F1, date, version
    m2f_model.json                  format, class names, dialog-model config, how features were made
    label_map.json                  the run's label map (classes in index order, excluded raw labels)
    dialog.safetensors              the dialog model's weights (the chosen seed's best.pt)
    encoders/<kind>.safetensors     audio, face, scene encoders (only when the model reads audio/visual)
    encoders/<kind>.json            their config (input contract) and training notes
    text_model/                     the text model folder: safetensors weights, tokenizer, m2f_text.json
                                    (only when the model reads text)
    checksums.json                  sha256 of every other file

Loading (:func:`load_model_folder`) never unpickles: weights are read with safetensors only, JSON files
with :mod:`json`, and a folder holding a pickle-format file (``.pt``, ``.bin``, ``.pkl``, ...) or any file
that does not match ``checksums.json`` is refused with a one-line :class:`ModelFolderError`.

Where the encoders and the text model come from: the features file of the run records their
*identities* (a hash of the weight files), not their paths. Export looks for the folder with that
identity beside the features file's cache (``<cache>/<dataset>/encoders/*``, ``.../text-model/*``),
among the shipped MiniLM, and in the folders passed as ``encoders`` / ``text_model``; ``random``
encoders are rebuilt from their seed. A folder is used only if its identity matches.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from pipeline.atomic import atomic_write_json, atomic_write_text, content_identity
from trainer.model import DialogModel, DialogModelConfig

log = logging.getLogger(__name__)

MODEL_FORMAT = "m2f-model-1"
CHECKSUMS = "checksums.json"
META = "m2f_model.json"
DIALOG_WEIGHTS = "dialog.safetensors"
ENCODER_DIR = "encoders"
TEXT_DIR = "text_model"
#: Suffixes of pickle-based formats: never part of an exported folder.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
MODALITY_NAMES = {"t": "text", "a": "audio", "v": "visual"}


class ModelFolderError(ValueError):
    """An exported model folder or a run that cannot be used; the message says what to do."""


# -- checksums -------------------------------------------------------------------------------------
def folder_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file under ``folder`` except ``checksums.json``, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUMS)


def sha256_of(path: Path) -> str:
    """Full sha256 hex digest of a file."""
    return content_identity(path, n_hex=64)


def write_checksums(folder: Path) -> Path:
    """``checksums.json``: ``{relative path: sha256}`` of every other file of ``folder``."""
    digests = {name: sha256_of(folder / name) for name in folder_files(folder)}
    return atomic_write_json(folder / CHECKSUMS, digests)


def verify_checksums(folder: Path) -> None:
    """Check every file of ``folder`` against its ``checksums.json``.

    Raises
    ------
    ModelFolderError
        A missing or unreadable ``checksums.json``, a listed file that is missing, a file that is not
        listed, a file whose sha256 differs, or any pickle-format file.
    """
    path = folder / CHECKSUMS
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{folder}: no {CHECKSUMS}; not a folder written by `m2f export` "
                               "(export the run again)") from None
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{path}: unreadable ({e}); export the model again") from None
    if not isinstance(listed, dict):
        raise ModelFolderError(f"{path}: not a file -> sha256 mapping; export the model again")
    present = folder_files(folder)
    for name in present:
        if Path(name).suffix.lower() in PICKLE_SUFFIXES:
            raise ModelFolderError(f"{folder / name}: pickle-format file in a model folder; m2f loads "
                                   "safetensors only, remove it or export the model again")
        if name not in listed:
            raise ModelFolderError(f"{folder / name}: not listed in {CHECKSUMS} (a file was added); remove "
                                   "it or export the model again")
    for name, digest in listed.items():
        file = folder / name
        if not file.is_file():
            raise ModelFolderError(f"{file}: listed in {CHECKSUMS} but missing; export the model again")
        if sha256_of(file) != digest:
            raise ModelFolderError(f"{file}: sha256 does not match {CHECKSUMS} (changed or corrupted "
                                   "after export); export the model again")


# -- safetensors -----------------------------------------------------------------------------------
def save_weights(path: Path, state_dict: dict[str, torch.Tensor], kind: str) -> Path:
    """Write a state dict as safetensors (contiguous CPU copies), atomically."""
    from safetensors.torch import save_file

    from pipeline.atomic import commit_tmp, tmp_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = tmp_path(path)
    save_file(tensors, str(tmp), metadata={"format": kind})
    return commit_tmp(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (CPU); anything else (a pickle, a truncated file) is refused cleanly."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for every malformed header
        raise ModelFolderError(f"{path}: not a safetensors weights file ({type(e).__name__}: {e}); m2f "
                               "never unpickles weights, export the model again") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: missing; export the model again") from None
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{path}: unreadable JSON ({e}); export the model again") from None


# -- loading -----------------------------------------------------------------------------------------
@dataclass
class ExportedModel:
    """A verified model folder with its dialog model built (see :func:`load_model_folder`)."""

    folder: Path
    meta: dict
    model: DialogModel
    class_names: list[str]

    @property
    def modalities(self) -> str:
        """Letters of the modalities the dialog model reads (``tav`` order)."""
        return self.model.config.modalities

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.model.config.dims)

    @property
    def text_model(self) -> Path | None:
        """The text model folder, or None for a model that reads no text."""
        return self.folder / TEXT_DIR if "t" in self.modalities else None

    @property
    def media_config(self) -> dict | None:
        """The media settings the run's features were made with (None for a text-only model)."""
        return self.meta["features"].get("media")

    def write_encoder_checkpoints(self, out: str | Path) -> Path:
        """Write the encoders as the ``<kind>.pt`` checkpoints ``m2f extract --encoders DIR`` reads.

        The weights come from the verified safetensors files; the checkpoints are plain tensors,
        read back by the engine with ``torch.load(weights_only=True)``.
        """
        from pipeline.encoders.checkpoint import save_encoder
        from pipeline.encoders.model import Encoder, EncoderConfig
        from pipeline.names import ENCODER_KINDS

        out = Path(out)
        for kind in ENCODER_KINDS:
            info = _read_json(self.folder / ENCODER_DIR / f"{kind}.json")
            encoder = Encoder(EncoderConfig.from_dict(info["config"]))
            try:
                encoder.load_state_dict(load_weights(self.folder / ENCODER_DIR / f"{kind}.safetensors"))
            except RuntimeError as e:
                raise ModelFolderError(f"{self.folder / ENCODER_DIR / kind}.safetensors does not fit its "
                                       f"config ({str(e).splitlines()[0]}); export the model again") from None
            random = {"random": True} if (info.get("meta") or {}).get("random") else {}
            save_encoder(encoder, out / f"{kind}.pt", exported_from=str(self.folder), **random)
        return out


def load_model_folder(folder: str | Path, device: str = "cpu") -> ExportedModel:
    """Verify an exported folder (checksums, no pickles) and build its dialog model on ``device``.

    Raises
    ------
    ModelFolderError
        Not a folder, a file that does not match ``checksums.json``, unreadable weights or config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder; create one with `m2f export RUN --out DIR`")
    verify_checksums(folder)
    meta = _read_json(folder / META)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFolderError(f"{folder / META}: format {meta.get('format')!r} is not {MODEL_FORMAT!r}; "
                               "export the model again with this m2f")
    try:
        model = DialogModel(DialogModelConfig.from_dict(meta["dialog_model"]))
        model.load_state_dict(load_weights(folder / DIALOG_WEIGHTS))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, ModelFolderError):
            raise
        raise ModelFolderError(f"{folder / DIALOG_WEIGHTS}: does not fit the dialog-model config in {META} "
                               f"({str(e).splitlines()[0]}); export the model again") from None
    return ExportedModel(folder, meta, model.eval().to(device), list(meta["class_names"]))


# -- choosing the seed -------------------------------------------------------------------------------
def choose_seed(run: Path, seed: int | None = None) -> tuple[Path, dict]:
    """The seed folder to export and its report summary (dev/test metrics from its predictions).

    Default: the finished seed with the best dev weighted F1 (ties: the lowest seed).
    """
    from trainer.summary import seed_dirs, summarize_seed

    try:
        dirs = seed_dirs(run)
    except FileNotFoundError as e:
        raise ModelFolderError(str(e)) from None
    done = [(d, summarize_seed(d)) for d in dirs]
    done = [(d, s) for d, s in done if s["state"] == "done" and (d / "best.pt").exists()]
    if seed is not None:
        for d, s in done:
            if s["seed"] == seed:
                return d, s
        raise ModelFolderError(f"{run}: no finished seed {seed} (finished: {[s['seed'] for _, s in done]}); "
                               "pick one of those with --seed")
    if not done:
        raise ModelFolderError(f"{run}: no finished seed with best.pt yet; let `m2f train-dialog` finish")
    return max(done, key=lambda ds: (ds[1].get("dev", {}).get("weighted_f1", -1.0), -ds[1]["seed"]))


# -- finding the encoders and the text model -----------------------------------------------------------
def _cache_folders(features: Path, name: str) -> list[Path]:
    """Sub-folders of ``<ancestor>/<name>/`` for the few ancestors of the features file (the cache)."""
    found: list[Path] = []
    for parent in list(features.resolve().parents)[:3]:
        if (parent / name).is_dir():
            found += sorted(p for p in (parent / name).iterdir() if p.is_dir())
    return found


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
        "--encoders DIR (the folder given to `m2f extract --encoders`)")


def find_text_model(identity: str, features: Path, given: str | None = None) -> str:
    """The text model folder (or hub id) whose identity starts like ``identity`` (the features file's)."""
    from pipeline.modalities.text import DEFAULT_TEXT_MODEL, model_identity

    name = identity.split("|", 1)[0]
    if name.startswith("hub:"):
        return given or name.removeprefix("hub:")
    wanted = name.split(":", 1)[-1]
    candidates = ([Path(given)] if given else []) + [Path(DEFAULT_TEXT_MODEL)] + _cache_folders(features,
                                                                                               "text-model")
    for folder in candidates:
        if (folder / "config.json").is_file() and model_identity(str(folder), True).endswith(":" + wanted):
            return str(folder)
    raise ModelFolderError(
        f"{features}: made with text model {name}, found in none of {[str(c) for c in candidates]}; pass "
        "--text-model DIR (the folder given to `m2f extract --text-model`)")


# -- writing -----------------------------------------------------------------------------------------
def export_encoders(spec: str, out: Path) -> str:
    """The encoders of ``spec`` (``.pt`` folder or ``random``) as safetensors + JSON; returns the identity."""
    from pipeline.encoders.checkpoint import load_checkpoint, load_encoder_set
    from pipeline.names import ENCODER_KINDS

    encoders = load_encoder_set(spec)
    out.mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(ENCODER_KINDS):
        encoder = getattr(encoders, kind)
        meta = ({"random": True, "seed": i} if encoders.random
                else load_checkpoint(Path(spec) / f"{kind}.pt")["meta"])
        save_weights(out / f"{kind}.safetensors", encoder.state_dict(), "m2f-encoder-1")
        atomic_write_json(out / f"{kind}.json", {"config": encoder.config.to_dict(), "meta": meta})
    return encoders.identity


def export_text_model(source: str, out: Path) -> None:
    """Copy a text model folder (its top-level files) into ``out``; a hub model or pickle weights are
    loaded by transformers and saved as safetensors instead."""
    from pipeline.modalities.text import load_text_model, resolve_model_source

    src, is_local = resolve_model_source(source)
    folder = Path(src)
    out.mkdir(parents=True, exist_ok=True)
    if is_local and any(folder.glob("*.safetensors")):
        for p in sorted(folder.iterdir()):
            # not pickles, hidden files, nor extract's cache marker (it holds a path of this machine)
            if (p.is_file() and p.suffix.lower() not in PICKLE_SUFFIXES and not p.name.startswith(".")
                    and p.name != "m2f-finetuned.json"):
                shutil.copyfile(p, out / p.name)
        return
    tokenizer, model = load_text_model(src)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    if is_local and (folder / "m2f_text.json").is_file():
        shutil.copyfile(folder / "m2f_text.json", out / "m2f_text.json")


def check_text_identity(recorded: str, folder: Path) -> str:
    """The copied folder's identity; raises if its settings (pooling, length, context) differ."""
    from pipeline.modalities.text import TextEmbedder

    copied = TextEmbedder(str(folder)).identity
    if copied.split("|", 1)[1] != recorded.split("|", 1)[1]:
        raise ModelFolderError(f"{folder}: embeds as {copied!r}, but the run's features were made as "
                               f"{recorded!r}; export cannot reproduce its text features")
    return copied


def _metric(summary: dict, split: str) -> dict | None:
    m = summary.get(split)
    return None if m is None else {"weighted_f1": m["weighted_f1"], "accuracy": m["accuracy"], "n": m["n"]}


def _cell(text: str) -> str:
    """A Markdown table cell: a ``|`` of its own would end it."""
    return text.replace("|", "\\|")


def context_text(dialog_model: dict) -> str:
    """How the dialog model reads a conversation: order, speakers, and whether it is causal."""
    order = {"relative": "relative positions"}.get(dialog_model.get("positions", "none"), "no positions")
    speakers = {"same-other": "same/other speaker"}.get(dialog_model.get("speakers", "none"), "no speakers")
    reads = ("causal: each utterance from itself and earlier ones only" if dialog_model.get("causal")
             else "bidirectional: each utterance from the whole conversation")
    return f"{order}, {speakers}; {reads}"


def model_card(meta: dict) -> str:
    """The README.md of an exported folder."""
    from pipeline.names import MODALITIES

    src, feats, metrics = meta["source"], meta["features"], meta["metrics"]
    mods = [MODALITY_NAMES[m] for m in meta["dialog_model"]["modalities"]]

    def pct(split: str) -> str:
        m = metrics.get(split)
        if m is None:
            return "-"
        return f"{100 * m['weighted_f1']:.2f} (accuracy {100 * m['accuracy']:.2f}, n = {m['n']})"

    media = feats.get("media") or {}
    rows = [
        ("dataset", f"{meta['dataset']} (class map {meta['class_map']})"),
        ("classes", ", ".join(meta["class_names"])),
        ("modalities", ", ".join(mods) + f" ({meta['dialog_model']['fusion']} fusion)"),
        ("context", context_text(meta["dialog_model"])),
        ("dev weighted F1", pct("dev")),
        ("test weighted F1", pct("test")),
        ("run", f"`{src['run']}`, seed {src['seed']} ({src['chosen']}), best dev epoch {src['best_epoch']}"),
        ("features", f"`{src['features']}`: {', '.join(m for m in MODALITIES if m in feats['modalities'])}"),
        ("text model", f"`{TEXT_DIR}/` ({meta['text_identity']})" if meta.get("text_identity") else "-"),
        ("encoders", f"`{ENCODER_DIR}/` ({feats.get('encoders')})" if "encoders" in meta["files"] else "-"),
        ("media", ", ".join(f"{k} {media[k]}" for k in ("n_frames", "face_size", "scene_size", "sample_rate")
                            if k in media) or "-"),
        ("exported", f"{meta['created_utc'][:10]} with m2f {meta['m2f_version']}"),
    ]
    lines = [
        f"# m2f model: {meta['dataset']}, {'+'.join(mods)}",
        "",
        "An M2FNet dialog model (emotion of each utterance of a conversation) exported by `m2f export`.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {_cell(v)} |" for k, v in rows],
        "",
        "The F1 figures are the run's own, on its dev and test splits; other data may score differently.",
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
        "media settings, then the dialog model. A modality an utterance lacks (no clip, no audio) gets the",
        "model's learned missing vector and is flagged in the output.",
        "",
        "## Files",
        "",
        "`m2f_model.json` (configuration), `label_map.json`, `dialog.safetensors`"
        + (", `encoders/` (safetensors + JSON)" if "encoders" in meta["files"] else "")
        + (f", `{TEXT_DIR}/`" if meta.get("text_identity") else "")
        + ". Loading checks every file against `checksums.json` and reads weights as safetensors only.",
        "",
    ]
    return "\n".join(lines)


def export_model(run: str | Path, out: str | Path, seed: int | None = None, encoders: str | None = None,
                 text_model: str | None = None, overwrite: bool = False) -> Path:
    """``m2f export``: write the model folder of one seed of ``run`` into ``out`` (see the module docs).

    Parameters
    ----------
    run : path
        A ``m2f train-dialog --out`` folder (or one ``seed<k>/`` folder).
    out : path
        The model folder to create; written under a temporary name and renamed when complete.
    seed : int, optional
        Which seed; default the finished seed with the best dev weighted F1.
    encoders, text_model : str, optional
        Where to look first for the encoders / text model the features were made with.
    overwrite : bool
        Replace an existing ``out``.

    Raises
    ------
    ModelFolderError
        On a run that is not finished, a missing features file, encoders or text model not found.
    """
    from pipeline import __version__
    from pipeline.features import read_attrs
    from trainer.fit import load_model

    run, out = Path(run), Path(out)
    if out.exists() and not overwrite:
        raise ModelFolderError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    seed_dir, summary = choose_seed(run, seed)
    config = _read_json(seed_dir / "config.json")
    features = Path(config["features"])
    if not features.is_file():
        raise ModelFolderError(f"{features}: the run's features file is gone; export needs it (it records "
                               "how features were made); rebuild it with the same `m2f extract` command")
    feature_config = read_attrs(features)["config"]
    model, class_names = load_model(seed_dir / "best.pt")
    mods = model.config.modalities

    tmp = out.with_name(f".{out.name}.export-tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = ["dialog"]
    save_weights(tmp / DIALOG_WEIGHTS, model.state_dict(), "m2f-dialog-1")
    shutil.copyfile(seed_dir / "label_map.json", tmp / "label_map.json")
    if "a" in mods or "v" in mods:
        spec = (encoders if encoders == "random"
                else find_encoders(feature_config["encoders"], features, encoders))
        log.info("export: encoders %s", spec)
        if export_encoders(spec, tmp / ENCODER_DIR) != feature_config["encoders"]:
            raise ModelFolderError(f"{spec}: not the encoders {feature_config['encoders']} of {features}")
        files.append("encoders")
    text_identity = None
    if "t" in mods:
        source = find_text_model(feature_config["text_model"], features, text_model)
        log.info("export: text model %s", source)
        export_text_model(source, tmp / TEXT_DIR)
        text_identity = check_text_identity(feature_config["text_model"], tmp / TEXT_DIR)
        files.append("text_model")
    status = _read_json(seed_dir / "status.json")
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
        "files": files,
        "metrics": {"dev": _metric(summary, "dev"), "test": _metric(summary, "test")},
        "source": {"run": str(run.resolve()), "seed": summary["seed"], "best_epoch": status.get("best_epoch"),
                   "chosen": "--seed" if seed is not None else "best dev weighted F1",
                   "features": str(features.resolve())},
    }
    atomic_write_json(tmp / META, meta)
    atomic_write_text(tmp / "README.md", model_card(meta))
    write_checksums(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
