"""The ``m2f`` command line: one click group; each command parses options and calls one function.

Heavy imports (torch, dask) happen inside the commands so ``m2f --help`` stays fast. Notes and
progress text go through :mod:`logging` to stderr (configured once, here); stdout carries only what a
script reads (e.g. the features path, last line of ``m2f extract``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import click

from pipeline import __version__
from pipeline.names import (
    DATASETS,
    DEFAULT_DEVICE,
    DEVICES,
    ENCODER_KINDS,
    MODALITIES,
    SPLITS,
    modality_letters,
    parse_modalities,
)
from pipeline.shown import shown
from pipeline.store.layout import DEFAULT_CACHE, CacheLayout

#: the packages whose loggers print at the chosen level; every other logger prints warnings only
_OUR_LOGGERS = ("pipeline", "trainer")
#: the text fine-tuning settings (:class:`pipeline.text.finetune.recipe.FinetuneConfig`) given on the command
#: line, as ``--text-<name>``
_FINETUNE_CONFIG = "pipeline.text.finetune.recipe:FinetuneConfig"
TEXT_OPTIONS = ("freeze_layers", "context", "pooling")


def one_line(error: Exception) -> click.ClickException:
    """The error every command prints: its message on one line, names' control characters escaped."""
    return click.ClickException(shown(error))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (click's test runner swaps it).

    Other libraries' notes (dask sets its loggers to INFO) pass only from warnings up.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.partition(".")[0] in _OUR_LOGGERS
        return (ours or record.levelno >= logging.WARNING) and super().filter(record)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _ShortFormatter(logging.Formatter):
    """``message`` for notes; ``warning: message`` (and up) for what needs attention."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging(level: int) -> None:
    """One stderr handler on the root logger (added once); ``level`` for m2f's own loggers."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_ShortFormatter("%(message)s"))
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="m2f")
@click.option("--quiet", "-q", is_flag=True, help="Print warnings and errors only (no progress notes).")
@click.option("--verbose", "-v", is_flag=True, help="Also print debug notes.")
def main(quiet: bool, verbose: bool) -> None:
    """m2f: M2FNet emotion recognition in conversation (text, audio, video).

    Typical run: prepare -> extract -> train-dialog -> report; then export -> predict to apply a model.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def _modalities(value: str) -> tuple[str, ...]:
    """``--modalities`` in either form (``tav`` or ``text,audio,visual``) -> names."""
    try:
        return parse_modalities(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--modalities") from e


def _interrupted(kept: str) -> None:
    """Ctrl-C: say what was kept and how to go on, exit 130 (no traceback)."""
    click.echo(f"\ninterrupted: {kept}; run the same command again to resume where it stopped.", err=True)
    raise SystemExit(130)


# --- options made from the config dataclasses --------------------------------------------------
# A training command's options are the fields of its config dataclass that carry a ``help`` in their
# metadata; the default is the field's, the type its annotation's, and the metadata may add ``choices``,
# ``flag`` (e.g. ``"--compile/--no-compile"``) and ``path`` (a click.Path giving a Path). So a default or
# a choice is written once, in the dataclass; the command turns the options back into fields with
# :func:`config_values`.


def cli_fields(config: type, names: Sequence[str] | None = None) -> list[dataclasses.Field]:
    """The fields of the dataclass ``config`` that are options (a ``help`` in their metadata), in
    field order, or ``names`` in that order."""
    fields = {f.name: f for f in dataclasses.fields(config) if "help" in f.metadata}
    return [fields[n] for n in names] if names is not None else list(fields.values())


def _base_type(hint) -> type:
    """``X`` of ``X | None``; the origin of a generic (``tuple`` of ``tuple[str, ...]``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint


def _option_of(
    config: type, field: dataclasses.Field, hint, prefix: str, help_prefix: str, help: str | None
) -> click.Option:
    """The click option of ``field`` of the dataclass ``config``."""
    meta = field.metadata
    kind = _base_type(hint)
    text = help_prefix + (meta["help"] if help is None else help)
    kw: dict = {"help": text or None}
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = field.default
    if kind is bool:
        if "flag" not in meta:  # a --name/--no-name flag is boolean by its declaration
            kw["is_flag"] = True
    elif "choices" in meta:
        kw["type"] = click.Choice(meta["choices"])
    elif meta.get("path"):
        kw["type"] = click.Path(path_type=Path)
    elif kind in (int, float):
        kw["type"] = kind
    # str and tuple[str, ...] (a comma list, see config_values) stay click's default, text
    decl = meta.get("flag") or "--" + (prefix + field.name).replace("_", "-")
    return ConfigOption([decl, prefix.replace("-", "_") + field.name], (config, field.name), **kw)


class ConfigOption(click.Option):
    """A click option made from a field of a config dataclass: ``config_field`` is ``(class, name)``."""

    def __init__(self, decls: list[str], config_field: tuple[type, str], **kw) -> None:
        super().__init__(decls, **kw)
        self.config_field = config_field


@dataclasses.dataclass(frozen=True)
class _ConfigOptions:
    """A placeholder among a command's params: the options of a config dataclass, made when first used.

    The dataclass is named ``"module:Class"`` and imported then (torch, for the training configs), so
    ``m2f --help``, which needs only each command's first help line, does not import it.
    """

    config: str
    names: Sequence[str] | None
    prefix: str
    help_prefix: str
    help: dict[str, str]

    def build(self) -> list[click.Option]:
        module, _, name = self.config.partition(":")
        config = getattr(importlib.import_module(module), name)
        hints = typing.get_type_hints(config)
        return [
            _option_of(config, f, hints[f.name], self.prefix, self.help_prefix, self.help.get(f.name))
            for f in cli_fields(config, self.names)
        ]


def config_options(
    config: str,
    names: Sequence[str] | None = None,
    *,
    prefix: str = "",
    help_prefix: str = "",
    help: dict[str, str] | None = None,
):
    """Decorator: here among the command's options, those of the fields of ``config`` (``"module:Class"``).

    Parameters
    ----------
    config : str
        The dataclass, as ``"package.module:Class"``; imported when the command's options are first
        needed (the command must be made with ``cls=ConfigCommand``).
    names : sequence of str, optional
        Only these fields, in this order; default: every field with a ``help``, in field order.
    prefix : str
        Put before each option name (``"text-"``: ``--text-pooling`` for ``pooling``; the parameter is
        ``text_pooling``).
    help_prefix : str
        Put before each help text.
    help : dict, optional
        Field name -> help text for this command instead of the field's.
    """

    def decorate(f):
        marker = _ConfigOptions(config, names, prefix, help_prefix, help or {})
        f.__dict__.setdefault("__click_params__", []).append(marker)
        return f

    return decorate


class ConfigCommand(click.Command):
    """A click command whose :func:`config_options` placeholders become options on first use."""

    _params: list  # click.Parameter, and _ConfigOptions until first use

    @property
    def params(self) -> list[click.Parameter]:
        if any(isinstance(p, _ConfigOptions) for p in self._params):
            self._params = [
                o for p in self._params for o in (p.build() if isinstance(p, _ConfigOptions) else [p])
            ]
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = list(value)


def config_values(config: type, options: dict, names: Sequence[str] | None = None, prefix: str = "") -> dict:
    """Take the options :func:`config_options` made for ``config`` out of ``options``: field -> value.

    A path given to a ``str`` field is passed as text, a comma list to a ``tuple`` field as a tuple
    (None when empty).
    """
    hints = typing.get_type_hints(config)
    values = {}
    for f in cli_fields(config, names):
        value = options.pop(prefix.replace("-", "_") + f.name)
        kind = _base_type(hints[f.name])
        if isinstance(value, Path) and kind is str:
            value = str(value)
        elif isinstance(value, str) and kind is tuple:
            value = tuple(c.strip() for c in value.split(",") if c.strip()) if value else None
        values[f.name] = value
    return values


# --- prepare (pipeline/corpora) --------------------------------------------------------------
@main.command("prepare")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Corpus format.")
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Corpus folder (MELD: folder holding the CSVs and clip folders; IEMOCAP: "
    "IEMOCAP_full_release; custom: the CSV file or its folder). Not needed for sample.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the manifest here as JSONL (default: print the summary only).",
)
def prepare_command(dataset: str, root: Path | None, out: Path | None) -> None:
    """Read a corpus; print its summary; write the manifest.

    Prints dialogues, utterances, labels and clips found / missing / zero-byte per split; with --out,
    writes the JSONL manifest (keys: id, corpus, split, dialogue_id, position, utterance_id, speaker,
    text, label, sentiment, clip, start, end, session, side).
    """
    from pipeline.corpora import run_prepare

    run_prepare(dataset, root, out)


# --- extract (pipeline/extract/) ----------------------------------------------------------------
@main.command("extract", cls=ConfigCommand)
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Corpus format.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Corpus folder (as for prepare).")
@click.option(
    "--modalities",
    default=",".join(MODALITIES),
    help="Letters of `tav` or a comma list of text, audio, visual. `text` alone needs no clips "
    "(MELD CSVs suffice).",
)
@click.option("--splits", default=",".join(SPLITS), help="Comma list of splits to extract.")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Local dask worker processes, 1 thread each (default: cores minus one, with --device "
    "cpu or cuda; with cuda all workers share the GPU).",
)
@click.option(
    "--scheduler",
    default=None,
    help="Address of an existing dask scheduler (e.g. tcp://host:8786, dask-jobqueue) instead of "
    "a LocalCluster.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=DEFAULT_DEVICE,
    help="MTCNN, encoders and text model device; with cuda every worker uses the GPU, in larger batches.",
)
@click.option(
    "--text-model",
    default=None,
    help="Hub id or local folder, used frozen. Default: --text-base fine-tuned on the train split "
    "(cached); frozen where fine-tuning is unavailable.",
)
@click.option(
    "--text-base",
    default=None,
    help="Hub id (e.g. roberta-large, the paper's) or local folder of a RoBERTa/BERT-family model, "
    "fine-tuned with dialogue context on the train split (dev selects; cached per base) and "
    "embedded by its first token. Default: the shipped all-MiniLM-L6-v2 (CPU recipe: top "
    "four layers, target-token pooling).",
)
@config_options(
    _FINETUNE_CONFIG,
    ("context",),
    prefix="text-",
    help={
        "context": "Context of the text model fine-tuned here: past + target + next utterance, or `past` "
        "(no next utterance: causal, for live prediction; cached apart)."
    },
)
@click.option(
    "--encoders",
    default=None,
    help="Folder with audio.pt, face.pt, scene.pt, or `random` (seeded random weights). Default: "
    "the encoders cached for this media, trained if missing.",
)
@click.option("--cache", type=click.Path(path_type=Path), default=DEFAULT_CACHE, help="Cache root folder.")
@click.option("--limit", type=int, default=None, help="At most N utterances per split (quick runs).")
@click.option(
    "--partition-size",
    type=int,
    default=None,
    help="Utterances per dask task (whole dialogues); the unit of resume. Default 16 on CPU, 64 on CUDA.",
)
@click.option(
    "--security",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML file of dask TLS settings (distributed.security.Security keywords: tls_ca_file, "
    "tls_cert, tls_key) for the LocalCluster or a tls:// --scheduler. Default: the "
    "LocalCluster uses fresh temporary TLS certificates. See README.",
)
def extract_command(
    dataset: str,
    root: Path | None,
    modalities: str,
    splits: str,
    workers: int,
    scheduler: str | None,
    device: str,
    text_model: str | None,
    text_base: str | None,
    text_context: str,
    encoders: str | None,
    cache: Path,
    limit: int | None,
    partition_size: int | None,
    security: Path | None,
) -> None:
    """Embed text, audio and video into features.h5 (resumable).

    Stages: prepare -> media (decode, MTCNN; media.h5) -> encoders (trained if missing) -> embed
    (features.h5 in cache/<dataset>/<config-hash>/). Each stage is skipped when complete; a killed run
    resumes where it stopped when the same command is run again. Problems per utterance go to
    problems.jsonl beside media.h5. The last line printed is the path of features.h5.
    """
    _run_extract(
        dataset=dataset,
        root=root,
        modalities=modalities,
        splits=splits,
        workers=workers,
        scheduler=scheduler,
        device=device,
        text_model=text_model,
        text_base=text_base,
        text_context=text_context,
        encoders=encoders,
        cache=cache,
        limit=limit,
        partition_size=partition_size,
        security=security,
    )


def _run_extract(**kw) -> None:
    from pipeline.extract import ExtractError, ExtractOptions, format_summary, run_extract
    from pipeline.extract.options import default_workers, parse_list
    from pipeline.names import SPLITS
    from pipeline.store.locks import CacheError

    if kw.get("workers") is None:
        kw["workers"] = default_workers()
    kw["modalities"] = _modalities(kw["modalities"])
    try:
        kw["splits"] = parse_list(kw["splits"], SPLITS, "--splits")
        result = run_extract(ExtractOptions(**kw))
    except (ExtractError, CacheError) as e:
        raise one_line(e) from e
    except KeyboardInterrupt:
        _interrupted(f"finished batches are kept under {kw['cache']}")
    click.echo(format_summary(result), err=True)
    click.echo(str(result.features))


# --- end extract ---


# --- train-encoders (pipeline/encoders/train.py) ---------------------------------------------
@main.command("train-encoders", cls=ConfigCommand)
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Corpus format.")
@click.option(
    "--modality",
    type=click.Choice([*ENCODER_KINDS, "text", "all"]),
    default="all",
    help="Which encoder to train; `all` = audio, face and scene; `text` fine-tunes the text model.",
)
@click.option(
    "--media",
    type=click.Path(path_type=Path),
    default=None,
    help="The media.h5 to train on. Default: the only cache/<dataset>/media-*/media.h5.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for audio.pt/face.pt/scene.pt. Default: cache/<dataset>/encoders/<media hash>/"
    "recipe<N>-<labels hash>/, where `m2f extract` finds them while the labels stored in "
    "the media.h5 (its manifest's when decoded) are the corpus's. For text: "
    "cache/<dataset>/text-model/<base hash>/<hash of the train+dev manifest>/, the folder "
    "`m2f extract` uses by default.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Corpus folder; only for --modality text (the text model trains on the corpus text).",
)
@click.option(
    "--text-base",
    default=None,
    help="Only for --modality text: hub id (e.g. roberta-large) or local folder of the model to "
    "fine-tune. Default: the shipped all-MiniLM-L6-v2.",
)
@config_options(_FINETUNE_CONFIG, TEXT_OPTIONS, prefix="text-", help_prefix="Only for --modality text: ")
@click.option("--cache", type=click.Path(path_type=Path), default=DEFAULT_CACHE, help="Cache root folder.")
@config_options("pipeline.encoders.train_config:TrainEncodersConfig")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="torch CPU threads (1 is much faster on a busy, shared CPU). Default: torch's choice.",
)
def train_encoders_command(
    dataset: str,
    modality: str,
    media: Path | None,
    out: Path | None,
    root: Path | None,
    text_base: str | None,
    cache: Path,
    threads: int | None,
    **options,
) -> None:
    """Triplet-train the audio, face, scene (or text) encoders.

    Trains on a media cache written by `m2f extract` (train split; dev picks the epoch) and writes
    <modality>.pt checkpoints carrying their config, history and a dev probe quality figure. Labels:
    those stored in the media.h5 when it was decoded; after a label fix, `m2f extract` trains the
    default encoders on the corpus's current labels (the media is reused).
    """
    from pipeline.encoders.train_config import TrainEncodersConfig
    from pipeline.text.finetune.recipe import FinetuneConfig

    if threads:
        import torch

        torch.set_num_threads(threads)
    text = config_values(FinetuneConfig, options, TEXT_OPTIONS, prefix="text-")
    run = config_values(TrainEncodersConfig, options)
    layout = CacheLayout(cache, dataset)
    if modality == "text":
        recipe = FinetuneConfig(base_model=text_base, device=run["device"], **text)
        if run["epochs"] is not None:
            recipe = dataclasses.replace(recipe, epochs=run["epochs"])
        _train_text_model(layout, root, out, recipe)
        return
    from pipeline.encoders.train import train_encoders
    from pipeline.extract.stage_encoders import labels_key, stored_labels
    from pipeline.store.locks import CacheError

    media = media or _find_media(layout)
    # the labels stored in media.h5 (its manifest's at decoding time) are the ones trained on and keyed
    out = out or layout.encoders_dir(layout.media_key(media), labels_key(stored_labels(media)))
    mods = ENCODER_KINDS if modality == "all" else (modality,)
    try:
        folder = train_encoders(TrainEncodersConfig(media=media, out=out, modalities=mods, **run))
    except (FileNotFoundError, ValueError, CacheError) as e:
        raise one_line(e) from e
    for m in mods:
        click.echo(str(folder / f"{m}.pt"))


def _find_media(layout: CacheLayout) -> Path:
    found = layout.media_files()
    if len(found) != 1:
        raise click.UsageError(
            f"found {len(found)} media caches under {layout.dataset_dir} ({[str(p) for p in found]}); pass "
            "--media PATH (run `m2f extract` first if there is none)"
        )
    return found[0]


def _train_text_model(layout: CacheLayout, root: Path | None, out: Path | None, recipe) -> None:
    """Fine-tune ``recipe.base_model`` into ``out``, or by default where ``m2f extract --text-base`` looks.

    The default folder is keyed by the base and the corpus's cached manifest (written here if missing),
    as extract keys it; with ``out`` the cache is left alone. ``recipe`` is the run's ``FinetuneConfig``
    (its ``out`` unset).
    """
    from pipeline.corpora import CorpusError, prepare_corpus
    from pipeline.extract import ExtractError
    from pipeline.extract.stage_prepare import load_manifest
    from pipeline.extract.stage_text import finetune_default_text_model, resolve_text_base
    from pipeline.store.locks import CacheError
    from pipeline.text.finetune.loop import finetune_text

    try:
        if out is None:
            _, manifest = load_manifest(layout, root)
            path = finetune_default_text_model(layout, manifest, recipe)
        else:
            base = recipe.base_model
            source = resolve_text_base(base)[0] if base is not None else None
            config = dataclasses.replace(recipe, out=out, base_model=source)
            path = finetune_text(prepare_corpus(layout.dataset, root), config)
    except (CorpusError, ExtractError, CacheError, ValueError, OSError) as e:
        raise one_line(e) from e
    click.echo(str(path))


# --- end train-encoders ---


# --- train-dialog (trainer/dialogue/config.py, trainer/dialogue/fit.py) ---------------------------------
@main.command("train-dialog", cls=ConfigCommand)
@config_options("trainer.dialogue.config:DialogueTrainConfig")
def train_dialog_command(**options) -> None:
    """Train the dialogue-level M2FNet on a features.h5.

    Writes RUN_DIR/seed<k>/ (config, environment, label map, metrics.jsonl, best.pt, predictions);
    best.pt is chosen on dev (--select: best weighted F1, lowest loss, or the average of the last
    epochs), never on test. Rerun the same command to resume.
    """
    from trainer.dialogue.config import DialogueTrainConfig
    from trainer.dialogue.fit import train_dialogue

    values = config_values(DialogueTrainConfig, options)
    values["modalities"] = modality_letters(_modalities(values["modalities"]))  # fit takes the letters form
    config = DialogueTrainConfig(**values)
    try:
        out = train_dialogue(config)
    except (FileNotFoundError, ValueError) as e:
        raise one_line(e) from e
    except KeyboardInterrupt:
        _interrupted(f"finished epochs are kept in {config.out} (last.pt at most --checkpoint-seconds old)")
    click.echo(f"done: {config.seeds} seed(s) in {out}; next: m2f report {out}")


# --- end train-dialog ---


# --- report (trainer/report/build.py) --------------------------------------------------------------
@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--compare-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the comparison table of all RUN_DIRS to this Markdown file.",
)
def report_command(run_dirs: tuple[Path, ...], compare_out: Path | None) -> None:
    """Write metrics, plots and the paper's numbers for runs.

    Writes report.md, report.json, confusion.png and curves.png into each RUN_DIR and prints one
    comparison table (mean ± std over seeds). A run still training is reported as such.
    """
    from trainer.report.build import report

    try:
        table = report(list(run_dirs), compare_out)
    except FileNotFoundError as e:
        raise one_line(e) from e
    click.echo(table)


