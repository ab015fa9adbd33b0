"""``m2f demo``: prepare -> extract -> train-dialog -> report on the bundled sample corpus.

The sample is a toy (25 utterances); its numbers show that the chain works, not how well M2FNet does.
"""

from __future__ import annotations

from pathlib import Path

import click


def run_demo(out: Path, cache: Path, workers: int, seeds: int, epochs: int) -> Path:
    """Run the whole chain on the sample corpus; return the path of ``report.md``.

    Each stage is resumable: rerunning the command skips what is already done.
    """
    from pipeline.corpora import run_prepare
    from pipeline.extract import ExtractOptions, format_summary, run_extract
    from trainer.fit import DialogTrainConfig, train_dialog
    from trainer.report import report

    click.echo("== 1/4 prepare: the bundled sample corpus (MELD layout)", err=True)
    run_prepare("sample", None, None)
    click.echo("== 2/4 extract: decode, MTCNN faces, train small encoders, embed -> features.h5", err=True)
    result = run_extract(ExtractOptions(dataset="sample", root=None, cache=cache, workers=workers))
    click.echo(format_summary(result), err=True)
    click.echo(f"features: {result.features}", err=True)
    click.echo("== 3/4 train-dialog: text + audio + visual, attention fusion, epoch chosen on dev", err=True)
    train_dialog(DialogTrainConfig(features=str(result.features), out=str(out), seeds=seeds, epochs=epochs,
                             patience=epochs))
    click.echo("== 4/4 report", err=True)
    click.echo(report([out]))
    return Path(out) / "report.md"
