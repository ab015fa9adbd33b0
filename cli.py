"""The ``m2f`` command line: one click group; each command parses options and calls one function.

Heavy imports (torch, dask) happen inside the commands so ``m2f --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline import __version__

DATASETS = ("meld", "iemocap", "sample", "custom")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="m2f")
def main() -> None:
    """m2f: M2FNet emotion recognition in conversation (text, audio, video).

    Typical run: prepare -> extract -> train-dialog -> report.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- prepare (pipeline/corpora) --------------------------------------------------------------
@main.command()
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Corpus format.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Corpus folder (MELD: folder holding the CSVs and clip folders; IEMOCAP: "
                   "IEMOCAP_full_release; custom: the CSV file or its folder). Not needed for sample.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the manifest here as JSONL (default: print the summary only).")
def prepare(dataset: str, root: Path | None, out: Path | None) -> None:
    """Read a corpus, print a per-split summary, optionally write the JSONL manifest."""
    from pipeline.corpora import run_prepare

    run_prepare(dataset, root, out)


# --- extract (pipeline/run.py) ---------------------------------------------------------------
# --- end extract ---

# --- train-encoders (pipeline/encoders/train.py) ---------------------------------------------
# --- end train-encoders ---

# --- train-dialog (trainer/fit.py) -----------------------------------------------------------
# --- end train-dialog ---

# --- report (trainer/report.py) --------------------------------------------------------------
# --- end report ---


if __name__ == "__main__":
    main()
