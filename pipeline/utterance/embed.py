"""The embed stage: encoders over stored media rows -> utterance vectors (docs/DESIGN.md section 2).

Everything here computes; nothing writes files. :mod:`pipeline.extract.tasks` calls :func:`embed_partition`
inside a dask worker for a few dialogues at a time and writes what it returns.

* audio: the audio encoder over each stored 16 kHz waveform, cut to the encoder's window (its
  contract's ``max_seconds``, centre) as in model selection. Waveforms are batched only with others of
  **the same length**, so no padding reaches the network and a vector never depends on its batch
  neighbours (a resumed run equals an uninterrupted one).
* visual: the face encoder over every stored face crop, summed per frame by the stored area weights and
  max-pooled over the frames that have a face
  (:func:`pipeline.utterance.visual.weighted_face_embedding`), concatenated with the scene encoder
  over every stored frame max-pooled over frames: ``[face | scene]`` (600-d).
  ``has_visual`` = the clip had decodable video; the face half is zeros where ``has_face`` is False.
* text: :class:`pipeline.text.embedder.TextEmbedder` over whole dialogues (context needs them).

A modality that was not requested gets width-0 embeddings and False flags; one that was requested but
whose media is missing gets zeros of full width and a False flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.manifest import Utterance, group_dialogues

if TYPE_CHECKING:
    from pipeline.encoders.network import Encoder


@dataclass
class StageClock:
    """Seconds spent per named stage, accumulated (``clock.add("mel", dt)``).

    ``timer`` reads the clock: wall time by default; ``time.thread_time`` (one torch thread) gives CPU
    seconds, which other processes' load on a shared machine changes far less.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    timer: Callable[[], float] = time.perf_counter

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def timed(self, name: str, fn: Callable, *args, **kwargs):
        """Call ``fn(*args, **kwargs)`` and add the seconds it took (by ``timer``) to ``name``."""
        t = self.timer()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(name, self.timer() - t)


class FrontTimer:
    """Forward hooks on an encoder's ``front`` (the log-mel), so mel time is measured apart.

    Parameters
    ----------
    encoder : torch.nn.Module
        An :class:`pipeline.encoders.network.Encoder`.
    clock : StageClock
        Where the seconds go (under ``name``).
    """

    def __init__(self, encoder: Encoder, clock: StageClock, name: str = "mel"):
        self._t0 = 0.0
        self._handles = [
            encoder.front.register_forward_pre_hook(self._start),
            encoder.front.register_forward_hook(self._stop),
        ]
        self.clock, self.name = clock, name

    def _start(self, _module, inputs):
        _sync_cuda(inputs[0])  # CUDA runs asynchronously: time the kernels, not their launch
        self._t0 = self.clock.timer()

    def _stop(self, _module, _inputs, output):
        _sync_cuda(output)
        self.clock.add(self.name, self.clock.timer() - self._t0)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _sync_cuda(x) -> None:
    if isinstance(x, torch.Tensor) and x.is_cuda:
        torch.cuda.synchronize(x.device)


