"""Text modality, input side: the context input of M2FNet's text model, built as token ids.

docs/DESIGN.md section 2.1 (text) decides the input: the past utterances of the dialogue (as many as fit,
the nearest kept first), the target utterance and one future utterance, each prefixed by its speaker
name (``"Phoebe: What?"``), truncated from the far past to the model's maximum length.

The input has three segments joined by the tokenizer's own pair separator (EmoBERTa's layout)::

    [CLS] past_1 past_2 ... past_k [SEP] target [SEP] future [SEP]          (BERT / MiniLM)
    <s> past_1 ... past_k </s></s> target </s></s> future </s>              (RoBERTa)

so the target always sits in the second segment, whether or not the dialogue has past or future
utterances (an empty segment stays empty). Tokens are built per utterance and assembled as ids, so the
truncation drops whole past utterances from the far end (and, only if the target and future alone do
not fit, cuts the future, then the target, from its end). Also here: length-sorted batching, padding
and the target-token mask (``pooling="target"``). The model side is :mod:`pipeline.text.embedder`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.manifest import Dialogue

#: Version of the context layout; part of :attr:`TextEmbedder.identity` so a layout change never
#: mixes with cached embeddings made with an older one.
CONTEXT_FORMAT = "past|target|future1-speaker-v1"


#: ``full``: past + target + one future utterance (docs/DESIGN.md 2.1); ``past``: past + target, the future
#: segment left empty (causal: an utterance is embedded from what was said up to its end, as live
#: prediction needs); ``none``: the target utterance alone (with its speaker prefix), an ablation and the
#: usual sentence-embedding baseline.
CONTEXTS = ("full", "past", "none")

#: Context layout of each context option, part of the text model's identity (cache keys).
CONTEXT_FORMATS = {"full": CONTEXT_FORMAT, "past": "past|target-speaker-v1", "none": "target-only-speaker-v1"}


@dataclass(frozen=True)
class SpecialLayout:
    """Where a tokenizer puts its special tokens around a pair: ``prefix A mid B suffix``."""

    prefix: tuple[int, ...]
    mid: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def n_special(self) -> int:
        """Special tokens in a three-segment input ``prefix A mid B mid C suffix``."""
        return len(self.prefix) + 2 * len(self.mid) + len(self.suffix)


def special_layout(tokenizer) -> SpecialLayout:
    """Read the tokenizer's pair layout by encoding a pair of two known words with special tokens."""
    a = list(tokenizer("hello", add_special_tokens=False)["input_ids"])
    b = list(tokenizer("world", add_special_tokens=False)["input_ids"])
    ids = list(tokenizer("hello", "world")["input_ids"])
    ia = _find(ids, a, 0)
    ib = _find(ids, b, ia + len(a))
    return SpecialLayout(tuple(ids[:ia]), tuple(ids[ia + len(a) : ib]), tuple(ids[ib + len(b) :]))


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise ValueError(
        "cannot locate the segments in the tokenizer's pair encoding; is it a pair-capable "
        "tokenizer (BERT, RoBERTa style)?"
    )


def utterance_text(speaker: str, text: str) -> str:
    """``"Speaker: text"`` (the speaker prefix EmoBERTa uses); an empty speaker gives the text alone."""
    speaker = speaker.strip()
    return f"{speaker}: {text.strip()}" if speaker else text.strip()


