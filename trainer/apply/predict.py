"""``m2f predict``: the emotion of every utterance of new conversations, with an exported model.

Input is a custom-corpus CSV (:mod:`pipeline.corpora.custom`; ``label`` and ``split`` are ignored, the
``clip`` column may be left out for text only) or a video with its subtitles
(:mod:`pipeline.corpora.subtitles`:
one cue = one utterance of one dialogue). Either way the utterances are written, in input order, to a
are featurized in memory, dialogue by dialogue, by :class:`pipeline.utterance.featurize.Featurizer` (the
decoding and
embedding functions of ``m2f extract``) with the model folder's encoders, text model and media settings,
exactly as the run's features were made: no generated CSV, no media or features file. Large inputs are
spread over worker processes (``workers``), each loading the models once. The dialogue model then gives the
class probabilities of every utterance with its dialogue as context.

A modality the model reads but an utterance lacks (no clip, a clip without audio or without a face
track) is fed the model's learned missing vector, as in training, and flagged ``has_<modality>`` False
in the output. When no utterance has a clip, audio and visual are not extracted at all.

Output: one row per utterance, ``dialogue, position, speaker, start, end, text, predicted,
p_<class>..., has_<modality>...`` as CSV, or the same keys as JSON lines.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The extraction engine, imported in this one place for export, predict and the demo (pipeline.extract
# after the package split).
from pipeline.extract import ExtractError, ExtractOptions, format_summary, run_extract
from pipeline.manifest import Utterance
from pipeline.names import LETTER, MODALITIES
from pipeline.shown import shown
from pipeline.store.atomic import atomic_write_text
from trainer.apply.export import ExportedModel, ModelFolderError, load_model_folder

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl")
#: Split every predicted utterance is put in (one split; the dialogue model ignores splits).
PREDICT_SPLIT = "test"


class PredictError(ValueError):
    """Input that cannot be predicted; the message names the file and says what to do."""


@dataclass
class PredictResult:
    """What :func:`predict` wrote and measured."""

    out: Path
    rows: list[dict]
    class_names: list[str]
    plot: Path | None = None
    modalities: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)


# -- reading the input -------------------------------------------------------------------------------
def csv_utterances(path: Path, work: Path) -> list[Utterance]:
    """The utterances of a custom-corpus CSV in file order (dialogues by first appearance).

    A CSV without a ``clip`` column is read as text only (a copy with an empty column goes to ``work``).
    """
    from pipeline.corpora import CorpusError
    from pipeline.corpora.custom import find_custom_csv, prepare_custom, read_custom_csv

    try:
        path = find_custom_csv(path)
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
        if header and "clip" not in header:
            path = _with_empty_clip_column(path, work / "no-clips" / path.name)
        order: dict[str, int] = {}
        for row in read_custom_csv(path):
            order.setdefault(row["dialogue_id"], len(order))
        utterances = prepare_custom(path)
    except (CorpusError, UnicodeDecodeError) as e:
        raise PredictError(str(e)) from None
    return sorted(utterances, key=lambda u: (order[u.dialogue_id], u.position))


def _with_empty_clip_column(src: Path, dst: Path) -> Path:
    with open(src, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0] + ["clip"])
        writer.writerows(row + [""] for row in rows[1:])
    return dst


def subtitle_utterances(video: Path, subtitles: Path) -> list[Utterance]:
    """One dialogue: a cue per utterance, all spans inside ``video``."""
    from pipeline.corpora.subtitles import read_subtitles

    if not video.is_file():
        raise PredictError(f"{video}: no such video; pass the video the subtitles belong to")
    dialogue = re.sub(r"[^\w.\-]+", "_", video.stem) or "video"
    return [
        Utterance(
            corpus="custom",
            split=PREDICT_SPLIT,
            dialogue_id=dialogue,
            position=i,
            utterance_id=str(i),
            speaker=c.speaker,
            text=c.text,
            label=None,
            clip=str(video.resolve()),
            start=c.start,
            end=c.end,
        )
        for i, c in enumerate(read_subtitles(subtitles))
    ]


def input_utterances(
    input_path: Path, subtitles: str | Path | None, work: Path
) -> tuple[list[Utterance], Path]:
    """The utterances of a CSV (or a video with ``subtitles``) and the folder their clips live under."""
    if subtitles is not None:
        if input_path.suffix.lower() == ".csv" or input_path.is_dir():
            raise PredictError(f"{shown(input_path)}: --subtitles goes with a video, not a CSV; drop one")
        utterances = subtitle_utterances(input_path, Path(subtitles))
        base = input_path.resolve().parent  # the clip is the resolved video: the same form, or it is lost
    else:
        if input_path.suffix.lower() not in (".csv", "") and not input_path.is_dir():
            raise PredictError(
                f"{shown(input_path)}: give a custom-corpus CSV, or a video with --subtitles "
                "talk.srt|talk.vtt"
            )
        utterances = csv_utterances(input_path, work)
        # the clips are <the CSV's folder as given>/<relative path>: keep that form (not resolved), or a
        # folder reached through a symlink makes every clip "outside" and loses audio and video
        base = Path(os.path.abspath(input_path if input_path.is_dir() else input_path.parent))
    return utterances, base


# -- featurizing and the dialogue model -----------------------------------------------------------------
def modalities_to_extract(model: ExportedModel, utterances: Sequence[Utterance]) -> tuple[str, ...]:
    """The model's modalities, without audio and visual when no utterance has a clip."""
    has_clip = any(u.clip for u in utterances)
    return tuple(m for m in MODALITIES if LETTER[m] in model.modalities and (m == "text" or has_clip))


