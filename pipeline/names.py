"""The project's vocabulary: the names every command and module uses for the same things.

- **dataset**: a corpus format m2f reads (:data:`DATASETS`).
- **modality**: one of the three inputs of M2FNet, text, audio and visual (:data:`MODALITIES`).
- **encoder kind**: one of the three triplet-trained ResNet18 networks that embed the audio and visual
  modalities (:data:`ENCODER_KINDS`: audio, face, scene). The text modality is embedded by the text
  model (a fine-tuned transformer), not by an encoder of this kind.
"""

from __future__ import annotations

from collections.abc import Iterable

DATASETS = ("meld", "iemocap", "sample", "custom")
SPLITS = ("train", "dev", "test")
MODALITIES = ("text", "audio", "visual")
ENCODER_KINDS = ("audio", "face", "scene")
_LETTERS = {"t": "text", "a": "audio", "v": "visual"}


def parse_modalities(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"tav"``, ``"t,a"``, ``"text,audio,visual"`` or an iterable of names -> names in canonical order.

    Examples
    --------
    >>> parse_modalities("tv")
    ('text', 'visual')
    >>> parse_modalities("audio,text")
    ('text', 'audio')

    Raises
    ------
    ValueError
        On an empty or unknown name; the message lists what is accepted.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [i.strip().lower() for i in items if i.strip()]
    if len(items) == 1 and items[0] not in MODALITIES and set(items[0]) <= set(_LETTERS):
        items = list(items[0])  # "tav"
    names = [_LETTERS.get(i, i) for i in items]
    bad = [n for n in names if n not in MODALITIES]
    if bad or not names:
        raise ValueError(
            f"modalities {bad or value!r}: give letters of 'tav' or a comma list of {', '.join(MODALITIES)}"
        )
    return tuple(m for m in MODALITIES if m in names)


def modality_letters(modalities: Iterable[str]) -> str:
    """``("text", "visual")`` -> ``"tv"`` (the short form used in run names and reports)."""
    return "".join(m[0] for m in MODALITIES if m in set(modalities))