def fit_to_contract(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``(B, 3, H, W)`` to the encoder's ``size`` x ``size`` when the stored size differs.

    The same resize the encoder training applies to stored crops (bilinear, antialiased, rounded back
    to uint8), so extraction feeds the encoder what it was trained on.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return (
        F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )


@torch.inference_mode()
def encode_images(encoder: Encoder, images: np.ndarray, batch_size: int, device: str = "cpu") -> np.ndarray:
    """Run an image encoder over ``images`` ``(N, 3, S, S)`` uint8 in batches -> ``(N, D)`` float32."""
    dim = encoder.config.embed_dim
    if len(images) == 0:
        return np.zeros((0, dim), np.float32)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        out.append(encoder(fit_to_contract(x, encoder.contract.image_size)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_waveforms(
    encoder: Encoder, waveforms: Sequence[np.ndarray], batch_size: int, device: str = "cpu"
) -> np.ndarray:
    """Audio encoder over 1-D waveforms -> ``(N, D)``, in the view the encoder was trained and selected on.

    :func:`pipeline.encoders.network.embed_waveforms`: each clip cut to the encoder's window (centre),
    batched only with clips of equal length; empty waveforms (no audio) give zero rows.
    """
    from pipeline.encoders.network import embed_waveforms

    return embed_waveforms(encoder, waveforms, batch_size, device)


def visual_embeddings(
    face_encoder: Encoder,
    scene_encoder: Encoder,
    media: Sequence[dict],
    n_frames: int,
    batch_size: int,
    device: str = "cpu",
    clock: StageClock | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[weighted face | max-pooled scene]`` per utterance from stored media rows.

    Parameters
    ----------
    face_encoder, scene_encoder : Encoder
        The 300-d image extractors.
    media : sequence of dict
        Media rows with ``faces (k,3,F,F)``, ``face_frame (k,)``, ``face_weight (k,)``,
        ``scenes (f,3,S,S)``, ``has_visual``, ``has_face``.
    n_frames : int
        Frames sampled per utterance (the media config's ``n_frames``).

    Returns
    -------
    emb : (N, 600) float32
        Zeros where there is no video; face half zeros where there is no face.
    has_visual, has_face : (N,) bool
    """
    from pipeline.utterance.visual import weighted_face_embedding

    clock = clock or StageClock()
    n = len(media)
    d_face, d_scene = face_encoder.config.embed_dim, scene_encoder.config.embed_dim
    emb = np.zeros((n, d_face + d_scene), np.float32)
    has_visual = np.array([bool(m["has_visual"]) and len(m["scenes"]) > 0 for m in media], dtype=bool)
    has_face = np.array([bool(m["has_face"]) and len(m["faces"]) > 0 for m in media], dtype=bool) & has_visual
    faces = [np.asarray(m["faces"]) for m in media]
    scenes = [np.asarray(m["scenes"]) for m in media]
    face_emb = clock.timed("encoders", encode_images, face_encoder, _cat(faces), batch_size, device)
    scene_emb = clock.timed("encoders", encode_images, scene_encoder, _cat(scenes), batch_size, device)
    f_off = np.concatenate([[0], np.cumsum([len(f) for f in faces])])
    s_off = np.concatenate([[0], np.cumsum([len(s) for s in scenes])])
    for i, m in enumerate(media):
        if not has_visual[i]:
            continue
        emb[i, d_face:] = scene_emb[s_off[i] : s_off[i + 1]].max(axis=0)
        if has_face[i]:
            # max-pool over the frames that have a face (weighted_face_embedding leaves the others out)
            decoded = len(scenes[i]) or n_frames
            emb[i, :d_face] = weighted_face_embedding(
                face_emb[f_off[i] : f_off[i + 1]],
                np.asarray(m["face_frame"]),
                np.asarray(m["face_weight"]),
                decoded,
            )
    return emb, has_visual, has_face


def _cat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    nonempty = [a for a in arrays if len(a)]
    if not nonempty:
        return np.zeros((0, 3, 1, 1), np.uint8)
    return np.concatenate(nonempty, axis=0)


def text_embeddings(embedder, utterances: Sequence[Utterance]) -> tuple[np.ndarray, np.ndarray]:
    """Text vectors with dialogue context for ``utterances`` (whole dialogues, manifest order).

    Returns ``(emb (N, D_T), has_text (N,))``; an utterance the embedder returns nothing for, or with
    empty text, gets zeros and False.
    """
    emb, has, _ = text_features(embedder, utterances, logits=False)
    return emb, has


def text_features(
    embedder, utterances: Sequence[Utterance], logits: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`text_embeddings` plus, for a text model with a classification head (``embedder.classes``)
    when ``logits``, the head's logits ``(N, C)`` from the same forward pass (zeros where ``has_text`` is
    False); None without a head."""
    classes = getattr(embedder, "classes", None) if logits else None
    dialogues = group_dialogues(utterances)
    if classes is None:
        vecs, scores = embedder.embed(dialogues), {}
    else:
        vecs, scores = embedder.embed_with_logits(dialogues)
    dim = int(embedder.dim)
    emb = np.zeros((len(utterances), dim), np.float32)
    head = None if classes is None else np.zeros((len(utterances), len(classes)), np.float32)
    has = np.zeros(len(utterances), dtype=bool)
    for i, u in enumerate(utterances):
        v = vecs.get(u.id)
        if v is not None and u.text.strip():
            emb[i] = np.asarray(v, np.float32)
            has[i] = True
            if head is not None:
                head[i] = np.asarray(scores[u.id], np.float32)
    return emb, has, head


def feature_rows(
    utterances: Sequence[Utterance],
    text: tuple[np.ndarray, np.ndarray] | None,
    audio: tuple[np.ndarray, np.ndarray] | None,
    visual: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    text_logits: np.ndarray | None = None,
) -> dict[str, object]:
    """Assemble the ``features.h5`` row batch; ``None`` for a modality that was not requested.

    ``text_logits``: the text model's head logits ``(N, C)`` (a fine-tuned text model), stored as the
    optional ``text_logits`` field; None writes no such field.
    """
    n = len(utterances)
    none2 = (np.zeros((n, 0), np.float32), np.zeros(n, bool))
    text_emb, has_text = text if text is not None else none2
    audio_emb, has_audio = audio if audio is not None else none2
    visual_emb, has_visual, has_face = visual if visual is not None else (*none2, np.zeros(n, bool))
    return {
        "utt_id": [u.id for u in utterances],
        "dialogue_id": [u.dialogue_id for u in utterances],
        "position": np.array([u.position for u in utterances], np.int32),
        "speaker": [u.speaker for u in utterances],
        "label": ["" if u.label is None else u.label for u in utterances],
        "text": [u.text for u in utterances],
        "text_emb": text_emb,
        "audio_emb": audio_emb,
        "visual_emb": visual_emb,
        "has_text": has_text,
        "has_audio": has_audio,
        "has_visual": has_visual,
        "has_face": has_face,
    } | ({} if text_logits is None else {"text_logits": text_logits})