@dataclass(frozen=True)
class FeaturizerSpec:
    """What a process needs to build the model folder's featurizer (picklable: worker processes get it)."""

    modalities: tuple[str, ...]
    text_model: str | None
    encoders: str | None
    media_config: dict | None
    device: str = "cpu"
    batch: int = 32

    @classmethod
    def of(cls, model: ExportedModel, modalities: Sequence[str], device: str = "cpu") -> FeaturizerSpec:
        """The spec of an exported folder (its encoders written once as checkpoints in its private copy)."""
        media = any(m != "text" for m in modalities)
        encoders = None
        if media:
            folder = model.folder / "predict-encoders"
            written = (folder / "audio.pt").exists()
            encoders = str(folder if written else model.write_encoder_checkpoints(folder))
        return cls(
            tuple(modalities),
            str(model.text_model) if "text" in modalities else None,
            encoders,
            model.media_config if media else None,
            device,
        )

    def build(self):
        """The :class:`pipeline.utterance.featurize.Featurizer` (models loaded now)."""
        from pipeline.utterance.featurize import FeatureModels, Featurizer
        from pipeline.utterance.process import MediaConfig

        cfg = MediaConfig.recorded(self.media_config)  # an older model: the media settings it was made with
        models = FeatureModels(
            self.modalities,
            device=self.device,
            batch=self.batch,
            n_frames=cfg.n_frames,
            text_source=self.text_model,
            encoders_source=self.encoders,
        )
        if "text" in self.modalities:
            from pipeline.text.embedder import TextEmbedder

            models.text = TextEmbedder(self.text_model, device=self.device, batch_size=self.batch)
        if self.encoders is not None:
            from pipeline.encoders.checkpoint import load_encoder_set

            models.encoders = load_encoder_set(self.encoders, self.device)
        return Featurizer(models, cfg)


#: Inputs up to this many utterances are featurized in this process (see :func:`resolve_workers`).
IN_PROCESS_MAX_UTTERANCES = 64


def resolve_workers(workers: int | None, utterances: Sequence[Utterance]) -> int:
    """Worker processes for featurizing; 0 = this process, with every core.

    ``None`` (auto) picks 0 for one dialogue or a few utterances: a worker process imports torch and
    loads MTCNN, the encoders and the text model, which costs more than one conversation's work
    (bench/RESULTS.md, "Predict latency"). Larger inputs get 2 processes.
    """
    if workers is not None:
        return workers
    dialogues = {u.dialogue_id for u in utterances}
    return 0 if len(dialogues) == 1 or len(utterances) <= IN_PROCESS_MAX_UTTERANCES else 2


_WORKER_FEATURIZER = None  # in a worker process of featurize(): its featurizer, built once


def _worker_init(spec: FeaturizerSpec) -> None:
    global _WORKER_FEATURIZER
    import torch

    torch.set_num_threads(1)  # several busy processes on few cores: one thread each
    _WORKER_FEATURIZER = spec.build()


def _worker_featurize(utterances: list[Utterance]) -> tuple[dict, list[dict]]:
    if _WORKER_FEATURIZER is None:
        raise RuntimeError("this worker process was not started with its featurizer")
    return _WORKER_FEATURIZER.featurize(utterances)


