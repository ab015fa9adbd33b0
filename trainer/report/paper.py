"""The paper's published numbers (Table 2, Fig. 5) and the reference that a report shows beside a run."""

from __future__ import annotations

from pipeline.names import MODALITY_OF_LETTER

#: Paper Table 2 (test; percent): (dataset, modalities, fusion or None for one modality) -> numbers.
PAPER_RESULTS: dict[tuple[str, str, str | None], dict[str, float]] = {
    ("iemocap", "a", None): {"accuracy": 26.56, "weighted_f1": 21.79},
    ("iemocap", "v", None): {"accuracy": 20.39, "weighted_f1": 13.10},
    ("iemocap", "t", None): {"accuracy": 66.30, "weighted_f1": 66.20},
    ("iemocap", "tav", "concat"): {"accuracy": 67.16, "weighted_f1": 67.12},
    ("iemocap", "tav", "attention"): {"accuracy": 69.69, "weighted_f1": 69.86},
    ("meld", "a", None): {"accuracy": 49.04, "weighted_f1": 39.63},
    ("meld", "v", None): {"accuracy": 45.63, "weighted_f1": 32.44},
    ("meld", "t", None): {"accuracy": 67.24, "weighted_f1": 66.23},
    ("meld", "tav", "concat"): {"accuracy": 67.28, "weighted_f1": 66.81},
    ("meld", "tav", "attention"): {"accuracy": 67.85, "weighted_f1": 66.71},
}
#: Paper Fig. 5 per-class F1 of M2FNet (T+A+V fusion), read off the chart.
PAPER_PER_CLASS_F1: dict[str, dict[str, float]] = {
    "meld": {
        "neutral": 80.06,
        "surprise": 58.66,
        "fear": 3.45,
        "sadness": 47.03,
        "joy": 65.5,
        "disgust": 25.24,
        "anger": 55.25,
    },
    "iemocap": {"hap": 60.0, "sad": 82.11, "neu": 65.88, "ang": 68.21, "exc": 72.6, "fru": 68.31},
}
TOY_NOTE = (
    "The paper's numbers are for the real MELD test set; this run's class map is {cmap!r} on generated "
    "or small data, so comparing the two is meaningless (they are shown only to place the report)."
)


#: Table 2's rows in the paper's order, (modalities, fusion or None), then the subsets it does not report.
TABLE2_ROWS: tuple[tuple[str, str | None], ...] = (
    ("a", None),
    ("v", None),
    ("t", None),
    ("tav", "concat"),
    ("tav", "attention"),
    ("ta", "attention"),
    ("tv", "attention"),
    ("av", "attention"),
    ("ta", "concat"),
    ("tv", "concat"),
    ("av", "concat"),
)


def input_name(modalities: str, fusion: str | None) -> str:
    """Table 2's wording: ``audio only``, ``T+A+V concatenated``, ``T+A attention fusion``."""
    if len(modalities) == 1:
        return MODALITY_OF_LETTER[modalities] + " only"
    letters = "+".join(m.upper() for m in modalities)
    return f"{letters} " + ("concatenated" if fusion == "concat" else "attention fusion")


def paper_reference(dataset: str, class_map: str, modalities: str, fusion: str) -> dict:
    """The paper's test numbers for the same dataset and input, or a note saying why there are none."""
    if "sample" in (dataset, class_map):
        # the sample is MELD-shaped: show MELD's numbers beside it, saying they are not comparable
        meld = paper_reference("meld", "meld", modalities, fusion)
        return {**meld, "note": TOY_NOTE.format(cmap=class_map)}
    if class_map not in ("meld", "iemocap") or dataset not in ("meld", "iemocap"):
        return {"note": TOY_NOTE.format(cmap=class_map)}
    key = (dataset, modalities, None if len(modalities) == 1 else fusion)
    if key not in PAPER_RESULTS:
        return {"note": f"not reported by the paper ({dataset}, {input_name(modalities, fusion)})"}
    ref: dict[str, object] = dict(PAPER_RESULTS[key])
    if key[1:] == ("tav", "attention"):
        ref["per_class_f1"] = PAPER_PER_CLASS_F1[dataset]
    return ref
