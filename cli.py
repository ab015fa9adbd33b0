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

    Typical run: prepare -> extract -> train-dialog -> report; then export -> predict to apply a model.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _interrupted(kept: str) -> None:
    """Ctrl-C: say what was kept and how to go on, exit 130 (no traceback)."""
    click.echo(f"\ninterrupted: {kept}; run the same command again to resume where it stopped.", err=True)
    raise SystemExit(130)


# --- prepare (pipeline/corpora) --------------------------------------------------------------
@main.command()
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Corpus format.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Corpus folder (MELD: folder holding the CSVs and clip folders; IEMOCAP: "
                   "IEMOCAP_full_release; custom: the CSV file or its folder). Not needed for sample.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the manifest here as JSONL (default: print the summary only).")
def prepare(dataset: str, root: Path | None, out: Path | None) -> None:
    """Read a corpus; print its summary; write the manifest.

    Prints dialogues, utterances, labels and clips found / missing / zero-byte per split; with --out,
    writes the JSONL manifest (keys: id, corpus, split, dialogue_id, position, utterance_id, speaker,
    text, label, sentiment, clip, start, end, session, side).
    """
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
    """Embed text, audio and video into features.h5 (resumable).

    Stages: prepare -> media (decode, MTCNN; media.h5) -> encoders (trained if missing) -> embed
    (features.h5 in cache/<dataset>/<config-hash>/). Each stage is skipped when complete; a killed run
    resumes where it stopped when the same command is run again. Problems per utterance go to
    problems.jsonl beside media.h5. The last line printed is the path of features.h5.
    """
    _run_extract_command(dataset=dataset, root=root, modalities=modalities, splits=splits, workers=workers,
                         scheduler=scheduler, device=device, text_model=text_model, encoders=encoders,
                         cache=cache, limit=limit, partition_size=partition_size)


def _run_extract_command(**kw) -> None:
    from pipeline.cache import CacheLockedError
    from pipeline.manifest import SPLITS
    from pipeline.run import MODALITIES, ExtractError, ExtractOptions, format_summary, parse_list, run_extract

    try:
        kw["modalities"] = parse_list(kw["modalities"], MODALITIES, "--modalities")
        kw["splits"] = parse_list(kw["splits"], SPLITS, "--splits")
        result = run_extract(ExtractOptions(**kw))
    except (ExtractError, CacheLockedError) as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        _interrupted(f"finished batches are kept under {kw['cache']}")
    click.echo(format_summary(result), err=True)
    click.echo(str(result.features))
# --- end extract ---

# --- train-encoders (pipeline/encoders/train.py) ---------------------------------------------
@main.command("train-encoders")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Corpus format.")
@click.option("--modality", type=click.Choice(["audio", "face", "scene", "text", "all"]), default="all",
              help="Which extractor to train; `all` = audio, face and scene (text is fine-tuned separately).")
@click.option("--media", type=click.Path(path_type=Path), default=None,
              help="The media.h5 to train on. Default: the only cache/<dataset>/media-*/media.h5.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for audio.pt/face.pt/scene.pt. Default: cache/<dataset>/encoders/<media hash>/.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Corpus folder; only for --modality text (the text model trains on the corpus text).")
@click.option("--cache", type=click.Path(path_type=Path), default=Path("cache"), help="Cache root folder.")
@click.option("--epochs", type=int, default=None,
              help="Epochs per extractor. Default: 60 audio / 100 visual on cuda (the paper), 5 on cpu.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
              help="cuda: bf16 autocast and batch 128 by default.")
@click.option("--batch-size", type=int, default=None, help="Batch size (default 32 on cpu, 128 on cuda).")
@click.option("--steps-per-epoch", type=int, default=None,
              help="Batches per epoch (default: one pass over the train samples).")
@click.option("--seed", type=int, default=0, help="Initial weights and sampling.")
@click.option("--classes", default=None,
              help="Comma list of labels to train on (e.g. IEMOCAP's six). Default: every non-empty label.")
@click.option("--overwrite", is_flag=True, help="Retrain even if a checkpoint exists.")
@click.option("--threads", type=int, default=None,
              help="torch CPU threads (1 is much faster on a busy, shared CPU). Default: torch's choice.")
def train_encoders_command(dataset: str, modality: str, media: Path | None, out: Path | None,
                           root: Path | None, cache: Path, epochs: int | None, device: str,
                           batch_size: int | None, steps_per_epoch: int | None, seed: int,
                           classes: str | None, overwrite: bool, threads: int | None) -> None:
    """Triplet-train the audio, face, scene (or text) encoders.

    Trains on a media cache written by `m2f extract` (train split; dev picks the epoch) and writes
    <modality>.pt checkpoints carrying their config, history and a dev probe quality figure.
    """
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if modality == "text":
        _train_text_encoder(dataset, root, out or cache / dataset / "encoders" / "text", device, epochs)
        return
    from pipeline.encoders.model import ENCODER_KINDS
    from pipeline.encoders.train import train_encoders

    media = media or _find_media(cache, dataset)
    out = out or cache / dataset / "encoders" / media.parent.name.removeprefix("media-")
    mods = ENCODER_KINDS if modality == "all" else (modality,)
    labels = tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None
    try:
        paths = train_encoders(media, out, modalities=mods, epochs=epochs, device=device, seed=seed,
                               batch_size=batch_size, steps_per_epoch=steps_per_epoch, overwrite=overwrite,
                               classes=labels)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    for p in paths.values():
        click.echo(str(p))