# --- end report ---


# --- demo (trainer/demo/chain.py) ------------------------------------------------------------------
@main.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/sample"),
    help="Demo folder: corpus, runs, model, predictions.",
)
@click.option("--cache", type=click.Path(path_type=Path), default=DEFAULT_CACHE, help="Cache root folder.")
@click.option("--workers", type=int, default=2, help="Local dask worker processes.")
@click.option("--seeds", type=int, default=2, help="Training repeats (mean ± std in the report).")
@click.option("--epochs", type=int, default=25, help="Dialogue-model epochs per seed.")
def demo_command(out: Path, cache: Path, workers: int, seeds: int, epochs: int) -> None:
    """Generate a corpus, train text-only and fused, predict.

    Generates 216 utterances whose emotion only text + audio + visual together decide, then extract ->
    train-dialog (text only, and fused) -> report -> export -> predict a subtitled conversation video;
    prints the comparison, the predictions and the timeline picture's path.
    """
    from trainer.demo.chain import run_demo

    path = run_demo(out, cache, workers, seeds, epochs)
    click.echo(f"report: {path} (confusion matrix: {path.parent / 'confusion.png'})")


# --- end demo ---


# --- export (trainer/apply/export.py) --------------------------------------------------------------
@main.command("export")
@click.argument("run", type=click.Path(path_type=Path, exists=True))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model folder to create.")
@click.option("--seed", type=int, default=None, help="Seed to export [default: the best on dev weighted F1].")
@click.option(
    "--seeds",
    default=None,
    help="Export an ensemble instead: `all` finished seeds or a comma list (e.g. 0,1,2); "
    "predict, live and serve average their class probabilities.",
)
@click.option(
    "--encoders",
    default=None,
    help="Folder of the encoders the features were made with, if not in the features' cache.",
)
@click.option(
    "--text-model",
    default=None,
    help="Folder of the text model the features were made with, if not in the features' cache.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def export_command(
    run: Path,
    out: Path,
    seed: int | None,
    seeds: str | None,
    encoders: str | None,
    text_model: str | None,
    overwrite: bool,
) -> None:
    """Write a trained run as a self-contained model folder.

    OUT gets the dialogue model, encoders and text model as safetensors, the label map, the media and
    feature settings, checksums.json and a model card (README.md); `m2f predict --model OUT` uses it.
    """
    from trainer.apply.export import ModelFolderError, export_model, parse_seeds

    try:
        path = export_model(
            run,
            out,
            seed=seed,
            encoders=encoders,
            text_model=text_model,
            overwrite=overwrite,
            seeds=parse_seeds(seeds),
        )
    except ModelFolderError as e:
        raise one_line(e) from e
    click.echo(str(path))


