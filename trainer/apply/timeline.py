"""The timeline picture of ``m2f predict --plot``: a conversation's emotions over time, one lane per speaker.

Each utterance is a bar from its start to its end time (or one unit per position when the input has
no times), in its speaker's lane, coloured by the predicted emotion; the colour's strength is the
predicted probability (pale = unsure), and the bar is labelled with the emotion and the percentage
when it is wide enough. One panel per dialogue (the first :data:`MAX_PANELS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: Fixed colours for the emotions of MELD and IEMOCAP (and the demo), so a colour means one thing.
EMOTION_COLOURS = {
    "anger": "#d62728",
    "ang": "#d62728",
    "fru": "#ff7f0e",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "joy": "#f2b701",
    "hap": "#f2b701",
    "exc": "#ffd92f",
    "neutral": "#7f7f7f",
    "neu": "#7f7f7f",
    "sadness": "#1f77b4",
    "sad": "#1f77b4",
    "surprise": "#17becf",
}
MAX_PANELS = 6


def emotion_colours(class_names: Sequence[str]) -> dict[str, str]:
    """A colour per class: the fixed one when known, else from matplotlib's tab10 (in class order)."""
    from matplotlib import colormaps

    tab = colormaps["tab10"]
    return {c: EMOTION_COLOURS.get(c.lower(), _hex(tab(i % 10))) for i, c in enumerate(class_names)}


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * x):02x}" for x in rgba[:3])


def _text_colour(fill: tuple[float, float, float, float]) -> str:
    """Black on a light bar, white on a dark one (the bar's colour blended over white)."""
    r, g, b = (fill[3] * c + 1 - fill[3] for c in fill[:3])
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _spans(rows: Sequence[dict]) -> list[tuple[float, float]]:
    """(start, end) per row; rows without times get ``[position, position + 0.9]``."""
    if all(r.get("start") is not None and r.get("end") is not None for r in rows):
        return [(float(r["start"]), float(r["end"])) for r in rows]
    return [(float(r["position"]), float(r["position"]) + 0.9) for r in rows]


def _plain(text: object) -> str:
    """``text`` drawn as is: a ``$`` would start matplotlib's math mode (``$\\x$`` fails to draw)."""
    return str(text).replace("$", r"\$")


def plot_timeline(rows: Sequence[dict], class_names: Sequence[str], path: str | Path) -> Path:
    """Draw the predictions of :func:`trainer.apply.predict.predict` (its rows) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    dialogues: dict[str, list[dict]] = {}
    for r in rows:
        dialogues.setdefault(str(r["dialogue"]), []).append(r)
    shown = list(dialogues)[:MAX_PANELS]
    colours = emotion_colours(class_names)
    heights = [0.5 + 0.42 * len({r["speaker"] for r in dialogues[d]}) for d in shown]
    fig, axes = plt.subplots(
        len(shown),
        1,
        figsize=(11, 1.1 + sum(h + 0.55 for h in heights)),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": heights},
    )
    for ax, dialogue in zip(axes[:, 0], shown, strict=True):
        drows = dialogues[dialogue]
        speakers = list(dict.fromkeys(r["speaker"] for r in drows))
        spans = _spans(drows)
        timed = drows[0].get("start") is not None
        width = max(e for _, e in spans) - min(s for s, _ in spans)
        for r, (s, e) in zip(drows, spans, strict=True):
            y = speakers.index(r["speaker"])
            p = float(r[f"p_{r['predicted']}"])
            fill = to_rgba(colours[r["predicted"]], 0.15 + 0.85 * p)
            ax.barh(
                y, e - s, left=s, height=0.72, color=fill, edgecolor=colours[r["predicted"]], linewidth=1.2
            )
            if (e - s) > 0.06 * width:
                ax.text(
                    (s + e) / 2,
                    y,
                    f"{_plain(r['predicted'])}\n{100 * p:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color=_text_colour(fill),
                    clip_on=True,
                )
        ax.set_yticks(range(len(speakers)), [_plain(sp) for sp in speakers])
        ax.set_ylim(len(speakers) - 0.45, -0.55)
        ax.set_xlabel("time (s)" if timed else "utterance", fontsize=8)
        ax.set_title(f"dialogue {_plain(dialogue)}", loc="left", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [Patch(facecolor=colours[c], edgecolor=colours[c], label=_plain(c)) for c in class_names]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=min(len(handles), 8),
        frameon=False,
        title="predicted emotion (colour strength = probability)",
        fontsize=8,
        title_fontsize=8,
    )
    if len(dialogues) > len(shown):
        fig.text(0.01, 0.005, f"{len(dialogues) - len(shown)} more dialogue(s) not shown", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
