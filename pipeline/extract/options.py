"""What ``m2f extract`` is told (:class:`ExtractOptions`) and what it reports (:class:`ExtractResult`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.names import DEFAULT_DEVICE, DEVICES, MODALITIES, SPLITS
from pipeline.store.layout import DEFAULT_CACHE, CacheLayout


class ExtractError(RuntimeError):
    """A run cannot go on; the message says what to do."""


def default_workers() -> int:
    """Local worker processes by default: the machine's cores minus one for the driver, at least 1.

    The same with ``--device cuda``: every worker decodes on its own core and runs MTCNN, the encoders
    and the text model on the one GPU (a CUDA context is a few hundred MB beside the GPU's memory).
    """
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class EmbedSpec:
    """What an embed task needs to know (picklable, small).

    ``media``, ``encoders`` (unless ``"random"``) and a local ``text_model`` are absolute paths.
    ``encoders_id`` and ``text_id`` name the content of those weights (the driver computes them once,
    see :func:`pipeline.extract.tasks.weights_identity`); workers cache loaded models under them, never
    under a path. When they are None a worker hashes the files itself.
    """

    modalities: tuple[str, ...]
    device: str
    batch: int
    media: str | None  # media.h5; None when neither audio nor visual
    encoders: str | None  # "random" or a folder; None when neither audio nor visual
    text_model: str | None  # what TextEmbedder loads; None when text is not requested
    n_frames: int = 15
    encoders_id: str | None = None
    text_id: str | None = None


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
        Local worker processes (ignored with ``scheduler``); default :func:`default_workers`, the
        machine's cores minus one, with ``device='cpu'`` and ``'cuda'`` alike (all workers share the GPU).
    scheduler : str or None
        Address of an existing dask scheduler.
    device : str
        ``cpu`` or ``cuda`` (MTCNN, encoders and text model).
    text_model : str or None
        Hub id or local folder, used frozen. None: fine-tune ``text_base`` on the train split.
    text_base : str or None
        Hub id (``roberta-large``) or local folder of a RoBERTa/BERT-family model to fine-tune with
        dialogue context on the train split (dev selects; cached per base and corpus). None: the shipped
        MiniLM. Not with ``text_model``.
    text_context : {"full", "past"}
        Context of the text model fine-tuned here: ``full`` (past + target + next utterance) or ``past``
        (no next utterance: causal, for live use; cached apart). A ``text_model`` folder embeds with the
        context it was fine-tuned with.
    encoders : str or None
        A folder with ``audio.pt``, ``face.pt``, ``scene.pt``, or ``random``. None: the cached encoders
        trained on this media, trained now if missing.
    cache : path
        Cache root (may be relative: :attr:`layout` makes every path under it absolute).
    limit : int or None
        At most this many utterances per split (first dialogues in manifest order).
    partition_size : int or None
        Most utterances per partition (whole dialogues, so a partition may hold more); smaller on a
        small corpus, so that each worker gets about 4 partitions. Default 16 on CPU, 64 on CUDA (a
        partition is what one GPU forward pass can batch: its texts, clips and frames).
    batch_size : int or None
        Encoder batch; default 32 on CPU, 256 on CUDA.
    retries : int
        Dask retries per partition task.
    media_config : dict or None
        Overrides of :class:`pipeline.utterance.process.MediaConfig` defaults (e.g. ``{"n_frames": 8}``);
        part of
        every cache key below the manifest.
    security : path or None
        A YAML file of ``distributed.security.Security`` keywords (TLS certificates, see
        :func:`pipeline.extract.cluster.load_security`), used for the LocalCluster and ``scheduler``.
        None: a LocalCluster uses dask's temporary TLS credentials
        (:func:`pipeline.extract.engine.make_local_cluster`), a ``scheduler`` is reached as its address
        says.
    """

    dataset: str
    root: Path | None
    modalities: tuple[str, ...] = MODALITIES
    splits: tuple[str, ...] = SPLITS
    workers: int = field(default_factory=default_workers)
    scheduler: str | None = None
    device: str = DEFAULT_DEVICE
    text_model: str | None = None
    text_base: str | None = None
    text_context: str = "full"
    encoders: str | None = None
    cache: Path = DEFAULT_CACHE
    limit: int | None = None
    partition_size: int | None = None
    batch_size: int | None = None
    retries: int = 3
    media_config: dict | None = None
    security: Path | None = None

    def __post_init__(self):
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ExtractError(f"unknown modalities {bad}; choose from {MODALITIES}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ExtractError(f"unknown splits {bad}; choose from {SPLITS}")
        if self.device not in DEVICES:
            raise ExtractError(f"device {self.device!r}: choose cpu or cuda")
        if self.text_model is not None and self.text_base is not None:
            raise ExtractError(
                "--text-model (used frozen) and --text-base (fine-tuned) exclude each other; pass one"
            )
        if self.text_context not in ("full", "past"):
            raise ExtractError(f"--text-context {self.text_context!r}: choose full or past")
        if self.text_model is not None and self.text_context != "full":
            raise ExtractError(
                "--text-context applies to the text model fine-tuned here; a --text-model "
                "folder embeds with the context it was fine-tuned with (its m2f_text.json)"
            )
        if self.workers < 1:
            raise ExtractError(f"--workers {self.workers}: must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ExtractError(f"--limit {self.limit}: must be at least 1")

    @property
    def needs_media(self) -> bool:
        return "audio" in self.modalities or "visual" in self.modalities

    @property
    def partition(self) -> int:
        """Most utterances per partition: ``partition_size``, else 16 on CPU and 64 on CUDA."""
        return self.partition_size or (64 if self.device == "cuda" else 16)

    @property
    def batch(self) -> int:
        return self.batch_size or (256 if self.device == "cuda" else 32)

    @property
    def layout(self) -> CacheLayout:
        """The paths of this dataset's cache (absolute)."""
        return CacheLayout(self.cache, self.dataset)


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
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per driver stage
    work: dict[str, float] = field(default_factory=dict)  # summed worker time per sub-stage
    workers: dict[str, dict] = field(default_factory=dict)  # pid -> {loads: {kind: n}, peak_rss_mb, tasks}
    text_model: str | None = None
    encoders: str | None = None
    problems: Path | None = None  # problems.jsonl of the media cache
    embed_problems: Path | None = None  # problems.jsonl of the embed stage, beside features.h5
    embed_spec: EmbedSpec | None = None  # what every embed task was given

    def merge_work(self, seconds: dict[str, float]) -> None:
        """Add a task's seconds per sub-stage to :attr:`work`."""
        for k, v in seconds.items():
            self.work[k] = self.work.get(k, 0.0) + v

    def note_worker(self, stats: dict) -> None:
        """Keep a task's worker stats: most model loads, peak memory, task count per process."""
        w = self.workers.setdefault(str(stats["pid"]), {"loads": {}, "peak_rss_mb": 0.0, "tasks": 0})
        w["loads"] = {k: max(v, w["loads"].get(k, 0)) for k, v in stats["loads"].items()}
        w["peak_rss_mb"] = max(w["peak_rss_mb"], stats["peak_rss_mb"])
        w["tasks"] += 1


def format_summary(result: ExtractResult) -> str:
    """The end-of-run table: per split total, done now, skipped (already written), problems."""
    lines = [f"{'split':<6} {'total':>7} {'done':>7} {'skipped':>8} {'problems':>9}"]
    for split in SPLITS:
        if split in result.summary:
            s = result.summary[split]
            lines.append(f"{split:<6} {s.total:>7} {s.done:>7} {s.skipped:>8} {s.problems:>9}")
    if result.problems is not None:
        lines.append(f"problems: {result.problems}")
    if result.embed_problems is not None:
        lines.append(f"problems: {result.embed_problems}")
    return "\n".join(lines)


def parse_list(value: str | Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``"train,dev"`` -> ``("train", "dev")``; unknown names raise :class:`ExtractError`."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ExtractError(f"{what} {bad or value!r}: choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))
