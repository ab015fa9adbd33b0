"""``m2f extract``: the dask engine that turns a corpus into ``features.h5``, resumable and crash-safe.

Stages (each skipped when its output is complete)::

    prepare  corpus -> cache/<dataset>/manifest-<root hash>.jsonl
    media    manifest -> cache/<dataset>/media-<hash>/media.h5 (+ problems.jsonl)     [dask]
    encoders cache/<dataset>/encoders/<media hash>/{audio,face,scene}.pt, or --encoders DIR|random
    text     --text-model, or the shipped MiniLM fine-tuned on the train split (cached)
    embed    media.h5 + encoders + text model -> cache/<dataset>/<config hash>/features.h5  [dask]

Engine. Work is partitioned by dialogue (a partition = whole dialogues, about ``partition_size``
utterances, all of one split). Each partition is one ``client.submit`` (with ``retries``); the driver
takes results with ``as_completed`` and alone writes each as one atomic shard
(:class:`pipeline.cache.ShardedWriter`), so a ``kill -9`` of the whole run loses at most the partitions
in flight, and a rerun skips every partition whose ids are written. A worker that dies is replaced by
its nanny and its tasks are rescheduled. Workers use one torch thread and load each model once per
process (:data:`_MODELS`), never per task.

The executor is injected: pass ``client=`` (any ``distributed.Client``) or ``scheduler=`` (an address,
e.g. a dask-jobqueue SLURM cluster); otherwise a ``LocalCluster`` of process workers is started when
there is work to do (a complete rerun starts nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.cache import FeatureWriter, RowReader, ShardedWriter, config_hash
from pipeline.corpora.base import CLASS_MAPS
from pipeline.embed import (
    FrontTimer,
    StageClock,
    encode_waveforms,
    feature_rows,
    text_embeddings,
    visual_embeddings,
)
from pipeline.manifest import SPLITS, Utterance, group_dialogues, read_jsonl, write_jsonl

MODALITIES = ("text", "audio", "visual")
ENCODER_FILES = ("audio", "face", "scene")


class ExtractError(RuntimeError):
    """A run cannot go on; the message says what to do."""


@dataclass(frozen=True)
class ExtractOptions:
    """Everything ``m2f extract`` is told.

    Parameters
    ----------
    dataset : str
        ``meld``, ``iemocap``, ``sample`` or ``custom`` (a reader of :mod:`pipeline.corpora`).
    root : path or None
        Corpus folder.
    modalities : tuple of str
        Any of ``text``, ``audio``, ``visual``.
    splits : tuple of str
        Splits to extract.
    workers : int
        Local worker processes (ignored with ``scheduler``; 1 with ``device='cuda'``).
    scheduler : str or None
        Address of an existing dask scheduler.
    device : str
        ``cpu`` or ``cuda`` (MTCNN, encoders and text model).
    text_model : str or None
        Hub id or local folder, used frozen. None: fine-tune the shipped MiniLM on the train split.
    encoders : str or None
        A folder with ``audio.pt``, ``face.pt``, ``scene.pt``, or ``random``. None: the cached encoders
        trained on this media, trained now if missing.
    cache : path
        Cache root.
    limit : int or None
        At most this many utterances per split (first dialogues in manifest order).
    partition_size : int
        Most utterances per partition (whole dialogues, so a partition may hold more); smaller on a
        small corpus, so that each worker gets about 4 partitions.
    batch_size : int or None
        Encoder batch; default 32 on CPU, 256 on CUDA.
    retries : int
        Dask retries per partition task.
    media_config : dict or None
        Overrides of :class:`pipeline.media.MediaConfig` defaults (e.g. ``{"n_frames": 8}``); part of
        every cache key below the manifest.
    """

    dataset: str
    root: Path | None
    modalities: tuple[str, ...] = MODALITIES
    splits: tuple[str, ...] = SPLITS
    workers: int = 2
    scheduler: str | None = None
    device: str = "cpu"
    text_model: str | None = None
    encoders: str | None = None
    cache: Path = Path("cache")
    limit: int | None = None
    partition_size: int = 16
    batch_size: int | None = None
    retries: int = 3
    media_config: dict | None = None

    def __post_init__(self):
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ExtractError(f"unknown modalities {bad}; choose from {MODALITIES}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ExtractError(f"unknown splits {bad}; choose from {SPLITS}")
        if self.device not in ("cpu", "cuda"):
            raise ExtractError(f"device {self.device!r}: choose cpu or cuda")
        if self.limit is not None and self.limit < 1:
            raise ExtractError(f"--limit {self.limit}: must be at least 1")

    @property
    def needs_media(self) -> bool:
        return "audio" in self.modalities or "visual" in self.modalities

    @property
    def batch(self) -> int:
        return self.batch_size or (256 if self.device == "cuda" else 32)


@dataclass
class SplitSummary:
    """Per split: utterances computed by this run, found already written, and with media problems."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    problems: int = 0