# --- end export ---


# --- predict (trainer/apply/predict.py) ------------------------------------------------------------
@main.command("predict")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="A folder written by `m2f export`.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Predictions file.")
@click.option(
    "--subtitles",
    type=click.Path(path_type=Path),
    default=None,
    help="SRT or WebVTT of the video INPUT: each cue is one utterance.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Output format [default: jsonl for a .jsonl --out, else csv].",
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=None,
    help="Also draw the emotions over time (one lane per speaker) into this PNG.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Featurizing worker processes; 0 = in this process [default: 0 for one conversation or a "
    "few utterances, else 2].",
)
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE)
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=None,
    help="Scratch folder [default: a temporary folder, removed after].",
)
def predict_command(
    input_path: Path,
    model_dir: Path,
    out: Path,
    subtitles: Path | None,
    fmt: str | None,
    plot: Path | None,
    workers: int | None,
    device: str,
    work: Path | None,
) -> None:
    """Predict the emotion of each utterance (CSV or video).

    INPUT is a custom-corpus CSV (label and split ignored; no clip column = text only) or a video with
    --subtitles. Writes one row per utterance: dialogue, position, speaker, start, end, text,
    predicted, p_<class>..., has_<modality> (False = missing, the model's learned vector was used).
    """
    from pipeline.corpora.subtitles import SubtitleError
    from pipeline.store.locks import CacheLockedError
    from trainer.apply.export import ModelFolderError
    from trainer.apply.predict import ExtractError, PredictError, predict

    try:
        result = predict(
            model_dir,
            input_path,
            out,
            subtitles=subtitles,
            fmt=fmt,
            plot=plot,
            workers=workers,
            device=device,
            work=work,
        )
    except (PredictError, ModelFolderError, SubtitleError, ExtractError, CacheLockedError) as e:
        raise one_line(e) from e
    except KeyboardInterrupt:
        _interrupted(f"nothing was written to {out}")
    click.echo(
        f"{len(result.rows)} utterances -> {result.out}"
        + (f"; timeline {result.plot}" if result.plot else "")
    )


