"""Latency of ``m2f predict`` on a 20-utterance conversation on the CPU; prints one JSON object.

The conversation is 20 clips of the bundled sample corpus joined end to end into one video
(:func:`trainer.demo.corpus.join_clips`) with an SRT of their speakers and texts. The model is
``--model DIR`` (e.g. the demo's ``runs/sample/model``) or, by default, one built once into
``--workdir``: the sample extracted with seeded random encoders and the shipped MiniLM, a dialogue
model trained for two epochs, exported. Latency does not depend on the weights, only on the
architecture, which is the default one (15 frames per utterance, ResNet18 encoders, MiniLM).

Each repeat runs the command as a user does, ``m2f predict --model DIR talk.mp4 --subtitles talk.srt``
in a fresh process; the first repeat is cold (files not in the page cache yet), the others warm. The
JSON holds every repeat's wall time and the breakdown measured inside ``predict`` (model load with
checksum verification, extraction with its worker start, dialogue-model inference). ``in_process_runs``
then calls ``predict`` repeatedly in one process with the folder loaded once, as a service would.

Usage::

    python bench/predict_latency.py [--model DIR] [--repeats 3] [--workers 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_UTTERANCES = 20


def build_model(workdir: Path) -> Path:
    """The default model to time (see the module docs); reused when already built."""
    from pipeline.text.embedder import DEFAULT_TEXT_MODEL
    from trainer.apply.export import export_model
    from trainer.apply.predict import ExtractOptions, run_extract
    from trainer.dialogue.fit import DialogueTrainConfig, train_dialogue

    model = workdir / "model"
    if (model / "checksums.json").exists():
        return model
    result = run_extract(
        ExtractOptions(
            dataset="sample",
            root=None,
            cache=workdir / "cache",
            encoders="random",
            text_model=DEFAULT_TEXT_MODEL,
        )
    )
    train_dialogue(
        DialogueTrainConfig(features=str(result.features), out=str(workdir / "run"), epochs=2, progress=False)
    )
    return export_model(workdir / "run", model, overwrite=True)


def build_conversation(workdir: Path) -> tuple[Path, Path]:
    """``talk.mp4`` (20 sample clips joined) and ``talk.srt``."""
    from pipeline.corpora.sample import prepare_sample
    from pipeline.corpora.subtitles import Cue, write_srt
    from trainer.demo.corpus import join_clips

    video, srt = workdir / "talk.mp4", workdir / "talk.srt"
    if not (video.exists() and srt.exists()):
        utts = prepare_sample()[:N_UTTERANCES]
        spans = join_clips([u.clip for u in utts], video)
        write_srt(srt, [Cue(s, e, u.speaker, u.text) for u, (s, e) in zip(utts, spans, strict=True)])
    return video, srt


_TIMED = """
import json, sys, time
t0 = time.perf_counter()
from trainer.apply.predict import predict
imported = time.perf_counter() - t0
workers = None if sys.argv[5] == "auto" else int(sys.argv[5])
r = predict(sys.argv[1], sys.argv[2], sys.argv[3], subtitles=sys.argv[4], workers=workers)
print(json.dumps({"import_s": imported, **{k + "_s": v for k, v in r.seconds.items()}, "rows": len(r.rows)}))
"""


def in_process_runs(
    model: Path, video: Path, srt: Path, workdir: Path, workers: str, repeats: int
) -> list[dict]:
    """``predict`` called again and again in this process with the model folder loaded once (a service):
    imports and the models the engine caches per process are paid by the first call only."""
    from trainer.apply.export import load_model_folder
    from trainer.apply.predict import predict

    loaded = load_model_folder(model)
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        r = predict(
            model,
            video,
            workdir / f"service-{i}.csv",
            subtitles=srt,
            model=loaded,
            workers=None if workers == "auto" else int(workers),
        )
        out.append(
            {
                "wall_s": round(time.perf_counter() - t, 2),
                **{k + "_s": round(v, 2) for k, v in r.seconds.items()},
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="An exported model folder to time.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="auto", help="auto (m2f predict's default), 0 or N processes")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "m2f-bench-predict")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or build_model(args.workdir)
    video, srt = build_conversation(args.workdir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    for i in range(args.repeats):
        out = args.workdir / f"predictions-{i}.csv"
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _TIMED, str(model), str(video), str(out), str(srt), str(args.workers)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        wall = time.perf_counter() - t
        runs.append(
            {
                "wall_s": round(wall, 2),
                "warm": i > 0,
                **{
                    k: round(v, 2) if isinstance(v, float) else v
                    for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()
                },
            }
        )
    warm = [r["wall_s"] for r in runs if r["warm"]] or [runs[0]["wall_s"]]
    service = in_process_runs(model, video, srt, args.workdir, args.workers, args.repeats)
    print(
        json.dumps(
            {
                "utterances": N_UTTERANCES,
                "model": str(model),
                "workers": args.workers,
                "warm_median_s": sorted(warm)[len(warm) // 2],
                "target_s": 20.0,
                "runs": runs,
                "in_process_runs": service,
                "cpu_count": os.cpu_count(),
                "loadavg_1min": os.getloadavg()[0],
                "platform": platform.platform(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
