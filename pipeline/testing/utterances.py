"""Manifest rows for tests: :class:`~pipeline.manifest.Utterance` objects with every field defaulted."""

from __future__ import annotations

from pipeline.manifest import Utterance


def make_utterance(
    corpus: str = "custom",
    split: str = "train",
    dialogue_id: str = "d",
    position: int = 0,
    *,
    utterance_id: str | None = None,
    speaker: str = "Ann",
    text: str = "hi",
    label: str | None = "joy",
    **fields,
) -> Utterance:
    """One utterance; ``utterance_id`` defaults to ``str(position)``, other fields as ``Utterance``'s.

    Examples
    --------
    >>> u = make_utterance(split="dev", position=2, clip="/clips/d_2.mp4")
    >>> (u.corpus, u.split, u.dialogue_id, u.utterance_id, u.label, u.clip)
    ('custom', 'dev', 'd', '2', 'joy', '/clips/d_2.mp4')
    """
    uid = str(position) if utterance_id is None else utterance_id
    return Utterance(corpus, split, dialogue_id, position, uid, speaker, text, label, **fields)


def make_dialogues(
    lengths: list[int], corpus: str = "custom", split: str = "train", **fields
) -> list[Utterance]:
    """Dialogues ``"0"``, ``"1"``, ... of the given lengths, in order; the text names dialogue and turn.

    Examples
    --------
    >>> [(u.dialogue_id, u.position, u.text) for u in make_dialogues([2, 1])]
    [('0', 0, 'line 0.0'), ('0', 1, 'line 0.1'), ('1', 0, 'line 1.0')]
    """
    return [
        make_utterance(corpus, split, str(d), p, text=f"line {d}.{p}", **fields)
        for d, n in enumerate(lengths)
        for p in range(n)
    ]