# --- end predict ---


# --- live and serve (trainer/apply/live.py, trainer/apply/serve.py)
# -------------------------------------------
def _live_model(model_dir: Path, device: str, allow_revisions: bool):
    from trainer.apply.export import ModelFolderError
    from trainer.apply.live import LiveError, LiveModel

    try:
        model = LiveModel.load(model_dir, device=device, allow_revisions=allow_revisions)
    except (LiveError, ModelFolderError, OSError) as e:
        raise one_line(e) from None
    if not model.causal:
        click.echo(
            "warning: a bidirectional model: each prediction is made from the past only, and would "
            "change once later utterances are known (--allow-revisions)",
            err=True,
        )
    return model


@main.command("live")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="A folder written by `m2f export` (verified before use).",
)
@click.option(
    "--replay",
    "video",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Instead of stdin: feed this recorded video at its real pace, one utterance per cue of "
    "--subtitles, as each cue ends.",
)
@click.option(
    "--subtitles",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="SRT/WebVTT cues of --replay (speaker from `<v Ann>` or a leading `Ann:`).",
)
@click.option("--speed", type=float, default=1.0, help="--replay at this many times real time.")
@click.option(
    "--allow-revisions",
    is_flag=True,
    help="Serve a bidirectional model too (its predictions would change with later utterances).",
)
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE, help="Where the models run.")
def live_command(
    model_dir: Path,
    video: Path | None,
    subtitles: Path | None,
    speed: float,
    allow_revisions: bool,
    device: str,
) -> None:
    """Predict each utterance as it comes, from the past only: JSON lines in, JSON lines out.

    Reads stdin, one JSON object per line: dialogue, speaker, text, and optionally clip (a video or
    audio file, relative to the working folder) with start/end in seconds, or audio (used whole).
    Writes one JSON line per utterance as soon as it is predicted (m2f predict's fields plus seconds
    and problems); a bad line gets {"line": n, "error": "..."} and the stream goes on.
    """
    from trainer.apply.live import replay, run_jsonl

    if (video is None) != (subtitles is None):
        raise click.UsageError("--replay and --subtitles go together")
    if speed <= 0:
        raise click.BadParameter("must be > 0", param_hint="--speed")
    model = _live_model(model_dir, device, allow_revisions)

    def write(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    try:
        if video is not None and subtitles is not None:  # (both or neither: checked above)
            summary = replay(model, video, subtitles, write, speed=speed)
            click.echo(
                f"replayed {summary['utterances']} utterances: lag p50 {summary['lag_p50_s']:.3f} s, "
                f"p95 {summary['lag_p95_s']:.3f} s, max {summary['lag_max_s']:.3f} s"
                + ("; the backlog grew" if summary["backlog_grew"] else ""),
                err=True,
            )
        else:
            bad = run_jsonl(model, sys.stdin, write)
            if bad:
                click.echo(f"{bad} input line(s) could not be taken (see their error lines)", err=True)
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as e:
        raise one_line(e) from None
    finally:
        model.close()


@main.command("serve")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="A folder written by `m2f export` (verified before use).",
)
@click.option("--host", default="127.0.0.1", help="Address to listen on (loopback by default).")
@click.option("--port", type=int, default=8000, help="TCP port.")
@click.option(
    "--allow-revisions",
    is_flag=True,
    help="Serve a bidirectional model too (its predictions would change with later utterances).",
)
@click.option("--max-upload-mb", type=float, default=50.0, help="Largest uploaded clip or audio file.")
@click.option(
    "--max-conversations",
    type=int,
    default=100,
    help="Conversations kept at once (the least recently used goes).",
)
@click.option("--idle-minutes", type=float, default=30.0, help="A conversation idle this long is forgotten.")
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE, help="Where the models run.")
def serve_command(
    model_dir: Path,
    host: str,
    port: int,
    allow_revisions: bool,
    max_upload_mb: float,
    max_conversations: int,
    idle_minutes: float,
    device: str,
) -> None:
    """Serve a model over HTTP: POST /v1/conversations/{id}/utterances -> its prediction.

    Also GET /v1/conversations/{id}, DELETE /v1/conversations/{id}, GET /health; OpenAPI docs at
    /docs. Clips and audio come only as multipart uploads (never a path on the server).
    """
    from trainer.apply.serve import serve

    try:
        serve(
            model_dir,
            host=host,
            port=port,
            device=device,
            allow_revisions=allow_revisions,
            max_upload_mb=max_upload_mb,
            max_conversations=max_conversations,
            idle_minutes=idle_minutes,
        )
    except (ValueError, OSError) as e:
        raise one_line(e) from None


