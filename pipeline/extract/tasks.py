"""Worker side of ``m2f extract``: per-process model cache and the two partition tasks.

Workers use one torch thread and load each model once per process (:func:`cached_model`), never per
task. Models are cached under the content identity of their weights (never their path), so a
long-lived cluster never embeds with stale weights after the files were rewritten in place; the cache
keeps at most :data:`MAX_CACHED` objects. Every path a task receives is absolute (see
:mod:`pipeline.store.layout`): a worker may run in another folder, or on another machine that mounts the
same file system.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TypeVar, cast

from pipeline.extract.options import EmbedSpec, ExtractError
from pipeline.manifest import Utterance
from pipeline.store.h5rows import RowReader
from pipeline.utterance.embed import StageClock
from pipeline.utterance.featurize import FeatureModels, embed_utterances

#: Most objects (models, open media readers) one worker process keeps; the least recently used goes.
_T = TypeVar("_T")
MAX_CACHED = 6
_MODELS: OrderedDict[tuple, object] = OrderedDict()
_LOADS: dict[str, int] = {}  # model kind -> times built in this process (the test of "once per worker")
_THREADS_SET = False


def _worker_setup() -> None:
    global _THREADS_SET
    if not _THREADS_SET:
        import torch

        torch.set_num_threads(1)
        with suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        _THREADS_SET = True


def warm_modules(modalities: Sequence[str], stage: str) -> list[str]:
    """What the ``stage`` ("media" or "embed") tasks of a run with ``modalities`` import first.

    For :func:`warm_worker`, and the media ones for the forkserver's preload
    (:mod:`pipeline.extract.preload`); the embed stage's media modules are the media stage's.
    """
    if stage == "media":
        return ["pipeline.utterance.process", "facenet_pytorch", "pipeline.encoders.checkpoint"]
    if "text" in modalities:
        return ["pipeline.text.embedder", "transformers.modeling_utils", "transformers.models.auto"]
    return []


def warm_worker(modules: Sequence[str]) -> None:
    """Set the worker's threads and import ``modules`` (run by ``Engine.start_soon`` on every worker).

    The first task would import them anyway; importing them while the driver still checks its inputs,
    or merges the last stage's output, takes that time off the stage (a few seconds: torch,
    facenet-pytorch, torchvision, transformers).
    """
    import gc
    import importlib

    _worker_setup()
    for name in modules:
        importlib.import_module(name)
    # what the imports made lives as long as the process: out of the cyclic collector's sight, it is not
    # traversed again by each full collection, nor at exit (~0.6-0.9 s of a worker's close with torch,
    # torchvision and transformers imported; bench/RESULTS.md)
    gc.freeze()


def _keep(key: tuple, obj: object) -> None:
    _MODELS[key] = obj
    while len(_MODELS) > MAX_CACHED:
        _MODELS.popitem(last=False)


def text_model_key(text_id: str | None, device: str, batch: int) -> tuple:
    """The model-cache key of a text embedder (what the embed task and the driver's check share)."""
    return ("text", text_id, device, batch)


def cached_model(key: tuple, build: Callable[[], _T]) -> _T:
    """The object ``build()`` returns, built once per process and kept under ``key`` (``key[0]`` = kind).

    At most :data:`MAX_CACHED` objects are kept; the least recently used one is dropped first.
    """
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return cast(_T, _MODELS[key])  # one key, one kind: what build() made when it was first asked
    obj = build()
    _LOADS[key[0]] = _LOADS.get(key[0], 0) + 1
    _keep(key, obj)
    return obj


def weights_identity(source: str | None) -> str | None:
    """Content identity of a weights file or folder (:func:`pipeline.store.atomic.content_identity`).

    A hub id, ``"random"`` or None stands for itself.
    """
    if source is None or not os.path.exists(source):
        return source
    from pipeline.store.atomic import content_identity

    return f"content:{content_identity(source)}"


def _worker_stats() -> dict:
    return {
        "pid": os.getpid(),
        "loads": dict(_LOADS),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


class TimedDetector:
    """Wraps a face detector so the seconds spent in ``detect`` (MTCNN) are counted apart."""

    def __init__(self, detector, clock: StageClock):
        self._detector, self._clock = detector, clock

    def detect(self, *args, **kwargs):
        return self._clock.timed("mtcnn", self._detector.detect, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._detector, name)


def media_partition(utterances: list[Utterance], media_cfg: dict, device: str) -> dict:
    """Worker task: decode, detect and crop one partition. Never raises on bad media.

    Returns ``{"split", "rows": list of media rows (each with a JSON ``problems`` field),
    "problems": {utt_id: [str]}, "seconds": {...}, "stats": {...}}``.
    """
    _worker_setup()
    from pipeline.utterance.process import FaceDetector, MediaConfig, process_utterance

    cfg = MediaConfig(**media_cfg)
    detector = cached_model(
        ("mtcnn", json.dumps(media_cfg, sort_keys=True), device), lambda: FaceDetector(cfg, device=device)
    )
    clock = StageClock()
    timed = TimedDetector(detector, clock)
    rows, problems = [], {}
    t0 = time.perf_counter()
    for u in utterances:
        row, probs = process_utterance(u, cfg, timed)
        row = dict(row)
        row["problems"] = json.dumps(list(probs), ensure_ascii=False)
        rows.append(row)
        if probs:
            problems[u.id] = list(probs)
    total = time.perf_counter() - t0
    clock.add("decode", total - clock.seconds.get("mtcnn", 0.0))
    return {
        "split": utterances[0].split,
        "rows": rows,
        "problems": problems,
        "seconds": clock.seconds,
        "stats": _worker_stats(),
    }


def _media_reader(path: str, split: str) -> RowReader:
    mtime = os.stat(path).st_mtime_ns
    return cached_model(("media", path, split, mtime), lambda: RowReader(path, split))


def _media_rows(path: str, utterances: Sequence[Utterance], names: Sequence[str]) -> list[dict]:
    reader = _media_reader(path, utterances[0].split)
    index = cached_model(
        ("media_index", path, utterances[0].split, os.stat(path).st_mtime_ns),
        lambda: {u: i for i, u in enumerate(reader.utt_ids)},
    )
    missing = [u.id for u in utterances if u.id not in index]
    if missing:
        raise ExtractError(f"{path} has no media rows for {missing[:3]}; delete it and rerun")
    return [reader.row(index[u.id], names) for u in utterances]


def embed_partition(utterances: list[Utterance], spec: EmbedSpec) -> dict:
    """Worker task: feature rows (see :func:`pipeline.utterance.embed.feature_rows`) for one partition.

    The models are loaded once per worker process; the rows are computed by
    :func:`pipeline.utterance.featurize.embed_utterances` from the partition's ``media.h5`` rows, the same
    function
    ``m2f predict`` and the live interfaces call on media decoded in memory. Never raises on one bad
    utterance (see there). Returns ``{"split", "rows", "problems": [dict], "seconds", "stats"}``.
    """
    _worker_setup()
    clock = StageClock()
    problems: list[dict] = []
    models = FeatureModels(
        tuple(spec.modalities),
        device=spec.device,
        batch=spec.batch,
        n_frames=spec.n_frames,
        text_source=spec.text_model,
        encoders_source=spec.encoders,
    )
    if "text" in spec.modalities:
        from pipeline.text.embedder import TextEmbedder

        text_id = spec.text_id or weights_identity(spec.text_model)
        models.text = cached_model(
            text_model_key(text_id, spec.device, spec.batch),
            lambda: TextEmbedder(spec.text_model, device=spec.device, batch_size=spec.batch),
        )
    media = None
    if models.media_fields:
        from pipeline.encoders.checkpoint import load_encoder_set

        encoders = spec.encoders
        if encoders is None:
            raise ExtractError(f"modalities {spec.modalities} need encoders, and the embed spec names none")
        encoders_id = spec.encoders_id or weights_identity(encoders)
        models.encoders = cached_model(
            ("encoders", encoders_id, spec.device), lambda: load_encoder_set(encoders, spec.device)
        )
        media = clock.timed("read", _media_rows, spec.media, utterances, models.media_fields)
    rows = embed_utterances(utterances, media, models, problems, clock)
    return {
        "split": utterances[0].split,
        "rows": rows,
        "problems": problems,
        "seconds": clock.seconds,
        "stats": _worker_stats(),
    }
