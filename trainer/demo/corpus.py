"""The demo's generated corpus, where each modality tells part of the emotion and fusion tells all of it.

Four emotions sit on two axes, and each modality carries one binary cue:

=========  =======================  =========================  ==========================
emotion    text (valence)           audio (arousal: pitch)     visual (face side)
=========  =======================  =========================  ==========================
joy        positive sentence        high (440-660 Hz)          left third
neutral    positive sentence        low (110-190 Hz)           right third
anger      negative sentence        high                       right third
sadness    negative sentence        low                        left third
=========  =======================  =========================  ==========================

So every modality alone narrows four emotions to two (a text-only model is right about half the
time), while any two modalities decide the label. Sentences are drawn from a pool per valence,
pitches, face heights and scales are jittered and backgrounds are random, all from a seeded
generator: :func:`build_fusion_corpus` writes the same bytes for the same arguments. The corpus is a
custom-corpus CSV (:mod:`pipeline.corpora.custom`) with one short clip per utterance (H.264 + AAC,
written with PyAV through :func:`pipeline.testing.av_files.write_clip`).

:func:`join_clips` glues clips end to end into one video (the "recorded conversation" the demo
predicts with subtitles) and returns each clip's span in it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.store.atomic import commit_tmp, tmp_path
from pipeline.testing.av_files import encode_media, write_clip

#: emotion -> (valence, arousal, face side): the cue each modality carries.
FUSION_CUES: dict[str, tuple[str, str, str]] = {
    "joy": ("positive", "high", "left"),
    "neutral": ("positive", "low", "right"),
    "anger": ("negative", "high", "right"),
    "sadness": ("negative", "low", "left"),
}
PITCH_HZ = {"high": (440.0, 660.0), "low": (110.0, 190.0)}
FACE_X = {"left": 0.30, "right": 0.70}
_OPENERS = {
    "positive": ("Well,", "Honestly,", "You know,", "Okay,", "So,", "Look,"),
    "negative": ("Well,", "Honestly,", "You know,", "Okay,", "So,", "Look,"),
}
_SENTENCES = {
    "positive": (
        "the new place is really nice.",
        "we finished the project on time.",
        "thanks for bringing the coffee.",
        "the test results came back fine.",
        "your sister called, she got the job.",
        "the weather cleared up for the trip.",
        "I found the keys in my coat.",
        "the kids loved the museum.",
    ),
    "negative": (
        "they cancelled our holiday.",
        "the car broke down again.",
        "nobody told me about the meeting.",
        "we lost the deposit on the flat.",
        "the dog ate my sandwich.",
        "my phone fell in the river.",
        "they turned down my application.",
        "the heating is off all week.",
    ),
}
SPEAKERS = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay")
CLIP_SIZE = (160, 120)
CLIP_SECONDS = 1.0
CLIP_FPS = 10.0
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class FusionUtterance:
    """One generated utterance and the cues its clip was rendered with."""

    split: str
    dialogue_id: str
    index: int
    speaker: str
    text: str
    label: str
    tone_hz: float
    face_pos: tuple[float, float]
    face_scale: float
    background: tuple[int, int, int]

    @property
    def clip(self) -> str:
        """Path of the clip relative to the corpus folder."""
        return f"clips/{self.dialogue_id}_{self.index}.mp4"


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in values)
    return r, g, b


def fusion_script(
    n_dialogues: dict[str, int], utterances_per_dialogue: int = 6, seed: int = 0
) -> list[FusionUtterance]:
    """The utterances of the corpus (no files): labels balanced per dialogue, cues jittered.

    Parameters
    ----------
    n_dialogues : dict split -> int
        Dialogues per split, e.g. ``{"train": 24, "dev": 6, "test": 6}``.
    utterances_per_dialogue : int
    seed : int
    """
    rng = np.random.default_rng(seed)
    labels = list(FUSION_CUES)
    out = []
    for split, count in n_dialogues.items():
        for d in range(count):
            speakers = rng.choice(SPEAKERS, size=2, replace=False)
            # every label about equally often (the surplus rotates over dialogues), in a random order
            seq = [labels[(i + d) % len(labels)] for i in range(utterances_per_dialogue)]
            rng.shuffle(seq)
            for i, label in enumerate(seq):
                valence, arousal, side = FUSION_CUES[label]
                text = f"{rng.choice(_OPENERS[valence])} {rng.choice(_SENTENCES[valence])}"
                out.append(
                    FusionUtterance(
                        split=split,
                        dialogue_id=f"{split}{d:02d}",
                        index=i,
                        speaker=str(speakers[i % 2]),
                        text=text,
                        label=label,
                        tone_hz=float(rng.uniform(*PITCH_HZ[arousal])),
                        face_pos=(
                            FACE_X[side] + float(rng.uniform(-0.04, 0.04)),
                            float(rng.uniform(0.42, 0.58)),
                        ),
                        face_scale=float(rng.uniform(0.55, 0.65)),
                        background=_rgb(rng.integers(20, 110, size=3)),
                    )
                )
    return out


def write_fusion_clip(folder: Path, u: FusionUtterance, seed: int) -> Path:
    """Render one utterance's clip under ``folder``."""
    return write_clip(
        folder / u.clip,
        duration=CLIP_SECONDS,
        fps=CLIP_FPS,
        size=CLIP_SIZE,
        sample_rate=SAMPLE_RATE,
        audio_channels=1,
        tone_hz=u.tone_hz,
        face_pos=u.face_pos,
        face_scale=u.face_scale,
        background=u.background,
        seed=seed,
    )


