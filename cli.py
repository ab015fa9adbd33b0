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
@main.command()
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Corpus format.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Corpus folder (as for prepare).")
@click.option("--modalities", default="text,audio,visual",
              help="Comma list of text, audio, visual. `text` alone needs no clips (MELD CSVs suffice).")
@click.option("--splits", default="train,dev,test", help="Comma list of splits to extract.")
@click.option("--workers", type=int, default=2, help="Local dask worker processes (1 thread each).")
@click.option("--scheduler", default=None,
              help="Address of an existing dask scheduler (e.g. tcp://host:8786, dask-jobqueue) instead of "
                   "a LocalCluster.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
              help="MTCNN, encoders and text model device; cuda uses one GPU worker and larger batches.")
@click.option("--text-model", default=None,
              help="Hub id or local folder, used frozen. Default: the shipped all-MiniLM-L6-v2 fine-tuned "
                   "on the train split (cached); frozen where fine-tuning is unavailable.")
@click.option("--encoders", default=None,
              help="Folder with audio.pt, face.pt, scene.pt, or `random` (seeded random weights). Default: "
                   "the encoders cached for this media, trained if missing.")
@click.option("--cache", type=click.Path(path_type=Path), default=Path("cache"), help="Cache root folder.")
@click.option("--limit", type=int, default=None, help="At most N utterances per split (quick runs).")
@click.option("--partition-size", type=int, default=16,
              help="Utterances per dask task (whole dialogues); the unit of resume.")
def extract(dataset: str, root: Path | None, modalities: str, splits: str, workers: int,
            scheduler: str | None, device: str, text_model: str | None, encoders: str | None,
            cache: Path, limit: int | None, partition_size: int) -> None:
    """Extract features to cache/<dataset>/<config-hash>/features.h5 (resumable); print its path last."""
    _run_extract_command(dataset=dataset, root=root, modalities=modalities, splits=splits, workers=workers,
                         scheduler=scheduler, device=device, text_model=text_model, encoders=encoders,
                         cache=cache, limit=limit, partition_size=partition_size)


def _run_extract_command(**kw) -> None:
    from pipeline.manifest import SPLITS
    from pipeline.run import MODALITIES, ExtractError, ExtractOptions, format_summary, parse_list, run_extract

    try:
        kw["modalities"] = parse_list(kw["modalities"], MODALITIES, "--modalities")
        kw["splits"] = parse_list(kw["splits"], SPLITS, "--splits")
        result = run_extract(ExtractOptions(**kw))
    except ExtractError as e:
        raise click.ClickException(str(e)) from e
    click.echo(format_summary(result), err=True)
    click.echo(str(result.features))
# --- end extract ---

# --- train-encoders (pipeline/encoders/train.py) ---------------------------------------------
# --- end train-encoders ---

# --- train-dialog (trainer/fit.py) -----------------------------------------------------------
# --- end train-dialog ---

# --- report (trainer/report.py) --------------------------------------------------------------
# --- end report ---


if __name__ == "__main__":
    main()
