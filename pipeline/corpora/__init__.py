"""Corpus readers (MELD, IEMOCAP, custom CSV, bundled sample) and the ``m2f prepare`` command.

Every reader returns a list of :class:`pipeline.manifest.Utterance` with raw labels, and fills a
:class:`PrepareReport` with what it saw besides (clip statuses, unlabelled extra clips, notes).

Examples
--------
>>> from pipeline.corpora import prepare_corpus
>>> utts = prepare_corpus("sample", None)
>>> sorted({u.split for u in utts})
['dev', 'test', 'train']
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from pipeline.corpora.base import STATUSES, CorpusError, PrepareReport
from pipeline.manifest import Utterance
from pipeline.names import DATASETS, SPLITS

__all__ = ["DATASETS", "CorpusError", "PrepareReport", "prepare_corpus", "run_prepare", "summarize"]

logger = logging.getLogger(__name__)


def prepare_corpus(
    dataset: str, root: str | Path | None, report: PrepareReport | None = None
) -> list[Utterance]:
    """Read a corpus with the reader for ``dataset``.

    Parameters
    ----------
    dataset : str
        ``meld``, ``iemocap``, ``sample`` or ``custom``.
    root : str, Path or None
        Corpus folder (custom: the CSV or its folder); ignored (may be None) for ``sample``.
    report : PrepareReport, optional
        Filled by the reader.

    Raises
    ------
    CorpusError
        Unknown dataset, no root where one is needed, or the reader's own errors.
    """
    if dataset not in DATASETS:
        raise CorpusError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    report = report if report is not None else PrepareReport(corpus=dataset)
    if dataset == "sample":
        from pipeline.corpora.sample import prepare_sample

        return prepare_sample(report=report)
    if root is None:
        raise CorpusError(f"--root is required for {dataset}: the folder holding the corpus.")
    if dataset == "meld":
        from pipeline.corpora.meld import prepare_meld

        return prepare_meld(root, report=report)
    if dataset == "iemocap":
        from pipeline.corpora.iemocap import prepare_iemocap

        return prepare_iemocap(root, report=report)
    from pipeline.corpora.custom import prepare_custom

    return prepare_custom(root, report=report)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = [
        f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True))
    ]
    lines = ["  ".join(fmt)]
    for r in rows:
        lines.append(
            "  ".join(
                f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return lines


def summarize(utterances: list[Utterance], report: PrepareReport | None = None) -> str:
    """A per-split text summary: dialogues, utterances, label counts, clip/audio statuses, extras.

    Parameters
    ----------
    utterances : list of Utterance
        What a reader returned.
    report : PrepareReport, optional
        The reader's report; without it only counts and labels are shown.
    """
    report = report or PrepareReport(corpus=utterances[0].corpus if utterances else "?")
    by_split = {s: [u for u in utterances if u.split == s] for s in SPLITS}
    by_split = {s: us for s, us in by_split.items() if us}
    media = [("clips", report.clip_status)] + (
        [("audio", report.audio_status)] if report.audio_status else []
    )
    header = ["split", "dialogues", "utterances"]
    used = {name: [st for st in STATUSES if st in set(status.values())] for name, status in media}
    for name, _ in media:
        header += [f"{name} {st}" for st in used[name]]
    header.append("extras ignored")
    rows = []
    for split, us in [*by_split.items(), ("total", utterances)]:
        row = [split, str(len({(u.split, u.dialogue_id) for u in us})), str(len(us))]
        for name, status in media:
            counts = Counter(status.get(u.id) for u in us)
            row += [str(counts[st]) for st in used[name]]
        extras = (
            sum(len(v) for v in report.ignored.values())
            if split == "total"
            else len(report.ignored.get(split, []))
        )
        rows.append([*row, str(extras)])
    lines = [f"{report.corpus}: {report.root if report.root is not None else '(bundled)'}"]
    lines += [f"  {k}: {v}" for k, v in report.sources.items()]
    lines += _table(header, rows)
    lines.append("labels:")
    for split, us in by_split.items():
        counts = Counter(u.label if u.label is not None else "(none)" for u in us)
        lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for split, names in report.ignored.items():
        if names:
            shown = ", ".join(names[:5]) + (f" ... (+{len(names) - 5})" if len(names) > 5 else "")
            lines.append(f"ignored in {split} (no annotation row): {shown}")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def run_prepare(dataset: str, root: Path | None, out: Path | None) -> list[Utterance]:
    """``m2f prepare``: read the corpus, print the summary, write the JSONL manifest when ``out`` is set.

    Raises
    ------
    click.ClickException
        For any :class:`CorpusError` (the message says what was expected and what was found).
    """
    import click

    from pipeline.manifest import validate, write_jsonl

    report = PrepareReport(corpus=dataset)
    try:
        utterances = prepare_corpus(dataset, root, report)
    except CorpusError as e:
        raise click.ClickException(str(e)) from e
    if dataset == "sample" and root is not None:
        report.notes.append(f"--root {root} ignored: the sample corpus is bundled with m2f")
    click.echo(summarize(utterances, report))
    problems = validate(utterances)
    for p in problems:
        logger.warning("manifest problem: %s", p)
    if out is not None:
        write_jsonl(utterances, out)
        click.echo(f"wrote {len(utterances)} utterances to {out}")
    return utterances
