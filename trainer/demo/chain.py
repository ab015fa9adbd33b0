"""``m2f demo``: the whole chain on a generated corpus where fusion pays, ending with a prediction.

1. generate the fusion corpus (:mod:`trainer.demo.corpus`, seeded): text tells the valence, the audio
   pitch the arousal, the face's side a third cue; one modality alone leaves two emotions possible,
   two or three decide it;
2. fine-tune the shipped MiniLM on the train split, then extract: media, and embeddings with that text
   model and seeded random audio/face/scene encoders (training those is what ``m2f extract`` does by
   default; on a 2-core CPU it takes minutes beyond the demo's budget, and random ResNet features
   already keep pitch and position: a linear probe reads both cues from them perfectly);
3. train-dialog twice: text only, and text + audio + visual with attention fusion;
4. report both and the comparison table (mean ± std over seeds);
5. export the fused run's best seed to a model folder;
6. predict a test conversation given as one video (its clips joined) with subtitles: predictions
   and a timeline picture.
"""

from __future__ import annotations

from pathlib import Path

import click

#: Two frames per utterance: the face's side shows in every frame, and the paper's 15 would multiply face
#: detection and the visual encoders by 7.5 for one-second clips.
DEMO_MEDIA = {"n_frames": 2}
#: Dialogues per batch: 24 train dialogues give 3 steps per epoch (the default 16 gives 2). Training runs on
#: one thread: on a machine shared with other jobs two threads are slower (bench/RESULTS.md, "Demo and
#: test suite").
DEMO_BATCH = 8
#: Dialogues per split of the generated corpus (6 utterances each).
DEMO_DIALOGUES = {"train": 24, "dev": 6, "test": 6}


def run_demo(out: Path, cache: Path, workers: int, seeds: int, epochs: int) -> Path:
    """Run the demo (see the module docs) into ``out``; return the path of the fused run's ``report.md``.

    Each stage is resumable: rerunning the command skips what is already done.
    """
    from trainer.apply.export import export_model
    from trainer.demo.corpus import fusion_script
    from trainer.dialogue.fit import DialogueTrainConfig, train_dialogue
    from trainer.report.build import report

    out = Path(out)
    corpus, text_model, features = demo_features(out, cache, workers)
    runs = {"t": out / "text", "tav": out / "fused"}
    for modalities, run in runs.items():
        click.echo(f"== 3/6 train-dialog: modalities {modalities}, epoch chosen on dev -> {run}", err=True)
        train_dialogue(
            DialogueTrainConfig(
                features=str(features),
                out=str(run),
                modalities=modalities,
                seeds=seeds,
                epochs=epochs,
                patience=epochs,
                batch_size=DEMO_BATCH,
                threads=1,
                progress=False,
            )
        )
    click.echo("== 4/6 report: text only vs text + audio + visual", err=True)
    click.echo(report(list(runs.values()), out / "comparison.md"))
    click.echo("== 5/6 export the fused model", err=True)
    model = export_model(runs["tav"], out / "model", text_model=str(text_model), overwrite=True)
    click.echo(f"model: {model}", err=True)
    click.echo("== 6/6 predict a test conversation: its clips joined into one video + subtitles", err=True)
    test = [u for u in fusion_script(DEMO_DIALOGUES) if u.split == "test"]
    predictions, timeline = predict_conversation(model, corpus.parent, test[:6], out / "conversation")
    click.echo(f"predictions: {predictions}")
    click.echo(f"timeline: {timeline}")
    return runs["tav"] / "report.md"


def demo_features(out: Path, cache: Path, workers: int) -> tuple[Path, Path, Path]:
    """Steps 1-2 of the demo into ``out`` (resumable): generate the corpus, fine-tune MiniLM, extract.

    Returns the corpus CSV, the fine-tuned text model folder and the features.h5
    (``bench/dialogue_ablation.py``
    builds its corpus with this too).
    """
    from pipeline.extract import ExtractOptions, format_summary, run_extract
    from trainer.demo.corpus import build_fusion_corpus

    out = Path(out)
    click.echo(
        "== 1/6 generate: 216 utterances, 4 emotions; text, audio and face each tell part of it", err=True
    )
    corpus = build_fusion_corpus(out / "corpus", DEMO_DIALOGUES, processes=max(1, workers))
    click.echo(f"corpus: {corpus}", err=True)
    click.echo(
        "== 2/6 fine-tune MiniLM on the train split (dev picks the step), then extract: decode, MTCNN "
        "faces, embed (audio/face/scene encoders: seeded random weights)",
        err=True,
    )
    text_model = finetune_demo_text(corpus, out / "fine-tuned-text")
    result = run_extract(
        ExtractOptions(
            dataset="custom",
            root=corpus,
            cache=cache,
            workers=workers,
            encoders="random",
            text_model=str(text_model),
            media_config=DEMO_MEDIA,
        )
    )
    click.echo(format_summary(result), err=True)
    return corpus, text_model, Path(result.features)


def finetune_demo_text(corpus: Path, folder: Path) -> Path:
    """The shipped MiniLM fine-tuned on the corpus's train split (dev picks the step); kept in ``folder``."""
    import torch

    from pipeline.corpora import prepare_corpus
    from pipeline.text.finetune.loop import META_FILE, finetune_text
    from pipeline.text.finetune.recipe import FinetuneConfig

    if (folder / META_FILE).exists():
        return folder
    utterances = [u for u in prepare_corpus("custom", corpus) if u.split in ("train", "dev")]
    labels = {label: i for i, label in enumerate(sorted({u.label for u in utterances if u.label}))}
    threads = torch.get_num_threads()
    try:
        return finetune_text(
            utterances, FinetuneConfig(out=folder, label_map=labels, eval_test=False, threads=1)
        )
    finally:
        torch.set_num_threads(threads)


def predict_conversation(model: Path, corpus: Path, utterances, folder: Path) -> tuple[Path, Path | None]:
    """Join the clips of ``utterances`` into ``folder/talk.mp4`` with ``talk.srt``, predict them, and
    print each prediction beside the emotion the corpus generated; return the predictions and
    timeline paths."""
    from pipeline.corpora.subtitles import Cue, write_srt
    from trainer.apply.predict import predict
    from trainer.demo.corpus import join_clips

    folder.mkdir(parents=True, exist_ok=True)
    spans = join_clips([corpus / u.clip for u in utterances], folder / "talk.mp4")
    write_srt(
        folder / "talk.srt",
        [Cue(s, e, u.speaker, u.text) for u, (s, e) in zip(utterances, spans, strict=True)],
    )
    result = predict(
        model,
        folder / "talk.mp4",
        folder / "predictions.csv",
        subtitles=folder / "talk.srt",
        plot=folder / "timeline.png",
    )
    right = 0
    for row, u in zip(result.rows, utterances, strict=True):
        right += row["predicted"] == u.label
        p = row["p_" + row["predicted"]]
        click.echo(
            f"  {row['start']:5.1f}-{row['end']:4.1f} s {row['speaker']:<5} {row['text']:<48} "
            f"{row['predicted']:<8} {100 * p:3.0f}%  (generated as {u.label})",
            err=True,
        )
    click.echo(f"  {right} of {len(utterances)} as generated", err=True)
    return result.out, result.plot
