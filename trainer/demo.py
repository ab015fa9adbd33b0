"""``m2f demo``: prepare -> extract -> train-dialog -> report on the bundled sample corpus.

The sample is a toy (25 utterances); its numbers show that the chain works, not how well M2FNet does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

log = logging.getLogger(__name__)


def run_demo(out: Path, cache: Path, workers: int, seeds: int, epochs: int) -> Path:
    """Run the whole chain on the sample corpus; return the path of ``report.md``.

    Each stage is resumable: rerunning the command skips what is already done.
    """
    from pipeline.corpora import run_prepare
    from pipeline.extract import ExtractOptions, format_summary, run_extract
    from trainer.fit import DialogTrainConfig, train_dialog
    from trainer.report import report

    log.info("== 1/4 prepare: the bundled sample corpus (MELD layout)")
    run_prepare("sample", None, None)
    log.info("== 2/4 extract: decode, MTCNN faces, train small encoders, embed -> features.h5")
    result = run_extract(ExtractOptions(dataset="sample", root=None, cache=cache, workers=workers))
    log.info("%s", format_summary(result))
    log.info("features: %s", result.features)
    log.info("== 3/4 train-dialog: text + audio + visual, attention fusion, epoch chosen on dev")
    train_dialog(DialogTrainConfig(features=str(result.features), out=str(out), seeds=seeds, epochs=epochs,
                             patience=epochs))
    log.info("== 4/4 report")
    click.echo(report([out]))
    return Path(out) / "report.md"