def tokenize_utterances(dialogue: Dialogue, tokenizer) -> list[list[int]]:
    """Token ids of each utterance of ``dialogue`` as ``"Speaker: text"``, without special tokens."""
    texts = [utterance_text(u.speaker, u.text) for u in dialogue.utterances]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def assemble_context(
    utt_ids: Sequence[Sequence[int]],
    position: int,
    layout: SpecialLayout,
    max_length: int,
    future: bool = True,
) -> list[int]:
    """Assemble the context ids of utterance ``position`` from per-utterance token ids.

    Parameters
    ----------
    utt_ids : sequence of sequences of int
        Token ids of each utterance of the dialogue (``"Speaker: text"``, no special tokens), in order.
    position : int
        Index of the target utterance.
    layout : SpecialLayout
        The tokenizer's special tokens (:func:`special_layout`).
    max_length : int
        Maximum length of the result, special tokens included.
    future : bool
        Put the next utterance in the third segment; False leaves it empty (``context="past"``).

    Returns
    -------
    list of int
        ``prefix past mid target mid future suffix``; past utterances are added nearest first while
        they fit whole; if target + future alone are too long, the future is cut from its end first,
        then the target.
    """
    if not 0 <= position < len(utt_ids):
        raise IndexError(f"position {position} outside a dialogue of {len(utt_ids)} utterances")
    budget = max_length - layout.n_special
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room beside {layout.n_special} special tokens")
    target = list(utt_ids[position])
    after = list(utt_ids[position + 1]) if future and position + 1 < len(utt_ids) else []
    after = after[: max(0, budget - len(target))]
    target = target[: budget - len(after)]
    room = budget - len(target) - len(after)
    past: list[int] = []
    for prev in reversed(utt_ids[:position]):
        if len(prev) > room:
            break
        past = list(prev) + past
        room -= len(prev)
    return [*layout.prefix, *past, *layout.mid, *target, *layout.mid, *after, *layout.suffix]


def build_context(dialogue: Dialogue, position: int, tokenizer, max_length: int) -> list[int]:
    """Token ids of the context input of the utterance at ``position`` of ``dialogue``.

    Past utterances (as many as fit, nearest kept first) + target + 1 future utterance, each prefixed
    by its speaker name, in three segments joined by the tokenizer's separator, truncated from the far
    past to ``max_length`` tokens (special tokens included). See :func:`assemble_context`.

    Examples
    --------
    >>> from transformers import AutoTokenizer
    >>> from pipeline.manifest import Utterance
    >>> from pipeline.text.shipped import shipped_model_dir
    >>> tokenizer = AutoTokenizer.from_pretrained(shipped_model_dir())  # all-MiniLM-L6-v2's
    >>> lines = [("Joey", "Hi"), ("Ross", "Hey"), ("Monica", "What?"), ("Ross", "Nothing.")]
    >>> utts = [Utterance("custom", "dev", "d1", i, str(i), *line, "") for i, line in enumerate(lines)]
    >>> dialogue = Dialogue("custom", "dev", "d1", tuple(utts))
    >>> tokenizer.decode(build_context(dialogue, 2, tokenizer, max_length=128))
    '[CLS] joey : hi ross : hey [SEP] monica : what? [SEP] ross : nothing. [SEP]'
    """
    return assemble_context(
        tokenize_utterances(dialogue, tokenizer), position, special_layout(tokenizer), max_length
    )


def build_contexts(
    dialogues: Iterable[Dialogue], tokenizer, max_length: int, context: str = "full"
) -> dict[str, list[int]]:
    """:func:`build_context` for every utterance of ``dialogues``: ``utt_id -> ids``.

    ``context="past"`` leaves the future segment empty; ``context="none"`` gives each target alone:
    ``prefix target suffix`` (cut to ``max_length``).
    """
    if context not in CONTEXTS:
        raise ValueError(f"unknown context {context!r}; expected one of {CONTEXTS}")
    layout = special_layout(tokenizer)
    out: dict[str, list[int]] = {}
    for d in dialogues:
        toks = tokenize_utterances(d, tokenizer)
        for i, u in enumerate(d.utterances):
            if context in ("full", "past"):
                out[u.id] = assemble_context(toks, i, layout, max_length, future=context == "full")
            else:
                room = max_length - len(layout.prefix) - len(layout.suffix)
                out[u.id] = [*layout.prefix, *toks[i][:room], *layout.suffix]
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to pad as little as possible."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists to the longest: ``(input_ids, attention_mask)`` as int64 arrays."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return ids, mask


def target_span(ids: Sequence[int], layout: SpecialLayout) -> tuple[int, int]:
    """``(start, end)`` of the target segment in a context built by :func:`assemble_context`."""
    mid = list(layout.mid)
    first = _find(list(ids), mid, len(layout.prefix))
    start = first + len(mid)
    return start, _find(list(ids), mid, start)


def target_mask_batch(seqs: Sequence[Sequence[int]], layout: SpecialLayout, width: int) -> np.ndarray:
    """``(B, width)`` int64 mask of the target tokens of each context (for ``pooling="target"``)."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        start, end = target_span(s, layout)
        out[row, start : max(end, start + 1)] = 1  # an empty target keeps its separator
    return out