def featurize(spec: FeaturizerSpec, utterances: Sequence[Utterance], workers: int = 0):
    """Feature rows of every utterance (dialogue by dialogue, in input order): ``(SplitArrays, problems)``."""
    from pipeline.manifest import group_dialogues
    from pipeline.store.features import FEATURE_FIELDS, LOGITS_FIELD, SplitArrays

    dialogues = [list(d.utterances) for d in group_dialogues(utterances)]
    if workers <= 0:
        featurizer = spec.build()
        parts = [featurizer.featurize(d) for d in dialogues]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(spec,),
        ) as pool:
            parts = list(pool.map(_worker_featurize, dialogues))
    columns: dict[str, Any] = {}
    for k in FEATURE_FIELDS:
        values = [part[0][k] for part in parts]
        columns[k] = (
            np.concatenate(values)
            if isinstance(values[0], np.ndarray)
            else np.array([x for v in values for x in v], dtype=object)
        )
    arrays = SplitArrays(**columns)
    if parts and LOGITS_FIELD in parts[0][0]:  # a text model with a head: its logits, as extract saves them
        from pipeline.text.embedder import head_classes

        arrays.text_logits = np.concatenate([part[0][LOGITS_FIELD] for part in parts])
        arrays.text_logits_classes = head_classes(spec.text_model) if spec.text_model else None
    return arrays, [p for part in parts for p in part[1]]


def conversation_tensors(model: ExportedModel, arrays, modalities: tuple[str, ...]):
    """The featurized rows as a :class:`~trainer.dialogue.data.DialogueSplit` with every modality the model
    reads;
    one that was not extracted is all missing (the model's learned vector)."""
    from trainer.dialogue.data import FeaturesError, split_from_arrays

    letters = "".join(LETTER[m] for m in modalities)
    residual = bool(model.model.config.head_residual)  # the text head's logits, mapped by class name
    try:
        split = split_from_arrays(arrays, PREDICT_SPLIT, model.class_names, letters, "the input", residual)
    except FeaturesError as e:
        raise ModelFolderError(f"{model.shown_name('.')}: {e}") from None
    shape = split.mask.shape
    for m in model.modalities:
        if m not in split.features:
            split.features[m] = torch.zeros(*shape, model.dims[m])
            split.present[m] = torch.zeros(*shape, dtype=torch.bool)
        elif split.features[m].shape[-1] != model.dims[m]:
            width = split.features[m].shape[-1]
            raise ModelFolderError(
                f"{model.shown_name('.')}: its {m} features are {width} wide, the model "
                f"reads {model.dims[m]}; its files do not belong together"
            )
    return split


def prediction_rows(
    model: ExportedModel, arrays, probs: np.ndarray, utterances: Sequence[Utterance]
) -> list[dict]:
    """One dict per utterance (row order): identity, times, text, prediction, probabilities, flags."""
    by_id = {u.id: u for u in utterances}
    rows = []
    for i, utt_id in enumerate(arrays.utt_id):
        u = by_id[str(utt_id)]
        row = {
            "dialogue": u.dialogue_id,
            "position": int(arrays.position[i]),
            "speaker": u.speaker,
            "start": u.start,
            "end": u.end,
            "text": u.text,
            "predicted": model.class_names[int(probs[i].argmax())],
        }
        row.update({f"p_{c}": float(p) for c, p in zip(model.class_names, probs[i], strict=True)})
        for m in MODALITIES:
            if LETTER[m] in model.modalities:
                flags = getattr(arrays, f"has_{m}")
                row[f"has_{m}"] = bool(flags[i]) if len(flags) else False
        rows.append(row)
    return rows


def write_rows(rows: Sequence[dict], out: Path, fmt: str) -> Path:
    """CSV (probabilities to 6 significant digits) or JSON lines, atomically."""
    if fmt == "jsonl":
        return atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    return atomic_write_text(out, buf.getvalue())