# --- end live and serve ---


# --- doctor (pipeline/doctor.py) -------------------------------------------------------------
@main.command("doctor")
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=DEFAULT_CACHE,
    help="Cache root folder whose free space is checked.",
)
def doctor_command(cache: Path) -> None:
    """Check this environment: one line per check; exit 1 when any fails.

    Python; torch, torchvision and torchaudio at m2f's pinned versions with their native libraries
    loading together; PyAV decoding a generated H.264/AAC clip; MTCNN's weights finding a face; the
    shipped text model's files against their pinned sha256; CUDA (optional); free disk under the cache.
    """
    from pipeline.doctor import run_checks

    checks = run_checks(cache)
    for check in checks:
        click.echo(check.line())
    failed = [c.name for c in checks if not c.ok]
    if failed:
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        raise SystemExit(1)


# --- end doctor ---


def run() -> None:
    """The ``m2f`` entry point: the click group, with a broken native library reported in one line.

    An import of torch, torchaudio, PyAV ... that fails (e.g. torchaudio built for another torch) prints
    what failed and points at ``m2f doctor`` instead of a traceback, and exits 1.
    """
    try:
        main()
    except (ImportError, OSError, RuntimeError, AttributeError) as e:
        from pipeline.doctor import native_import_failure

        line = native_import_failure(e)
        if line is None:
            raise
        click.echo(line, err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run()