@dataclass
class ExtractResult:
    """What a run produced and measured."""

    features: Path
    manifest: Path
    media: Path | None
    summary: dict[str, SplitSummary]
    seconds: dict[str, float] = field(default_factory=dict)      # wall time per driver stage
    work: dict[str, float] = field(default_factory=dict)         # summed worker time per sub-stage
    workers: dict[str, dict] = field(default_factory=dict)  # pid -> {loads: {kind: n}, peak_rss_mb, tasks}
    text_model: str | None = None
    encoders: str | None = None


def log(*args) -> None:
    """Progress and notes go to stderr; stdout gets only the features path."""
    print(*args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# selection, partitions, hashes (compute)
# ------------------------------------------------------------------------------------------------
def select(utterances: Sequence[Utterance], splits: Sequence[str], limit: int | None) -> list[Utterance]:
    """Utterances of ``splits`` in dialogue-then-position order, at most ``limit`` per split.

    The limit keeps the first dialogues whole where it can; the last one kept may be cut to its first
    utterances (positions stay ``0..k-1``).
    """
    out: list[Utterance] = []
    for split in splits:
        n = 0
        for d in group_dialogues(u for u in utterances if u.split == split):
            for u in d.utterances:
                if limit is not None and n >= limit:
                    break
                out.append(u)
                n += 1
    return out


def partition(utterances: Sequence[Utterance], size: int) -> list[list[Utterance]]:
    """Consecutive whole dialogues of one split, about ``size`` utterances per partition."""
    parts: list[list[Utterance]] = []
    cur: list[Utterance] = []
    for d in group_dialogues(utterances):
        if cur and (len(cur) >= size or cur[0].split != d.split):
            parts.append(cur)
            cur = []
        cur.extend(d.utterances)
    if cur:
        parts.append(cur)
    return parts


def manifest_hash(utterances: Sequence[Utterance]) -> str:
    """Hash of the selected manifest (ids, texts, paths, spans)."""
    return config_hash({"utterances": [u.to_json() for u in utterances]})


def manifest_path(cache: Path, dataset: str, root: Path | None) -> Path:
    """``cache/<dataset>/manifest-<hash of the resolved root>.jsonl``."""
    key = hashlib.sha256(str(Path(root).resolve() if root else "-").encode()).hexdigest()[:12]
    return Path(cache) / dataset / f"manifest-{key}.jsonl"


def feature_config(opts: ExtractOptions, manifest_key: str, media_cfg: dict | None, encoders_id: str | None,
                   text_id: str | None) -> dict:
    """Every option that changes the numbers of ``features.h5``; its hash names the folder."""
    return {
        "dataset": opts.dataset, "manifest": manifest_key, "splits": list(opts.splits), "limit": opts.limit,
        "modalities": sorted(opts.modalities), "media": media_cfg, "encoders": encoders_id,
        "text_model": text_id,
    }


def order_by_split(utterances: Sequence[Utterance]) -> dict[str, list[str]]:
    """Final row order per split (manifest order: dialogue, then position)."""
    order: dict[str, list[str]] = {}
    for u in utterances:
        order.setdefault(u.split, []).append(u.id)
    return order


# ------------------------------------------------------------------------------------------------
# worker side: per-process state, the two partition tasks
# ------------------------------------------------------------------------------------------------
_MODELS: dict[tuple, object] = {}
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


def cached_model(key: tuple, build: Callable[[], object]) -> object:
    """The object ``build()`` returns, built once per process and kept under ``key`` (``key[0]`` = kind)."""
    if key not in _MODELS:
        _MODELS[key] = build()
        _LOADS[key[0]] = _LOADS.get(key[0], 0) + 1
    return _MODELS[key]


def _worker_stats() -> dict:
    return {"pid": os.getpid(), "loads": dict(_LOADS),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


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
    from pipeline.media import FaceDetector, MediaConfig, process_utterance

    cfg = MediaConfig(**media_cfg)
    detector = cached_model(("mtcnn", json.dumps(media_cfg, sort_keys=True), device),
                            lambda: FaceDetector(cfg, device=device))
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
    return {"split": utterances[0].split, "rows": rows, "problems": problems,
            "seconds": clock.seconds, "stats": _worker_stats()}


@dataclass(frozen=True)
class EmbedSpec:
    """What an embed task needs to know (picklable, small)."""

    modalities: tuple[str, ...]
    device: str
    batch: int
    encoders: str | None          # "random" or a folder; None when neither audio nor visual
    text_model: str | None        # what TextEmbedder loads; None when text is not requested
    n_frames: int = 15


def _media_reader(path: str, split: str) -> RowReader:
    mtime = os.stat(path).st_mtime_ns
    return cached_model(("media", path, split, mtime), lambda: RowReader(path, split))  # type: ignore[return-value]


def _media_rows(path: str, utterances: Sequence[Utterance], names: Sequence[str]) -> list[dict]:
    reader = _media_reader(path, utterances[0].split)
    index = cached_model(("media-index", path, utterances[0].split, id(reader)),
                         lambda: {u: i for i, u in enumerate(reader.utt_ids)})
    missing = [u.id for u in utterances if u.id not in index]
    if missing:
        raise ExtractError(f"{path} has no media rows for {missing[:3]}; delete it and rerun")
    return [reader.row(index[u.id], names) for u in utterances]


def embed_partition(utterances: list[Utterance], media_path: str | None, spec: EmbedSpec) -> dict:
    """Worker task: feature rows (see :func:`pipeline.embed.feature_rows`) for one partition."""
    _worker_setup()
    clock = StageClock()
    text = audio = visual = None
    if "text" in spec.modalities:
        from pipeline.modalities.text import TextEmbedder

        embedder = cached_model(("text", spec.text_model, spec.device, spec.batch),
                                lambda: TextEmbedder(spec.text_model, device=spec.device,
                                                     batch_size=spec.batch))
        text = clock.timed("text", text_embeddings, embedder, utterances)
    if "audio" in spec.modalities or "visual" in spec.modalities:
        from pipeline.encoders.model import load_encoder_set

        encs = cached_model(("encoders", spec.encoders, spec.device),
                            lambda: load_encoder_set(spec.encoders, spec.device))
        names = ["has_audio", "waveform"] if "audio" in spec.modalities else []
        if "visual" in spec.modalities:
            names += ["has_video", "has_face", "faces", "face_frame", "face_weight", "scenes"]
        media = clock.timed("read", _media_rows, media_path, utterances, names)
        if "audio" in spec.modalities:
            has_audio = np.array([bool(m["has_audio"]) and len(m["waveform"]) > 0 for m in media])
            waves = [m["waveform"] if h else np.zeros(0, np.float32)
                     for m, h in zip(media, has_audio, strict=True)]
            timer = FrontTimer(encs.audio, clock)
            try:
                emb = clock.timed("encoders", encode_waveforms, encs.audio, waves, spec.batch, spec.device)
            finally:
                timer.remove()
            audio = (emb, has_audio)
        if "visual" in spec.modalities:
            visual = visual_embeddings(encs.face, encs.scene, media, spec.n_frames, spec.batch, spec.device,
                                       clock)
    if "mel" in clock.seconds:  # the encoders' time excludes the log-mel measured inside it
        clock.seconds["encoders"] -= clock.seconds["mel"]
    return {"split": utterances[0].split, "rows": feature_rows(utterances, text, audio, visual),
            "seconds": clock.seconds, "stats": _worker_stats()}


# ------------------------------------------------------------------------------------------------
# driver side
# ------------------------------------------------------------------------------------------------
def rows_to_columns(rows: Sequence[dict]) -> dict[str, object]:
    """Media rows -> columns for :meth:`ShardedWriter.append` (arrays with a dimension become ragged)."""
    cols: dict[str, object] = {}
    for name in rows[0]:
        vals = [r[name] for r in rows]
        if isinstance(vals[0], np.ndarray) and vals[0].ndim >= 1:
            cols[name] = [np.asarray(v) for v in vals]
        elif isinstance(vals[0], str) or vals[0] is None:
            cols[name] = np.array(["" if v is None else str(v) for v in vals], dtype=object)
        else:
            cols[name] = np.asarray(vals)
    return cols


#: dask's nanny sets this for its workers; any explicit value turns off glibc's dynamic mmap threshold,
#: so every large torch buffer is mmap'd and page-faulted afresh: CPU convolutions ran 2x slower
#: (measured: 3.9 s vs 1.9 s of thread CPU time for the same encoder work).
_DASK_TRIM = "MALLOC_TRIM_THRESHOLD_"


def make_local_cluster(n_workers: int):
    """``LocalCluster`` of ``n_workers`` process workers, one thread each, glibc malloc left at its defaults.

    Use this (not a bare ``LocalCluster``) to run the engine's tasks at full speed. For an external
    cluster (``--scheduler``) set ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null``
    in its dask config for the same effect.
    """
    import dask
    from distributed import LocalCluster

    if os.environ.get(_DASK_TRIM) == "65536":  # left in this process's environment by an earlier nanny
        del os.environ[_DASK_TRIM]
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{_DASK_TRIM}": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            silence_logs=logging.ERROR)


class Engine:
    """A dask client, started on first use; closes what it started.

    Parameters
    ----------
    opts : ExtractOptions
    client : distributed.Client, optional
        Use this client (not closed here).
    """

    def __init__(self, opts: ExtractOptions, client=None):
        self.opts, self._client, self._own = opts, client, []

    @property
    def client(self):
        if self._client is None:
            from distributed import Client

            if self.opts.scheduler:
                self._client = Client(self.opts.scheduler)
                log(f"connected to {self.opts.scheduler}; dashboard: {self._client.dashboard_link}")
            else:
                n = 1 if self.opts.device == "cuda" else max(1, self.opts.workers)
                cluster = make_local_cluster(n)
                self._client = Client(cluster)
                self._own.append(cluster)
                log(f"started a LocalCluster: {n} worker process(es), 1 thread each")
            self._own.insert(0, self._client)
        return self._client

    def n_workers(self) -> int:
        """Workers of the cluster (starts it)."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def partitions(self, todo: Sequence[Utterance]) -> list[list[Utterance]]:
        """:func:`partition` of ``todo``, small enough for about 4 partitions per worker."""
        if not todo:
            return []
        size = min(self.opts.partition_size, math.ceil(len(todo) / (4 * self.n_workers())))
        return partition(todo, max(1, size))

    def close(self) -> None:
        for obj in self._own:
            with suppress(Exception):
                obj.close()
        self._own = []

    def map_partitions(self, fn: Callable, parts: Sequence[list[Utterance]], *args,
                       desc: str, on_result: Callable[[dict], None],
                       on_written: Callable[[object, int], None] | None = None) -> None:
        """Submit ``fn(part, *args)`` per partition; call ``on_result`` in completion order."""
        from distributed import as_completed
        from tqdm import tqdm

        if not parts:
            return
        client = self.client
        futures = [client.submit(fn, p, *args, retries=self.opts.retries, pure=False,
                                 key=f"{desc}-{i}-{os.urandom(4).hex()}") for i, p in enumerate(parts)]
        sizes = {f.key: len(p) for f, p in zip(futures, parts, strict=True)}
        with tqdm(total=sum(sizes.values()), desc=desc, unit="utt", file=sys.stderr,
                  dynamic_ncols=True, mininterval=0.5) as bar:
            for i, fut in enumerate(as_completed(futures)):
                on_result(fut.result())
                bar.update(sizes[fut.key])
                fut.release()
                if on_written is not None:
                    on_written(client, i)


def _merge_seconds(into: dict[str, float], add: dict[str, float]) -> None:
    for k, v in add.items():
        into[k] = into.get(k, 0.0) + v


def _note_worker(workers: dict[str, dict], stats: dict) -> None:
    w = workers.setdefault(str(stats["pid"]), {"loads": {}, "peak_rss_mb": 0.0, "tasks": 0})
    w["loads"] = {k: max(v, w["loads"].get(k, 0)) for k, v in stats["loads"].items()}
    w["peak_rss_mb"] = max(w["peak_rss_mb"], stats["peak_rss_mb"])
    w["tasks"] += 1


# -- stage 1: prepare -------------------------------------------------------------------------------
def stage_prepare(opts: ExtractOptions) -> tuple[Path, list[Utterance]]:
    """Read the corpus once into a cached JSONL manifest; later runs read that file."""
    path = manifest_path(opts.cache, opts.dataset, opts.root)
    if path.exists():
        log(f"prepare: using {path}")
        return path, read_jsonl(path)
    from pipeline.corpora import CorpusError, prepare_corpus

    try:
        utterances = prepare_corpus(opts.dataset, opts.root)
    except CorpusError as e:
        raise ExtractError(str(e)) from e
    write_jsonl(utterances, path)
    log(f"prepare: {len(utterances)} utterances -> {path}")
    return path, utterances


# -- stage 2: media ---------------------------------------------------------------------------------
def media_dir(opts: ExtractOptions, media_cfg: dict, manifest_key: str) -> Path:
    """``cache/<dataset>/media-<hash of the media config and the selected manifest>/``."""
    key = config_hash({"media": media_cfg, "manifest": manifest_key})
    return Path(opts.cache) / opts.dataset / f"media-{key}"


def stage_media(engine: Engine, opts: ExtractOptions, selected: list[Utterance], media_cfg: dict,
                folder: Path, result: ExtractResult,
                on_written: Callable[[object, int], None] | None = None) -> Path:
    """Decode every selected utterance once into ``media.h5``; skip what its shards hold."""
    path = folder / "media.h5"
    # the writer holds the cache lock until the stage ends, also when it fails
    with ShardedWriter(path, {"kind": "m2f-media", "media_config": json.dumps(media_cfg, sort_keys=True),
                              "dataset": opts.dataset}) as writer:
        done = writer.done_ids()
        todo = [u for u in selected if u.id not in done]
        problems_log = folder / "problems.jsonl"
        if not todo and writer.is_complete():
            write_problems(path, problems_log)  # whole again, should a kill have cut its last rewrite
            log(f"media: complete, {path}")
            return path
        log(f"media: {len(selected) - len(todo)} of {len(selected)} utterances already written, "
            f"{len(todo)} to do")

        def write(res: dict) -> None:
            t = time.perf_counter()
            writer.append(res["split"], rows_to_columns(res["rows"]))
            with open(problems_log, "a", encoding="utf-8") as f:
                for uid, probs in res["problems"].items():
                    f.write(json.dumps({"utt_id": uid, "problems": probs}, ensure_ascii=False) + "\n")
            _merge_seconds(result.work, {"write": time.perf_counter() - t, **res["seconds"]})
            _note_worker(result.workers, res["stats"])

        t0 = time.perf_counter()
        parts = engine.partitions(todo)
        engine.map_partitions(media_partition, parts, media_cfg, opts.device, desc="media", on_result=write,
                              on_written=on_written)
        t = time.perf_counter()
        writer.finalize()  # media rows are read by id: merged shard by shard, never the whole file in memory
        write_problems(path, problems_log)
        result.work["write"] = result.work.get("write", 0.0) + time.perf_counter() - t
        result.seconds["media"] = time.perf_counter() - t0
        return path


def write_problems(media_path: Path, out: Path) -> dict[str, int]:
    """Rewrite ``problems.jsonl`` from the finished ``media.h5`` (manifest order, atomically).

    The live file is appended to as partitions finish; this rewrite makes it whole and free of
    duplicates even after a killed run. Returns the count of utterances with problems per split.
    """
    import h5py

    counts: dict[str, int] = {}
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(media_path, "r") as f, open(tmp, "w", encoding="utf-8") as dst:
        for split in f:
            ids = f[split]["utt_id"].asstr()[()]
            probs = f[split]["problems"].asstr()[()]
            for uid, p in zip(ids, probs, strict=True):
                items = json.loads(p) if p else []
                if items:
                    dst.write(json.dumps({"utt_id": uid, "split": split, "problems": items},
                                         ensure_ascii=False) + "\n")
                    counts[split] = counts.get(split, 0) + 1
    tmp.replace(out)
    return counts


def _count_skipped(result: ExtractResult, selected: Sequence[Utterance], done: set[str]) -> None:
    for u in selected:
        s = result.summary.setdefault(u.split, SplitSummary())
        s.total += 1
        if u.id in done:
            s.skipped += 1


# -- stage 3: encoders ------------------------------------------------------------------------------
def stage_encoders(opts: ExtractOptions, media_path: Path | None, media_key: str) -> str | None:
    """The encoder spec workers load: ``random``, a given folder, or the cached/trained one."""
    if not opts.needs_media:
        return None
    if opts.encoders == "random":
        log("encoders: RANDOM weights (seeded, reproducible) -- features carry no learned information")
        return "random"
    if opts.encoders is not None:
        folder = Path(opts.encoders)
        _check_encoder_dir(folder, "--encoders")
        return str(folder.resolve())
    folder, missing = _cached_encoders(opts, media_key)
    if not missing:
        log(f"encoders: using cached {folder}")
        return str(folder.resolve())
    _check_trainable(opts, folder)
    try:
        from pipeline.encoders.train import train_encoders
    except ImportError as e:
        raise ExtractError(
            f"no trained encoders in {folder} (missing {missing}) and encoder training is not available "
            f"({e}); pass `--encoders random` for seeded random weights or `--encoders DIR` with "
            "audio.pt, face.pt, scene.pt") from e
    log(f"encoders: training {missing} on {media_path} -> {folder} (pass --encoders DIR|random to skip)")
    # triplets only over the corpus's standard classes (IEMOCAP's xxx/oth/sur are not emotions to learn)
    train_encoders(media_path, folder, modalities=tuple(missing), device=opts.device,
                   classes=CLASS_MAPS.get(opts.dataset))
    _check_encoder_dir(folder, "trained encoders")
    return str(folder.resolve())


def _cached_encoders(opts: ExtractOptions, media_key: str) -> tuple[Path, list[str]]:
    """The default encoder folder for this media and the checkpoints it still lacks."""
    folder = Path(opts.cache) / opts.dataset / "encoders" / media_key
    return folder, [m for m in ENCODER_FILES if not (folder / f"{m}.pt").exists()]


def _check_trainable(opts: ExtractOptions, folder: Path) -> None:
    if "train" not in opts.splits:
        raise ExtractError(f"no trained encoders in {folder}, and they are trained on the train split, which "
                           f"--splits {','.join(opts.splits)} leaves out; add train to --splits, or pass "
                           "`--encoders DIR` or `--encoders random`")


def _check_encoder_dir(folder: Path, what: str) -> None:
    missing = [f"{m}.pt" for m in ENCODER_FILES if not (folder / f"{m}.pt").exists()]
    if missing:
        raise ExtractError(f"{what} {folder} lacks {missing}; train them with `m2f train-encoders` "
                           "or pass `--encoders random`")


def encoder_identity(spec: str | None, seed: int = 0) -> str | None:
    """Identity of the encoder weights (part of the features cache key), without building the models.

    Equals :attr:`pipeline.encoders.model.EncoderSet.identity` of ``load_encoder_set(spec)`` (a unit
    test holds the two together): ``random-seed<seed>``, or a hash of the three checkpoint files.
    """
    if spec is None:
        return None
    if spec == "random":
        return f"random-seed{seed}"
    from pipeline.encoders.model import ENCODER_KINDS, file_identity

    blob = "".join(file_identity(Path(spec) / f"{m}.pt") for m in ENCODER_KINDS)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- stage 3b: text model ---------------------------------------------------------------------------
def stage_text_model(opts: ExtractOptions, manifest: Sequence[Utterance]) -> str | None:
    """The text model workers load: ``--text-model``, else the MiniLM fine-tuned on train (cached)."""
    if "text" not in opts.modalities:
        return None
    if opts.text_model is not None:
        return opts.text_model
    try:
        from pipeline.encoders.text_finetune import finetune_text
    except ImportError:
        log("text: fine-tuning is not available; using the shipped all-MiniLM-L6-v2 frozen "
            "(pass --text-model to choose)")
        return None
    train = [u for u in manifest if u.split in ("train", "dev")]  # dev selects the epoch, never test
    if not any(u.split == "train" for u in train):
        log("text: no train split to fine-tune on; using the shipped all-MiniLM-L6-v2 frozen")
        return None
    out = Path(opts.cache) / opts.dataset / "text-model" / manifest_hash(train)
    marker = out / "m2f-finetuned.json"
    if marker.exists():
        path = json.loads(marker.read_text())["path"]
        log(f"text: using cached fine-tuned model {path}")
        return path
    log(f"text: fine-tuning the shipped MiniLM on {len(train)} train+dev utterances -> {out} "
        "(pass --text-model to use a model frozen instead)")
    path = Path(finetune_text(train, out, device=opts.device))
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"path": str(path.resolve())}))
    tmp.replace(marker)
    return str(path.resolve())


def text_identity(model: str | None, device: str) -> str | None:
    """Identity of the text model (part of the features cache key)."""
    from pipeline.modalities.text import TextEmbedder

    return TextEmbedder(model, device="cpu").identity


# -- stage 4: embed ---------------------------------------------------------------------------------
def stage_embed(engine: Engine, opts: ExtractOptions, selected: list[Utterance], media_path: Path | None,
                spec: EmbedSpec, path: Path, config: dict, result: ExtractResult,
                on_written: Callable[[object, int], None] | None = None) -> Path:
    """Encoders and text model over the selection -> ``features.h5`` (skip what is written)."""
    with FeatureWriter(path, opts.dataset, config) as writer:  # holds the cache lock until the stage ends
        done = writer.done_ids()
        _count_skipped(result, selected, done)
        todo = [u for u in selected if u.id not in done]
        if not todo and writer.is_complete():
            log(f"features: complete, {path}")
            return path
        log(f"features: {len(selected) - len(todo)} of {len(selected)} utterances already written, "
            f"{len(todo)} to do")

        def write(res: dict) -> None:
            t = time.perf_counter()
            writer.append(res["split"], res["rows"])
            result.summary[res["split"]].done += len(res["rows"]["utt_id"])
            _merge_seconds(result.work, {"write": time.perf_counter() - t, **res["seconds"]})
            _note_worker(result.workers, res["stats"])

        t0 = time.perf_counter()
        parts = engine.partitions(todo)
        engine.map_partitions(embed_partition, parts, str(media_path) if media_path else None, spec,
                              desc="embed", on_result=write, on_written=on_written)
        t = time.perf_counter()
        writer.finalize(order_by_split(selected))
        result.work["write"] = result.work.get("write", 0.0) + time.perf_counter() - t
        result.seconds["embed"] = time.perf_counter() - t0
        (path.parent / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
        return path


def _media_config_dict(overrides: dict | None) -> dict:
    from pipeline.media import MediaConfig

    return MediaConfig(**(overrides or {})).to_dict()


def run_extract(opts: ExtractOptions, client=None,
                on_written: Callable[[object, int], None] | None = None) -> ExtractResult:
    """Run every stage of ``m2f extract``; returns the features path and what was measured.

    Parameters
    ----------
    opts : ExtractOptions
    client : distributed.Client, optional
        An executor to use instead of starting one (it is not closed).
    on_written : callable, optional
        ``on_written(client, i)`` after the i-th partition of a stage is written (a test seam, e.g. to
        kill a worker mid-run).

    Raises
    ------
    ExtractError
        When the run cannot go on (no encoders, empty selection, ...); the message says what to do.
    """
    t_start = time.perf_counter()
    manifest_file, manifest = stage_prepare(opts)
    selected = select(manifest, opts.splits, opts.limit)
    if not selected:
        have = sorted({u.split for u in manifest})
        raise ExtractError(f"{manifest_file} has no utterances in splits {list(opts.splits)} (it has {have})")
    key = manifest_hash(selected)
    if opts.needs_media and opts.encoders not in (None, "random"):
        _check_encoder_dir(Path(opts.encoders), "--encoders")  # before hours of decoding, not after
    result = ExtractResult(features=Path(), manifest=manifest_file, media=None, summary={})
    engine = Engine(opts, client)
    early_text = "text" in opts.modalities and opts.text_model is not None
    pool = ThreadPoolExecutor(1)
    # the text model's identity (a model load, seconds) is worked out while the workers decode media
    text_id_future = pool.submit(text_identity, opts.text_model, opts.device) if early_text else None
    try:
        media_cfg = media_path = None
        media_key = key
        if opts.needs_media:
            media_cfg = _media_config_dict(opts.media_config)
            folder = media_dir(opts, media_cfg, key)
            media_key = folder.name.removeprefix("media-")
            if opts.encoders is None and _cached_encoders(opts, media_key)[1]:
                _check_trainable(opts, _cached_encoders(opts, media_key)[0])  # fail before decoding
            media_path = stage_media(engine, opts, selected, media_cfg, folder, result, on_written)
            result.media = media_path
        enc_spec = stage_encoders(opts, media_path, media_key)
        text_model = stage_text_model(opts, manifest)
        enc_id = encoder_identity(enc_spec)
        if text_id_future is not None:
            txt_id = text_id_future.result()
        else:
            txt_id = text_identity(text_model, opts.device) if "text" in opts.modalities else None
        result.encoders, result.text_model = enc_spec, text_model
        config = feature_config(opts, key, media_cfg, enc_id, txt_id)
        path = Path(opts.cache) / opts.dataset / config_hash(config) / "features.h5"
        n_frames = int(media_cfg["n_frames"]) if media_cfg else 15
        spec = EmbedSpec(tuple(opts.modalities), opts.device, opts.batch, enc_spec, text_model, n_frames)
        result.features = stage_embed(engine, opts, selected, media_path, spec, path, config, result,
                                      on_written)
    finally:
        pool.shutdown(wait=True)
        engine.close()
    if media_path is not None:
        for split, n in _problem_counts(media_path.parent / "problems.jsonl").items():
            result.summary.setdefault(split, SplitSummary()).problems = n
    result.seconds["total"] = time.perf_counter() - t_start
    return result


def _problem_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                s = json.loads(line).get("split", "?")
                counts[s] = counts.get(s, 0) + 1
    return counts


def format_summary(result: ExtractResult) -> str:
    """The end-of-run table: per split total, done now, skipped (already written), problems."""
    lines = [f"{'split':<6} {'total':>7} {'done':>7} {'skipped':>8} {'problems':>9}"]
    for split in SPLITS:
        if split in result.summary:
            s = result.summary[split]
            lines.append(f"{split:<6} {s.total:>7} {s.done:>7} {s.skipped:>8} {s.problems:>9}")
    if result.media is not None:
        lines.append(f"problems: {result.media.parent / 'problems.jsonl'}")
    return "\n".join(lines)


def parse_list(value: str | Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``"text,audio"`` -> ``("text", "audio")``; unknown names raise :class:`ExtractError`."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ExtractError(f"{what} {bad or value!r}: choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))