#: First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    """A CSV cell: numbers to 6 significant digits; text that a spreadsheet would run as a formula gets a
    leading single quote (``=HYPERLINK(...)`` from a subtitle stays text); CR becomes LF."""
    if isinstance(value, str):
        # a lone CR would end the row for a reader (the writer quotes only fields holding "\n")
        text = "'" + value if value.startswith(FORMULA_STARTS) else value
        return text.replace("\r\n", "\n").replace("\r", "\n")
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def output_format(out: Path, fmt: str | None) -> str:
    """``fmt``, or ``jsonl`` for an ``.jsonl`` / ``.json`` output name, else ``csv``."""
    if fmt is None:
        fmt = "jsonl" if out.suffix.lower() in (".jsonl", ".json") else "csv"
    if fmt not in FORMATS:
        raise PredictError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def predict(
    model_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    subtitles: str | Path | None = None,
    fmt: str | None = None,
    plot: str | Path | None = None,
    workers: int | None = None,
    device: str = "cpu",
    work: str | Path | None = None,
    model: ExportedModel | None = None,
) -> PredictResult:
    """``m2f predict``: write the emotion of every utterance of ``input_path`` to ``out``.

    Parameters
    ----------
    model_dir : path
        A folder written by ``m2f export`` (verified before use).
    input_path : path
        A custom-corpus CSV, or a video when ``subtitles`` is given.
    out : path
        Predictions file (CSV or JSON lines, see ``fmt``).
    subtitles : path, optional
        SRT / WebVTT file of the video ``input_path``.
    fmt : {"csv", "jsonl"} or None
        None: from the suffix of ``out`` (``.jsonl`` -> JSON lines), else CSV.
    plot : path, optional
        Also draw the timeline PNG here (:func:`trainer.apply.timeline.plot_timeline`).
    workers : int or None
        Featurizing worker processes; 0 = this process; None = 0 for one dialogue or a few utterances,
        else 2 (:func:`resolve_workers`).
    device : str
        ``cpu`` or ``cuda`` for extraction and the dialogue model.
    work : path, optional
        Scratch folder (a copy of a CSV without a clip column); default a temporary folder, removed after.
    model : ExportedModel, optional
        An already loaded folder (a service predicting many conversations loads it once).

    Raises
    ------
    PredictError, ModelFolderError, ExtractError
        Bad input, a refused model folder, an extraction that cannot go on (one-line messages).
    """
    t0 = time.perf_counter()
    out, input_path = Path(out), Path(input_path)
    fmt = output_format(out, fmt)
    seconds: dict[str, float] = {}
    loaded_here = model is None
    if model is None:
        model = load_model_folder(model_dir, device)
        logger.info(
            "model %s: sha256 of its checksums.json %s (integrity, not origin: compare it with the "
            "publisher's)",
            shown(model_dir),
            model.checksums_sha256,
        )
    seconds["load"] = time.perf_counter() - t0
    temp = work is None
    work = Path(tempfile.mkdtemp(prefix="m2f-predict-")) if work is None else Path(work)
    try:
        if not input_path.exists():
            raise PredictError(
                f"{input_path}: no such file; give a custom-corpus CSV, or a video with "
                "--subtitles talk.srt|talk.vtt"
            )
        utterances, _ = input_utterances(input_path, subtitles, work)
        modalities = modalities_to_extract(model, utterances)
        workers = resolve_workers(workers, utterances)
        t = time.perf_counter()
        arrays, problems = featurize(FeaturizerSpec.of(model, modalities, device), utterances, workers)
        for p in problems[:20]:
            logger.warning("%s: %s", shown(p.get("file") or p["utt_id"]), shown(p["problem"]))
        if len(problems) > 20:
            logger.warning("... and %d more media or embedding problems", len(problems) - 20)
        seconds["extract"] = time.perf_counter() - t
        t = time.perf_counter()
        from trainer.dialogue.fit import predict_probs

        split = conversation_tensors(model, arrays, modalities).to(device)
        probs = predict_probs(model.model, split, 64, device)
        rows = prediction_rows(model, arrays, probs, utterances)
        seconds["inference"] = time.perf_counter() - t
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
        if loaded_here:
            model.close()  # the private copy of the verified folder
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out, fmt)
    plot_path = None
    if plot is not None:
        from trainer.apply.timeline import plot_timeline

        try:
            plot_path = plot_timeline(rows, model.class_names, Path(plot))
        except (ValueError, RuntimeError, OSError) as e:  # the predictions are kept: say so
            raise PredictError(
                f"{shown(plot)}: the timeline could not be drawn ({type(e).__name__}: "
                f"{shown(str(e).strip().splitlines()[-1] if str(e).strip() else '')}); the "
                f"predictions are written to {shown(out)}"
            ) from None
    seconds["total"] = time.perf_counter() - t0
    return PredictResult(out, rows, model.class_names, plot_path, modalities, seconds)


__all__ = [
    "ExtractError",
    "ExtractOptions",
    "PredictError",
    "PredictResult",
    "format_summary",
    "predict",
    "run_extract",
]
