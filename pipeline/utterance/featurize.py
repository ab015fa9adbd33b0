"""Utterances -> feature rows, in memory: the one embedding path of extraction, prediction and live use.

Two steps, each a function that every caller shares:

1. **media**: :func:`pipeline.utterance.process.process_utterance` decodes one utterance (16 kHz audio,
   frames, MTCNN faces, crops, area weights) into a media row. ``m2f extract`` stores these rows in
   ``media.h5`` (its encoders train on them); the :class:`Featurizer` keeps them in memory.
2. **embed**: :func:`embed_utterances` turns media rows and the text (with its dialogue context) into
   the rows of ``features.h5`` (:func:`pipeline.utterance.embed.feature_rows`); a fine-tuned text model's
   classification head gives its logits from the same forward pass (``text_logits``). The dask embed task
   calls it on rows read back from ``media.h5``; the :class:`Featurizer` on the rows it just decoded.
   So a model applied to a new conversation sees exactly the features ``m2f extract`` would have
   written.

Failures never raise: an utterance whose media cannot be decoded, or whose embedding fails or is not
finite, gets zeros with its ``has_*`` flags False and a problem line (a dict, as in ``problems.jsonl``).

Examples
--------
The text model and the encoders of ``m2f extract``: the shipped MiniLM and a trained encoder set
(not run as a test: a trained encoder set takes minutes to make).

>>> encoders = load_encoder_set("cache/meld/encoders/<media key>/recipe2-<labels key>")  # doctest: +SKIP
>>> models = FeatureModels(("text", "audio"), text=TextEmbedder(), encoders=encoders)  # doctest: +SKIP
>>> rows, problems = Featurizer(models, MediaConfig()).featurize(utterances)  # doctest: +SKIP
>>> rows["text_emb"].shape, rows["has_audio"]  # doctest: +SKIP
((5, 384), array([ True,  True,  True,  True,  True]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from pipeline.manifest import Utterance
from pipeline.utterance.embed import (
    FrontTimer,
    StageClock,
    encode_waveforms,
    feature_rows,
    text_features,
    visual_embeddings,
)

if TYPE_CHECKING:
    from pipeline.encoders.checkpoint import EncoderSet
    from pipeline.text.embedder import TextEmbedder

_T = TypeVar("_T")

#: the media row fields the embed step reads, per modality
MEDIA_FIELDS = {
    "audio": ("has_audio", "waveform"),
    "visual": ("has_visual", "has_face", "faces", "face_frame", "face_weight", "scenes"),
}


@dataclass
class FeatureModels:
    """The loaded models (and their names, for problem lines) one embedding call uses.

    ``text`` is a :class:`pipeline.text.embedder.TextEmbedder`; ``encoders`` an encoder set with
    ``audio``, ``face`` and ``scene`` (:func:`pipeline.encoders.checkpoint.load_encoder_set`).
    """

    modalities: tuple[str, ...]
    text: TextEmbedder | None = None
    encoders: EncoderSet | None = None
    device: str = "cpu"
    batch: int = 32
    n_frames: int = 15
    text_source: str | None = None
    encoders_source: str | None = None

    @property
    def media_fields(self) -> list[str]:
        """What :func:`embed_utterances` reads from each media row."""
        return [f for m in ("audio", "visual") if m in self.modalities for f in MEDIA_FIELDS[m]]


def embed_utterances(
    utterances: Sequence[Utterance],
    media: Sequence[dict] | None,
    models: FeatureModels,
    problems: list[dict] | None = None,
    clock: StageClock | None = None,
) -> dict[str, object]:
    """Feature rows (:func:`pipeline.utterance.embed.feature_rows`) of ``utterances`` (whole dialogues, in
    order).

    Parameters
    ----------
    utterances : sequence of Utterance
        Whole dialogues in manifest order: the text of each is embedded with its dialogue context.
    media : sequence of dict or None
        One media row per utterance (:data:`MEDIA_FIELDS`); None when neither audio nor visual is asked.
    models : FeatureModels
    problems : list, optional
        Gets one dict per utterance and modality that failed (see
        :func:`embed_problem`).
    clock : StageClock, optional
        Collects seconds per stage (text, encoders, mel).

    Notes
    -----
    An encoder call that fails for a batch is retried one utterance (text: one dialogue) at a time, and
    an utterance whose call still fails, or whose vector is not finite, gets zeros and ``has_*`` False.
    """
    clock = clock if clock is not None else StageClock()
    problems = problems if problems is not None else []
    text = audio = visual = None
    n = len(utterances)
    text_logits = None
    if "text" in models.modalities:
        source = models.text_source or "the default text model"
        text_model = _needed(models.text, "a text model")
        dim = int(text_model.dim)
        classes = getattr(text_model, "classes", None)

        def text_part(idx: list[int]) -> tuple:
            emb, has, head = text_features(text_model, [utterances[i] for i in idx])
            # a head's logits ride beside the embedding (one row, one forward pass): the isolation and
            # finiteness checks below then treat them as one, and both are zeros where has_text is False
            return (emb if head is None else np.concatenate([emb, head], axis=1)), has

        text = clock.timed(
            "text",
            isolated_embeddings,
            text_part,
            n,
            dim + (len(classes) if classes is not None else 0),
            1,
            group_indices(utterances),
            problems,
            utterances,
            "text",
            source,
        )
        text = finite_or_missing(text, utterances, "text", source, problems)
        if classes is not None:
            text_logits = np.ascontiguousarray(text[0][:, dim:])
            text = (np.ascontiguousarray(text[0][:, :dim]), *text[1:])
    singles = [[i] for i in range(n)]
    if "audio" in models.modalities:
        encs, rows = _needed(models.encoders, "an encoder set"), _needed(media, "media rows")
        has_audio = np.array([bool(m["has_audio"]) and len(m["waveform"]) > 0 for m in rows])
        waves = [
            m["waveform"] if h else np.zeros(0, np.float32) for m, h in zip(rows, has_audio, strict=True)
        ]

        def audio_part(idx: list[int]) -> tuple:
            emb = encode_waveforms(encs.audio, [waves[i] for i in idx], models.batch, models.device)
            return emb, has_audio[idx]

        timer = FrontTimer(encs.audio, clock)
        try:
            audio = clock.timed(
                "encoders",
                isolated_embeddings,
                audio_part,
                n,
                encs.audio.config.embed_dim,
                1,
                singles,
                problems,
                utterances,
                "audio",
                models.encoders_source,
            )
        finally:
            timer.remove()
        audio = finite_or_missing(audio, utterances, "audio", models.encoders_source, problems)
    if "visual" in models.modalities:
        encs, rows = _needed(models.encoders, "an encoder set"), _needed(media, "media rows")

        def visual_part(idx: list[int]) -> tuple:
            return visual_embeddings(
                encs.face,
                encs.scene,
                [rows[i] for i in idx],
                models.n_frames,
                models.batch,
                models.device,
                clock,
            )

        dim = encs.face.config.embed_dim + encs.scene.config.embed_dim
        visual = isolated_embeddings(
            visual_part, n, dim, 2, singles, problems, utterances, "visual", models.encoders_source
        )
        visual = finite_or_missing(visual, utterances, "visual", models.encoders_source, problems)
    if "mel" in clock.seconds:  # the encoders' time excludes the log-mel measured inside it
        clock.seconds["encoders"] -= clock.seconds["mel"]
    return feature_rows(utterances, text, audio, visual, text_logits)


def media_problem(u: Utterance, line: str) -> dict:
    """A decoding fault as a problem dict (the embed step's shape; media.h5 keeps them as text)."""
    return {"utt_id": u.id, "split": u.split, "file": u.clip, "stage": "media", "problem": line}


@dataclass
class Featurizer:
    """decode -> faces -> embeddings for utterances held in memory (no media.h5, no features.h5).

    ``media_config`` is a :class:`pipeline.utterance.process.MediaConfig` (the settings the model's features
    were
    made with); ``detector`` a :class:`pipeline.utterance.visual.FaceDetector`, built from it when
    visual features are asked and none is given.
    """

    models: FeatureModels
    media_config: object | None = None
    detector: object | None = None
    clock: StageClock = field(default_factory=StageClock)

    def __post_init__(self) -> None:
        if "visual" in self.models.modalities and self.detector is None:
            from pipeline.utterance.visual import FaceDetector

            self.detector = FaceDetector(self.media_config, device=self.models.device)

    @property
    def needs_media(self) -> bool:
        return "audio" in self.models.modalities or "visual" in self.models.modalities

    def media_rows(self, utterances: Sequence[Utterance], problems: list[dict]) -> list[dict] | None:
        """Decode each utterance's clip (the same function as ``m2f extract``'s media stage)."""
        if not self.needs_media:
            return None
        from pipeline.utterance.process import process_utterance

        rows = []
        for u in utterances:
            row, lines = self.clock.timed(
                "media",
                process_utterance,
                u,
                self.media_config,
                self.detector,
                video="visual" in self.models.modalities,
            )
            rows.append(row)
            problems += [media_problem(u, line) for line in lines]
        return rows

    def featurize(self, utterances: Sequence[Utterance]) -> tuple[dict[str, object], list[dict]]:
        """``(feature rows, problems)`` of ``utterances`` (whole dialogues in order, or a dialogue's
        utterances so far: each text is embedded with the context the text model was made for)."""
        problems: list[dict] = []
        media = self.media_rows(utterances, problems)
        return embed_utterances(utterances, media, self.models, problems, self.clock), problems


# --- isolation: one bad input costs only itself -------------------------------------------------


def group_indices(utterances: Sequence[Utterance]) -> list[list[int]]:
    """Indices of ``utterances`` grouped by dialogue (first-appearance order)."""
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(utterances):
        groups.setdefault(u.dialogue_id, []).append(i)
    return list(groups.values())


def embed_problem(u: Utterance, modality: str, problem: str, source: str | None) -> dict:
    """A ``problems.jsonl`` line of the embed stage: utterance, file, what went wrong, what to do."""
    fix = (
        f"the utterance is kept with {modality} marked missing; check {u.clip or 'its text'}"
        f"{'' if modality == 'text' else ' (does it play?)'} and the model {source}, and report this "
        "with the file if both look fine"
    )
    return {
        "utt_id": u.id,
        "split": u.split,
        "file": u.clip if modality != "text" else source,
        "stage": "embed",
        "modality": modality,
        "problem": problem,
        "fix": fix,
    }


def isolated_embeddings(
    compute: Callable[[list[int]], tuple],
    n: int,
    dim: int,
    n_flags: int,
    groups: Sequence[list[int]],
    problems: list[dict] | None = None,
    utterances: Sequence[Utterance] = (),
    modality: str = "",
    source: str | None = None,
) -> tuple:
    """``compute(range(n))``; if it raises, ``compute`` per group, so one bad input costs only its group.

    Parameters
    ----------
    compute : callable
        ``compute(indices) -> (emb (k, dim), flag_1 (k,), ..., flag_n_flags (k,))``.
    groups : sequence of list of int
        The units to retry alone (one utterance; one dialogue for text, which needs its context).
    problems : list, optional
        Gets one :func:`embed_problem` per utterance of a group whose call failed (zeros, flags False).

    Returns
    -------
    tuple
        ``(emb (n, dim) float32, *flags (n,) bool)``.
    """
    try:
        return compute(list(range(n)))
    except Exception:  # isolation: find the input that fails, keep the others
        pass
    emb = np.zeros((n, dim), np.float32)
    flags = [np.zeros(n, bool) for _ in range(n_flags)]
    for idx in groups:
        try:
            part = compute(list(idx))
        except Exception as e:
            for i in idx:
                if problems is not None:
                    problems.append(
                        embed_problem(
                            utterances[i],
                            modality,
                            f"{modality} embedding failed: {type(e).__name__}: {' '.join(str(e).split())}",
                            source,
                        )
                    )
            continue
        emb[idx] = part[0]
        for f, p in zip(flags, part[1:], strict=True):
            f[idx] = p
    return (emb, *flags)


def _needed(value: _T | None, what: str) -> _T:
    """``value``, which the modalities asked for need (the caller loads models and media to match them)."""
    if value is None:
        raise ValueError(f"{what} is needed for the modalities asked, and none was given")
    return value


def finite_or_missing(
    out: tuple, utterances: Sequence[Utterance], modality: str, source: str | None, problems: list[dict]
) -> tuple:
    """Rows of ``out[0]`` with a NaN or infinity become zeros with every flag False, and a problem line.

    A non-finite vector must never reach ``features.h5`` (the writer refuses it, which would cost the
    whole partition) nor the trainer.
    """
    emb, *flags = out
    bad = ~np.isfinite(emb).all(axis=1)
    for i in np.flatnonzero(bad):
        emb[i] = 0.0
        for f in flags:
            f[i] = False
        problems.append(
            embed_problem(
                utterances[int(i)], modality, f"{modality} embedding is not finite (NaN or infinity)", source
            )
        )
    return (emb, *flags)