def build_fusion_corpus(
    out: str | Path,
    n_dialogues: dict[str, int] | None = None,
    utterances_per_dialogue: int = 6,
    seed: int = 0,
    processes: int = 1,
) -> Path:
    """Write the corpus (``corpus.csv`` + ``clips/``) into ``out``; return the CSV's path.

    Clips already written are kept (a folder holding the complete corpus is left as it is); the others
    are encoded by ``processes`` processes (the bytes do not depend on it).
    """
    out = Path(out)
    n_dialogues = n_dialogues or {"train": 24, "dev": 6, "test": 6}
    script = fusion_script(n_dialogues, utterances_per_dialogue, seed)
    csv_path = out / "corpus.csv"
    todo = [(u, seed * 100_003 + k) for k, u in enumerate(script) if not (out / u.clip).is_file()]
    if csv_path.exists() and not todo:
        return csv_path
    if processes > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(write_fusion_clip, [out] * len(todo), *zip(*todo, strict=True), chunksize=8))
    else:
        for u, clip_seed in todo:
            write_fusion_clip(out, u, clip_seed)
    tmp = tmp_path(csv_path)  # a new random name: nothing planted beside the CSV is written through
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["dialogue_id", "utterance_index", "speaker", "text", "label", "clip", "split"])
            for u in script:
                w.writerow([u.dialogue_id, u.index, u.speaker, u.text, u.label, u.clip, u.split])
        return commit_tmp(tmp, csv_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def join_clips(
    clips: Sequence[str | Path], out: str | Path, sample_rate: int = SAMPLE_RATE
) -> list[tuple[float, float]]:
    """Join clips end to end into one H.264 + AAC mp4 (PyAV); return each clip's (start, end) in it.

    Every clip must have the same frame size and rate. Each clip's audio is decoded to mono at
    ``sample_rate`` and cut or padded to its video's length, so picture and sound stay aligned. Frames
    are streamed from the clips to the encoder (a second decoding pass), so memory does not grow with
    the length of the result (a 10-minute 720p join would otherwise hold about 40 GB of frames).
    """
    import av

    from pipeline.decode.waveform import decode_audio

    audio: list[np.ndarray] = []
    spans = []
    n_frames = 0
    fps: float | None = None
    size: tuple[int, int] | None = None
    for clip in clips:
        with av.open(str(clip)) as c:
            stream = c.streams.video[0]
            if stream.average_rate is None:
                raise ValueError(f"{clip}: its video stream has no frame rate")
            rate, shape = float(stream.average_rate), (stream.width, stream.height)
            if fps is None:
                fps, size = rate, shape
            if (rate, shape) != (fps, size):
                raise ValueError(f"{clip}: {shape} at {rate} fps, the first clip is {size} at {fps} fps")
            clip_frames = sum(1 for _ in c.decode(stream))
        start = n_frames / fps
        n_frames += clip_frames
        spans.append((start, n_frames / fps))
        wave, _ = decode_audio(clip, sr=sample_rate)
        n = int(round(clip_frames / fps * sample_rate))
        audio.append(np.pad(wave[:n], (0, max(0, n - len(wave)))))
    if fps is None or size is None:
        raise ValueError("no clips to join")

    def decoded() -> Iterator[np.ndarray]:
        for clip in clips:
            with av.open(str(clip)) as c:
                for f in c.decode(c.streams.video[0]):
                    yield f.to_ndarray(format="rgb24")

    stream_of_frames = decoded()
    wanted = iter(range(n_frames))

    def frame(i: int) -> np.ndarray:
        if i != next(wanted):  # encode_media asks for frames in order, once each
            raise ValueError("join_clips streams frames: they must be read in order")
        return next(stream_of_frames)

    encode_media(
        out,
        frames=frame,
        n_frames=n_frames,
        fps=fps,
        size=size,
        audio=np.concatenate(audio)[None, :].astype(np.float32),
        sample_rate=sample_rate,
    )
    return spans
