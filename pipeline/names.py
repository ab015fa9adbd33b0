"""The project's vocabulary: the names every command and module uses for the same things.

- **dataset**: a corpus format m2f reads (:data:`DATASETS`).
- **modality**: one of the three inputs of M2FNet, text, audio and visual (:data:`MODALITIES`); its
  short form is its first letter (:data:`LETTER`: ``t``, ``a``, ``v``), as in ``--modalities tav``,
  run names and the dialogue model's inputs.
- **encoder kind**: one of the three triplet-trained ResNet18 networks that embed the audio and visual
  modalities (:data:`ENCODER_KINDS`: audio, face, scene). The text modality is embedded by the text
  model (a fine-tuned transformer), not by an encoder of this kind.
"""

from __future__ import annotations

from collections.abc import Iterable

DATASETS = ("meld", "iemocap", "sample", "custom")

#: Where extraction, prediction and the live API run their models (``--device``); training adds ``auto``.
DEVICES = ("cpu", "cuda")
#: The default of every ``--device`` but training's (``auto``).
DEFAULT_DEVICE = DEVICES[0]
SPLITS = ("train", "dev", "test")
MODALITIES = ("text", "audio", "visual")
ENCODER_KINDS = ("audio", "face", "scene")
#: Modality name -> its letter (``"text"`` -> ``"t"``). The one letter <-> name map of m2f.
LETTER = {m: m[0] for m in MODALITIES}
#: Letter -> modality name (``"t"`` -> ``"text"``).
MODALITY_OF_LETTER = {letter: m for m, letter in LETTER.items()}


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
    if len(items) == 1 and items[0] not in MODALITIES and set(items[0]) <= set(MODALITY_OF_LETTER):
        items = list(items[0])  # "tav"
    names = [MODALITY_OF_LETTER.get(i, i) for i in items]
    bad = [n for n in names if n not in MODALITIES]
    if bad or not names:
        raise ValueError(
            f"modalities {bad or value!r}: give letters of 'tav' or a comma list of {', '.join(MODALITIES)}"
        )
    return tuple(m for m in MODALITIES if m in names)


def modality_letters(modalities: Iterable[str]) -> str:
    """Modality names -> their letters in canonical order (the short form of run names and reports).

    Examples
    --------
    >>> modality_letters(["visual", "text"])
    'tv'
    """
    return "".join(LETTER[m] for m in MODALITIES if m in set(modalities))
