"""Generated features.h5 files for tests and benchmarks (the real cache format, made-up numbers).

:func:`write_features` writes any dialogue-length layout through :class:`pipeline.store.cache.FeatureWriter`;
the row content comes from a function, e.g. :func:`xor_rows` (the label is recoverable only by
combining audio and visual) or :func:`random_rows` (noise, for throughput).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.store.cache import FeatureWriter

RowsFn = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


def xor_rows(
    dims: Mapping[str, int], labels: tuple[str, str] = ("neg", "pos"), missing_rate: float = 0.0
) -> RowsFn:
    """Rows whose label is ``sign(audio[0]) XOR sign(visual[0])``; text is pure noise.

    Each modality alone carries no information about the label (the other sign is an independent
    coin flip); only a model that combines audio and visual can beat chance. With ``missing_rate``,
    that fraction of text rows is flagged missing (zeroed, ``has_text`` False).
    """

    def make(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        sa, sv = rng.choice([-1.0, 1.0], n), rng.choice([-1.0, 1.0], n)
        audio = rng.normal(0, 1, (n, dims["a"])).astype(np.float32)
        visual = rng.normal(0, 1, (n, dims["v"])).astype(np.float32)
        audio[:, 0] = sa * (1.0 + np.abs(rng.normal(0, 0.3, n)))
        visual[:, 0] = sv * (1.0 + np.abs(rng.normal(0, 0.3, n)))
        text = rng.normal(0, 1, (n, dims["t"])).astype(np.float32)
        has_text = rng.random(n) >= missing_rate
        text[~has_text] = 0.0
        label = np.where(sa * sv > 0, labels[1], labels[0])
        return {
            "text_emb": text,
            "audio_emb": audio,
            "visual_emb": visual,
            "label": label,
            "has_text": has_text,
            "has_audio": np.ones(n, bool),
            "has_visual": np.ones(n, bool),
        }

    return make


def random_rows(dims: Mapping[str, int], labels: Sequence[str]) -> RowsFn:
    """Gaussian embeddings and uniformly drawn labels (for throughput, not learning)."""

    def make(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {
            "text_emb": rng.standard_normal((n, dims["t"]), dtype=np.float32),
            "audio_emb": rng.standard_normal((n, dims["a"]), dtype=np.float32),
            "visual_emb": rng.standard_normal((n, dims["v"]), dtype=np.float32),
            "label": rng.choice(np.asarray(labels, dtype=object), n),
            "has_text": np.ones(n, bool),
            "has_audio": np.ones(n, bool),
            "has_visual": np.ones(n, bool),
        }

    return make


def context_rows(dims: Mapping[str, int], dialogue_lengths: Mapping[str, Sequence[int]], task: str) -> RowsFn:
    """Rows whose label needs the dialogue's order or speakers (the tests of ``--positions``/``--speakers``).

    Embeddings are noise except ``text[0]``, a sign with jitter; speakers are drawn from ``A``, ``B``,
    ``C`` per utterance. ``task``:

    ``previous``  the label is the sign of the *previous* utterance's ``text[0]`` (the first utterance:
                  its own): a bag model cannot tell which utterance came before, a model with order can.
    ``speaker``   the label is the sign of the sum of ``text[0]`` over the utterances of the same speaker
                  in the dialogue minus that over the other speakers': a model without the speaker
                  signal cannot tell whose they are.

    The returned function must be called once per split in ``dialogue_lengths``'s order, as
    :func:`write_features` does (it takes each split's dialogue lengths in turn).
    """
    splits = iter(list(dialogue_lengths.values()))

    def make(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        lengths = next(splits)
        made = random_rows(dims, ["neg", "pos"])(rng, n)
        sign = rng.choice([-1.0, 1.0], n)
        made["text_emb"][:, 0] = sign * (1.0 + np.abs(rng.normal(0, 0.3, n)))
        speaker = rng.choice(np.array(["A", "B", "C"], dtype=object), n)
        text0 = made["text_emb"][:, 0]
        label = np.empty(n, dtype=object)
        start = 0
        for length in lengths:
            rows = np.arange(start, start + length)
            for i in range(start, start + length):
                if task == "previous":
                    value = sign[max(i - 1, start)]
                else:
                    same = speaker[rows] == speaker[i]
                    value = text0[rows[same]].sum() - text0[rows[~same]].sum()
                label[i] = "pos" if value > 0 else "neg"
            start += length
        made["label"], made["speaker"] = label, speaker
        return made

    return make


def write_features(
    path: str | Path, dataset: str, dialogue_lengths: Mapping[str, Sequence[int]], rows: RowsFn, seed: int = 0
) -> Path:
    """Write a finished features.h5 with the given dialogues per split.

    Parameters
    ----------
    path : path-like
        The features.h5 to create.
    dataset : str
        The ``dataset`` file attribute (selects the class map by default).
    dialogue_lengths : mapping split -> sequence of int
        Number of utterances of each dialogue.
    rows : callable
        ``rows(rng, n)`` -> the embedding, label and ``has_*`` arrays of ``n`` rows, and optionally
        ``speaker`` (default: ``A`` and ``B`` taking turns in every dialogue).
    seed : int
        Seed of the generator passed to ``rows``.
    """
    rng = np.random.default_rng(seed)
    writer = FeatureWriter(path, dataset, {"generated": True, "seed": seed})
    for split, lengths in dialogue_lengths.items():
        n = int(sum(lengths))
        made = rows(rng, n)
        dia = np.repeat(np.arange(len(lengths)), lengths)
        pos = np.concatenate([np.arange(k) for k in lengths]) if n else np.zeros(0, int)
        ids = [f"{dataset}/{split}/dia{d}_utt{p}" for d, p in zip(dia, pos, strict=True)]
        writer.append(
            split,
            {
                "utt_id": ids,
                "dialogue_id": [str(d) for d in dia],
                "position": pos,
                "speaker": list(made.get("speaker", ["A" if p % 2 == 0 else "B" for p in pos])),
                "label": list(made["label"]),
                "text": [""] * n,
                "text_emb": made["text_emb"],
                "audio_emb": made["audio_emb"],
                "visual_emb": made["visual_emb"],
                "has_text": made["has_text"],
                "has_audio": made["has_audio"],
                "has_visual": made["has_visual"],
                "has_face": made["has_visual"],
            },
        )
    try:
        return writer.finalize()
    finally:
        writer.close()