def _find_media(cache: Path, dataset: str) -> Path:
    found = sorted((cache / dataset).glob("media-*/media.h5"))
    if len(found) != 1:
        raise click.UsageError(
            f"found {len(found)} media caches under {cache / dataset} ({[str(p) for p in found]}); pass "
            "--media PATH (run `m2f extract` first if there is none)")
    return found[0]


def _train_text_encoder(dataset: str, root: Path | None, out: Path, device: str, epochs: int | None) -> None:
    from pipeline.corpora import prepare_corpus
    from pipeline.encoders.text_finetune import finetune_text

    kw = {} if epochs is None else {"epochs": epochs}
    click.echo(str(finetune_text(prepare_corpus(dataset, root), out, device=device, **kw)))
# --- end train-encoders ---

# --- train-dialog (trainer/fit.py) -----------------------------------------------------------
@main.command("train-dialog")
@click.option("--features", type=click.Path(path_type=Path), required=True,
              help="A features.h5 (m2f extract).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder; seeds go to OUT/seed<k>/. Rerunning the same command resumes a killed run.")
@click.option("--modalities", default="tav", help="Any subset of t (text), a (audio), v (visual).")
@click.option("--fusion", type=click.Choice(["attention", "concat"]), default="attention",
              help="Multi-head attention fusion (M2FNet) or plain concatenation.")
@click.option("--seeds", type=int, default=1, help="Number of seeds (repeats); report gives mean ± std.")
@click.option("--first-seed", type=int, default=0, help="Seed of the first repeat.")
@click.option("--epochs", type=int, default=100, help="Maximum epochs.")
@click.option("--patience", type=int, default=15,
              help="Stop after this many epochs without a better dev wF1.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--lr", type=float, default=5e-4, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=5e-4, help="AdamW weight decay.")
@click.option("--dropout", type=float, default=0.4)
@click.option("--batch-size", type=int, default=16, help="Dialogs per batch.")
@click.option("--bucket", type=int, default=50,
              help="Batch dialogs of similar length: sort inside windows of BUCKET batches (0 = off).")
@click.option("--heads", type=int, default=4, help="Attention heads (must divide D_T, D_A, D_V).")
@click.option("--layers", type=int, default=None,
              help="Transformer layers per modality N_T = N_A = N_V [default: 5 for iemocap, else 1].")
@click.option("--fusion-layers", type=int, default=5, help="Attention fusion layers m.")
@click.option("--hidden", type=int, default=256, help="Width of the classifier's hidden layer.")
@click.option("--ff-mult", type=int, default=2, help="Encoder feed-forward width as a multiple of D.")
@click.option("--class-map", type=click.Choice(["meld", "iemocap", "sample", "custom"]), default=None,
              help="Which labels count [default: from the file's dataset attribute].")
@click.option("--compile/--no-compile", "compile_", default=False, help="torch.compile the model.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch [default: torch's choice].")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm bar with loss and dev wF1.")
@click.option("--checkpoint-seconds", type=float, default=60.0,
              help="Write the resume checkpoint (last.pt) at most this often; 0 = every epoch.")
def train_dialog_cmd(features: Path, out: Path, modalities: str, fusion: str, seeds: int, first_seed: int,
                     epochs: int, patience: int, device: str, lr: float, weight_decay: float, dropout: float,
                     batch_size: int, heads: int, layers: int | None, fusion_layers: int, hidden: int,
                     ff_mult: int, class_map: str | None, compile_: bool, threads: int | None,
                     progress: bool, bucket: int, checkpoint_seconds: float) -> None:
    """Train the dialog-level M2FNet on a features.h5.

    Writes RUN_DIR/seed<k>/ (config, environment, label map, metrics.jsonl, best.pt, predictions);
    the epoch is chosen on dev weighted F1, never on test. Rerun the same command to resume.
    """
    from trainer.fit import DialogTrainConfig, train_dialog

    config = DialogTrainConfig(
        features=str(features), out=str(out), modalities=modalities, fusion=fusion, seeds=seeds,
        first_seed=first_seed, epochs=epochs, patience=patience, device=device, lr=lr,
        weight_decay=weight_decay, dropout=dropout, batch_size=batch_size, heads=heads, layers=layers,
        fusion_layers=fusion_layers, hidden=hidden, ff_mult=ff_mult, class_map=class_map, compile=compile_,
        threads=threads, progress=progress, bucket=bucket, checkpoint_seconds=checkpoint_seconds)
    try:
        dirs = train_dialog(config)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        _interrupted(f"finished epochs are kept in {out} (last.pt at most --checkpoint-seconds old)")
    click.echo(f"done: {len(dirs)} seed(s) in {out}; next: m2f report {out}")
