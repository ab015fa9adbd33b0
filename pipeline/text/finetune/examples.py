"""Text fine-tuning, the data: labelled context inputs per split (:class:`Examples`), the default label
maps and the length-bucketed batch order of an epoch.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.corpora.base import IEMOCAP_CLASSES, MELD_CLASSES
from pipeline.manifest import Utterance, group_dialogues
from pipeline.text.context import build_contexts


@dataclass
class Examples:
    """Context inputs of one split: ids per input, class index per input, utterance ids."""

    ids: list[list[int]]
    labels: np.ndarray
    utt_ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def default_label_map(utterances: Sequence[Utterance]) -> dict[str, int]:
    """MELD's 7 classes or IEMOCAP's 6 (other labels dropped), by the corpus of the utterances; for a
    custom corpus the labels of its train split, sorted (the trainer's class map for custom data).

    Raises
    ------
    ValueError
        For a corpus without a default, or a custom corpus without a labelled train utterance.
    """
    corpora = {u.corpus for u in utterances}
    if corpora <= {"meld", "sample"}:
        return {c: i for i, c in enumerate(MELD_CLASSES)}
    if corpora == {"iemocap"}:
        return {c: i for i, c in enumerate(IEMOCAP_CLASSES)}
    if corpora == {"custom"}:
        labels = sorted({u.label for u in utterances if u.split == "train" and u.label})
        if not labels:
            raise ValueError(
                "the custom corpus has no labelled train utterance to fine-tune the text model "
                "on; add labels to its train split or pass --text-model"
            )
        return {c: i for i, c in enumerate(labels)}
    raise ValueError(f"no default label map for corpora {sorted(corpora)}; pass label_map={{label: index}}")


def build_examples(
    utterances: Sequence[Utterance],
    tokenizer,
    max_length: int,
    label_map: Mapping[str, int],
    context: str = "full",
) -> dict[str, Examples]:
    """Context inputs per split for the utterances whose label is in ``label_map``.

    Every utterance (labelled or not) serves as context for its neighbours; only mapped labels
    become examples.
    """
    contexts = build_contexts(group_dialogues(utterances), tokenizer, max_length, context)
    out: dict[str, Examples] = {}
    for u in utterances:
        if u.label is None or u.label not in label_map:
            continue
        ex = out.setdefault(u.split, Examples([], np.zeros(0, dtype=np.int64), []))
        ex.ids.append(contexts[u.id])
        ex.utt_ids.append(u.id)
    for split, ex in out.items():
        by_id = {u.id: u.label for u in utterances if u.split == split and u.label is not None}
        ex.labels = np.array([label_map[by_id[i]] for i in ex.utt_ids], dtype=np.int64)
    return out


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches for one epoch: shuffle, sort within chunks of 50 batches, shuffle batches.

    Deterministic in ``(seed, epoch)``, so a resumed run replays the same order.
    """
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches
