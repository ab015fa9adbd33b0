"""Throughput of ``m2f extract``: 1 vs 2 dask workers vs a loop that loads its models once.

Run from the repository root (takes a few minutes on 2 cores)::

    .venv/bin/python bench/extract_throughput.py [--clips 52] [--size 320x240] [--out DIR]
    .venv/bin/python bench/extract_throughput.py --cost --clips 12 --size 1280x720 --duration 3
    .venv/bin/python bench/extract_throughput.py --scaling 1,2,4 --clips 64

Default: one JSON object with utterances/s of each variant (whole run: cluster start, model loading,
media, embed, writes), the dask speedups, time per stage (decode, MTCNN, mel, encoders, text, read,
write; summed over workers), peak RSS per worker, and the largest difference between the dask features
and the loop's (they must agree). The loop is the fair baseline: no dask, MTCNN, the encoders and the
text model built ONCE, then clip by clip (media, encoders) and dialogue by dialogue (text), as a careful
script (or MMSA-FET) does.

``--cost``: CPU seconds per clip of each stage, in this one process with one torch thread
(``time.thread_time``; a shared, loaded machine changes CPU time far less than wall time), for the
loop above and for the engine's own stage functions run in-process (media clip by clip, embedding
batched per partition of ``--partition`` utterances). ``--profile FILE`` writes a cProfile of that run.

``--scaling 1,2,...``: the media stage alone (decode + MTCNN, writes) with 1, 2, ... dask workers:
utterances/s and the speedup over 1 worker (for sizing the decode workers of a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_corpus(root: Path, clips: int, size: tuple[int, int], duration: float) -> Path:
    """A dev-split MELD tree of ``clips`` clean clips (4 per dialogue)."""
    from pipeline.testing.meld_tree import make_meld_tree

    return make_meld_tree(
        root,
        n_dialogues=-(-clips // 4),
        utterances_per_dialogue=4,
        splits=("dev",),
        traps=False,
        size=size,
        duration=duration,
    )


def run_dask(root: Path, cache: Path, workers: int) -> dict:
    """One full ``run_extract`` with a fresh LocalCluster of ``workers`` processes."""
    from pipeline.extract import ExtractOptions, run_extract
    from pipeline.text.embedder import DEFAULT_TEXT_MODEL

    opts = ExtractOptions(
        "meld",
        root,
        splits=("dev",),
        workers=workers,
        cache=cache,
        encoders="random",
        text_model=DEFAULT_TEXT_MODEL,
    )
    t, cpu = time.perf_counter(), time.process_time()
    res = run_extract(opts)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    n = sum(s.total for s in res.summary.values())
    return {
        "utterances": n,
        "wall_s": round(wall, 2),
        "utt_per_s": round(n / wall, 3),
        "driver_cpu_s": round(cpu, 2),
        "driver_cpu_share_of_wall": round(cpu / wall, 3),
        "stage_wall_s": {k: round(v, 2) for k, v in res.seconds.items()},
        "stage_work_s": {k: round(v, 2) for k, v in sorted(res.work.items())},
        "peak_rss_mb_per_worker": sorted(round(w["peak_rss_mb"]) for w in res.workers.values()),
        "features": str(res.features),
    }


def dev_utterances(root: Path, cache: Path) -> list:
    """The dev split's utterances of the corpus at ``root`` (manifest cached under ``cache``)."""
    from pipeline.extract.stage_prepare import load_manifest
    from pipeline.store.layout import CacheLayout

    return [u for u in load_manifest(CacheLayout(cache, "meld"), root)[1] if u.split == "dev"]


class _TimedDetector:
    """A face detector whose ``detect`` time goes to the clock's ``mtcnn``."""

    def __init__(self, detector, clock):
        self.detector, self.clock = detector, clock

    def detect(self, frames):
        return self.clock.timed("mtcnn", self.detector.detect, frames)


def _media(utts: list, cfg, detector, clock) -> list[dict]:
    """Media rows clip by clip; ``decode`` = the media stage's time less MTCNN's."""
    from pipeline.utterance.process import process_utterance

    rows = []
    for u in utts:
        before = clock.seconds.get("mtcnn", 0.0)
        t = clock.timer()
        rows.append(process_utterance(u, cfg, _TimedDetector(detector, clock))[0])
        clock.add("decode", clock.timer() - t - (clock.seconds.get("mtcnn", 0.0) - before))
    return rows


def _text(text_model, utts: list, clock) -> dict[str, np.ndarray]:
    """Text vectors of whole dialogues ``utts`` by utterance id."""
    from pipeline.utterance.embed import text_embeddings

    emb, _ = clock.timed("text", text_embeddings, text_model, utts)
    return {u.id: v for u, v in zip(utts, emb, strict=True)}


def _embed(rows: list[dict], text: dict[str, np.ndarray], encs, cfg, batch: int, clock) -> np.ndarray:
    """``[text | audio | visual]`` of ``rows`` (each encoder over all of them in one call)."""
    from pipeline.utterance.embed import FrontTimer, encode_waveforms, visual_embeddings

    waves = [r["waveform"] if r["has_audio"] else np.zeros(0, np.float32) for r in rows]
    timer = FrontTimer(encs.audio, clock)
    try:
        audio = clock.timed("encoders", encode_waveforms, encs.audio, waves, batch)
    finally:
        timer.remove()
    visual, _, _ = visual_embeddings(encs.face, encs.scene, rows, cfg.n_frames, batch, clock=clock)
    return np.concatenate([np.stack([text[r["utt_id"]] for r in rows]), audio, visual], axis=1)


def _load_models(cfg, clock):
    import torch

    from pipeline.encoders.checkpoint import load_encoder_set
    from pipeline.text.embedder import DEFAULT_TEXT_MODEL, TextEmbedder
    from pipeline.utterance.process import FaceDetector

    torch.set_num_threads(1)
    detector = clock.timed("load", FaceDetector, cfg)
    encs = clock.timed("load", load_encoder_set, "random")  # as the engine's workers build them
    text_model = clock.timed("load", TextEmbedder, DEFAULT_TEXT_MODEL)
    return detector, encs, text_model


def run_loop(utts: list, clock=None, batch: int = 32) -> tuple[dict, dict[str, np.ndarray]]:
    """The fair baseline: models built once, then clip by clip; text once per dialogue. No dask."""
    from pipeline.manifest import group_dialogues
    from pipeline.utterance.embed import StageClock
    from pipeline.utterance.process import MediaConfig

    cfg = MediaConfig()
    clock = clock or StageClock()
    t = time.perf_counter()
    detector, encs, text_model = _load_models(cfg, clock)
    out: dict[str, np.ndarray] = {}
    for dia in group_dialogues(utts):
        text = _text(text_model, list(dia.utterances), clock)  # context needs the whole dialogue
        for u in dia.utterances:
            out[u.id] = _embed(_media([u], cfg, detector, clock), text, encs, cfg, batch, clock)[0]
    return _stats(utts, clock, time.perf_counter() - t), out


def run_stages(utts: list, clock=None, partition_size: int = 16, batch: int = 32) -> tuple[dict, dict]:
    """The engine's stage functions in-process: media clip by clip, embedding batched per partition."""
    from pipeline.extract.engine import partition
    from pipeline.utterance.embed import StageClock
    from pipeline.utterance.process import MediaConfig

    cfg = MediaConfig()
    clock = clock or StageClock()
    t = time.perf_counter()
    detector, encs, text_model = _load_models(cfg, clock)
    out: dict[str, np.ndarray] = {}
    for part in partition(utts, partition_size):
        rows = _media(part, cfg, detector, clock)
        text = _text(text_model, part, clock)
        for u, v in zip(part, _embed(rows, text, encs, cfg, batch, clock), strict=True):
            out[u.id] = v
    return _stats(utts, clock, time.perf_counter() - t), out


def _stats(utts: list, clock, wall: float) -> dict:
    n = len(utts)
    if "mel" in clock.seconds:  # encoders' time excludes the log-mel measured inside it
        clock.seconds["encoders"] -= clock.seconds["mel"]
    per_clip = {k: round(v / n, 4) for k, v in sorted(clock.seconds.items()) if k != "load"}
    return {
        "utterances": n,
        "wall_s": round(wall, 2),
        "utt_per_s": round(n / wall, 3),
        "stage_work_s": {k: round(v, 2) for k, v in sorted(clock.seconds.items())},
        "per_clip_s": per_clip,
        "per_clip_total_s": round(sum(per_clip.values()), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_cost(utts: list, partition_size: int, profile: Path | None) -> dict:
    """CPU seconds per clip per stage (``time.thread_time``, one torch thread) of the loop and the stages."""
    from pipeline.utterance.embed import StageClock

    loop, vec_loop = run_loop(utts, StageClock(timer=time.thread_time))
    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    stages, vec_stages = run_stages(utts, StageClock(timer=time.thread_time), partition_size)
    if prof is not None:
        prof.disable()
        prof.dump_stats(str(profile))
    diff = max(float(np.abs(vec_loop[k] - vec_stages[k]).max()) for k in vec_loop)
    return {"loop_models_once": loop, "stages_in_process": stages, "max_abs_diff_loop_vs_stages": diff}


def _warm_worker() -> None:
    """Import what the media task imports (first-task cost; a cold import compiles modules)."""
    import facenet_pytorch  # noqa: F401

    import pipeline.utterance.process  # noqa: F401


def run_scaling(root: Path, work: Path, counts: list[int]) -> dict:
    """The media stage alone with each worker count in ``counts``: utterances/s and speedup."""
    from pipeline.extract.engine import Engine
    from pipeline.extract.options import ExtractOptions, ExtractResult
    from pipeline.extract.stage_media import media_config_dict, media_key, stage_media

    out = {}
    for k in counts:
        opts = ExtractOptions("meld", root, splits=("dev",), workers=k, cache=work / f"scale{k}")
        utts = dev_utterances(root, opts.cache)
        cfg = media_config_dict(None)
        engine = Engine(opts)
        try:
            t = time.perf_counter()
            engine.n_workers()  # cluster start and the workers' imports are not media work
            engine.client.run(_warm_worker)
            warm = time.perf_counter() - t
            res = ExtractResult(features=Path(), manifest=Path(), media=None, summary={})
            t = time.perf_counter()
            stage_media(engine, opts, utts, cfg, media_key(cfg, utts), res)
            wall = time.perf_counter() - t
        finally:
            engine.close()
        out[f"{k}_workers"] = {
            "utterances": len(utts),
            "start_and_warm_s": round(warm, 2),
            "wall_s": round(wall, 2),
            "utt_per_s": round(len(utts) / wall, 3),
            "stage_work_s": {n: round(v, 2) for n, v in sorted(res.work.items())},
        }
    base = out[f"{counts[0]}_workers"]["utt_per_s"]
    for v in out.values():
        v["speedup_vs_first"] = round(v["utt_per_s"] / base, 2)
    return out


def max_diff(features: Path, naive: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between the dask features and the loop's vectors."""
    from pipeline.store.features import read_split

    a = read_split(features, "dev")
    got = np.concatenate([a.text_emb, a.audio_emb, a.visual_emb], axis=1)
    want = np.stack([naive[u] for u in a.utt_id])
    return float(np.abs(got - want).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=52)
    p.add_argument("--size", default="320x240", help="clip frame size WxH (MELD: 1280x720)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per clip")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir, removed)")
    p.add_argument("--cost", action="store_true", help="CPU seconds per clip per stage, no dask")
    p.add_argument("--partition", type=int, default=16, help="utterances per partition (--cost)")
    p.add_argument("--profile", type=Path, default=None, help="cProfile output of the --cost stages run")
    p.add_argument("--scaling", default=None, help="media stage alone with these worker counts, e.g. 1,2,4")
    p.add_argument("--one-worker", action="store_true", help="only the 1-worker dask run (overhead)")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    work = args.out or Path(tempfile.mkdtemp(prefix="m2f-bench-"))
    try:
        root = work / "corpus"
        t = time.perf_counter()
        if not root.exists():
            make_corpus(root, args.clips, size, args.duration)
        corpus = {
            "clips": args.clips,
            "size": list(size),
            "seconds_per_clip": args.duration,
            "generate_s": round(time.perf_counter() - t, 1),
        }
        load = {"cpu_count": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
        if args.cost:
            result = {
                "corpus": corpus,
                **load,
                **run_cost(dev_utterances(root, work / "cache0"), args.partition, args.profile),
            }
        elif args.scaling:
            result = {
                "corpus": corpus,
                **load,
                "media_scaling": run_scaling(root, work, [int(k) for k in args.scaling.split(",")]),
            }
        else:
            one = run_dask(root, work / "cache1", 1)
            if args.one_worker:
                print(json.dumps({"corpus": corpus, **load, "dask_1_worker": one}, indent=1))
                return
            two = run_dask(root, work / "cache2", 2)
            loop, vectors = run_loop(dev_utterances(root, work / "cache2"))
            result = {
                "corpus": corpus,
                **load,
                "dask_1_worker": one,
                "dask_2_workers": two,
                "loop_models_once": loop,
                "speedup_2w_vs_1w": round(two["utt_per_s"] / one["utt_per_s"], 2),
                "speedup_2w_vs_loop": round(two["utt_per_s"] / loop["utt_per_s"], 2),
                "max_abs_diff_dask_vs_loop": max_diff(Path(two["features"]), vectors),
            }
        result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=1))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