# --- end train-dialog ---

# --- report (trainer/report.py) --------------------------------------------------------------
@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--compare-out", type=click.Path(path_type=Path), default=None,
              help="Also write the comparison table of all RUN_DIRS to this Markdown file.")
def report_cmd(run_dirs: tuple[Path, ...], compare_out: Path | None) -> None:
    """Write metrics, plots and the paper's numbers for runs.

    Writes report.md, report.json, confusion.png and curves.png into each RUN_DIR and prints one
    comparison table (mean ± std over seeds). A run still training is reported as such.
    """
    from trainer.report import report

    try:
        table = report(list(run_dirs), compare_out)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    click.echo(table)
# --- end report ---


# --- demo (trainer/demo.py) ------------------------------------------------------------------
@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/sample"),
              help="Demo folder: corpus, runs, model, predictions.")
@click.option("--cache", type=click.Path(path_type=Path), default=Path("cache"), help="Cache root folder.")
@click.option("--workers", type=int, default=2, help="Local dask worker processes.")
@click.option("--seeds", type=int, default=2, help="Training repeats (mean ± std in the report).")
@click.option("--epochs", type=int, default=25, help="Dialog-model epochs per seed.")
def demo(out: Path, cache: Path, workers: int, seeds: int, epochs: int) -> None:
    """Generate a corpus, train text-only and fused, predict.

    Generates 216 utterances whose emotion only text + audio + visual together decide, then extract ->
    train-dialog (text only, and fused) -> report -> export -> predict a subtitled conversation video;
    prints the comparison, the predictions and the timeline picture's path.
    """
    from trainer.demo import run_demo

    path = run_demo(out, cache, workers, seeds, epochs)
    click.echo(f"report: {path} (confusion matrix: {path.parent / 'confusion.png'})")
# --- end demo ---


# --- export (trainer/export.py) --------------------------------------------------------------
@main.command("export")
@click.argument("run", type=click.Path(path_type=Path, exists=True))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model folder to create.")
@click.option("--seed", type=int, default=None, help="Seed to export [default: the best on dev weighted F1].")
@click.option("--encoders", default=None,
              help="Folder of the encoders the features were made with, if not in the features' cache.")
@click.option("--text-model", default=None,
              help="Folder of the text model the features were made with, if not in the features' cache.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def export_cmd(run: Path, out: Path, seed: int | None, encoders: str | None, text_model: str | None,
               overwrite: bool) -> None:
    """Write a trained run as a self-contained model folder.

    OUT gets the dialog model, encoders and text model as safetensors, the label map, the media and
    feature settings, checksums.json and a model card (README.md); `m2f predict --model OUT` uses it.
    """
    from trainer.export import ModelFolderError, export_model

    try:
        path = export_model(run, out, seed=seed, encoders=encoders, text_model=text_model,
                            overwrite=overwrite)
    except ModelFolderError as e:
        raise click.ClickException(str(e)) from e
    click.echo(str(path))
# --- end export ---


# --- predict (trainer/predict.py) ------------------------------------------------------------
@main.command("predict")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="A folder written by `m2f export`.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Predictions file.")
@click.option("--subtitles", type=click.Path(path_type=Path), default=None,
              help="SRT or WebVTT of the video INPUT: each cue is one utterance.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Output format [default: jsonl for a .jsonl --out, else csv].")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Also draw the emotions over time (one lane per speaker) into this PNG.")
@click.option("--workers", type=int, default=None,
              help="Extraction worker processes; 0 = in this process [default: 0 for one conversation or a "
                   "few utterances, else 2].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="Keep the generated CSV, media and features here [default: a temporary folder].")
def predict_cmd(input_path: Path, model_dir: Path, out: Path, subtitles: Path | None, fmt: str | None,
                plot: Path | None, workers: int | None, device: str, work: Path | None) -> None:
    """Predict the emotion of each utterance (CSV or video).

    INPUT is a custom-corpus CSV (label and split ignored; no clip column = text only) or a video with
    --subtitles. Writes one row per utterance: dialogue, position, speaker, start, end, text,
    predicted, p_<class>..., has_<modality> (False = missing, the model's learned vector was used).
    """
    from pipeline.cache import CacheLockedError
    from pipeline.subtitles import SubtitleError
    from trainer.export import ModelFolderError
    from trainer.predict import ExtractError, PredictError, predict

    try:
        result = predict(model_dir, input_path, out, subtitles=subtitles, fmt=fmt, plot=plot, workers=workers,
                         device=device, work=work)
    except (PredictError, ModelFolderError, SubtitleError, ExtractError, CacheLockedError) as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        _interrupted(f"nothing was written to {out}")
    click.echo(f"{len(result.rows)} utterances -> {result.out}" + (f"; timeline {result.plot}" if result.plot
                                                                   else ""))
# --- end predict ---


if __name__ == "__main__":
    main()
