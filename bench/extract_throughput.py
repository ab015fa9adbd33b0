"""Throughput of ``m2f extract``: 1 vs 2 dask workers vs a naive loop, on a generated corpus.

Run from the repository root (takes a few minutes on 2 cores)::

    .venv/bin/python bench/extract_throughput.py [--clips 52] [--size 320x240] [--out DIR]

Prints one JSON object: utterances/s of each variant (whole run: cluster start, model loading, media,
embed, writes), the dask speedups, time per stage (decode, MTCNN, mel, encoders, text, read, write;
summed over workers), peak RSS per worker, and the largest difference between the dask features and
the naive loop's (they must agree). The naive loop does one clip at a time with no dask, building
MTCNN, the encoders and the text model for every item, as typical research scripts do.
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
    from pipeline.testing.meld import make_meld_tree

    return make_meld_tree(root, n_dialogues=-(-clips // 4), utterances_per_dialogue=4, splits=("dev",),
                          traps=False, size=size, duration=duration)


def run_dask(root: Path, cache: Path, workers: int) -> dict:
    """One full ``run_extract`` with a fresh LocalCluster of ``workers`` processes."""
    from pipeline.extract import ExtractOptions, run_extract
    from pipeline.modalities.text import DEFAULT_TEXT_MODEL

    opts = ExtractOptions("meld", root, splits=("dev",), workers=workers, cache=cache, encoders="random",
                          text_model=DEFAULT_TEXT_MODEL)
    t = time.perf_counter()
    res = run_extract(opts)
    wall = time.perf_counter() - t
    n = sum(s.total for s in res.summary.values())
    return {"utterances": n, "wall_s": round(wall, 2), "utt_per_s": round(n / wall, 3),
            "stage_wall_s": {k: round(v, 2) for k, v in res.seconds.items()},
            "stage_work_s": {k: round(v, 2) for k, v in sorted(res.work.items())},
            "peak_rss_mb_per_worker": sorted(round(w["peak_rss_mb"]) for w in res.workers.values()),
            "features": str(res.features)}


def run_naive(manifest_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """One clip at a time, every model built per item, no dask. Returns stats and the vectors."""
    import torch

    from pipeline.embed import StageClock, encode_waveforms, text_embeddings, visual_embeddings
    from pipeline.encoders.model import load_encoder_set
    from pipeline.manifest import group_dialogues, read_jsonl
    from pipeline.media import FaceDetector, MediaConfig, process_utterance
    from pipeline.modalities.text import DEFAULT_TEXT_MODEL, TextEmbedder

    torch.set_num_threads(1)
    utts = [u for u in read_jsonl(manifest_path) if u.split == "dev"]
    dialogues = {d.dialogue_id: d for d in group_dialogues(utts)}
    cfg = MediaConfig()
    clock = StageClock()
    out: dict[str, np.ndarray] = {}
    t = time.perf_counter()
    for u in utts:
        detector = clock.timed("load", FaceDetector, cfg)
        row, _ = clock.timed("media", process_utterance, u, cfg, detector)
        encs = clock.timed("load", load_encoder_set, "random")
        text_model = clock.timed("load", TextEmbedder, DEFAULT_TEXT_MODEL)
        dia = list(dialogues[u.dialogue_id].utterances)
        txt, _ = clock.timed("text", text_embeddings, text_model, dia)
        wave = row["waveform"] if row["has_audio"] else np.zeros(0, np.float32)
        audio = clock.timed("encoders", encode_waveforms, encs.audio, [wave], 1)
        visual, _, _ = visual_embeddings(encs.face, encs.scene, [row], cfg.n_frames, 32, clock=clock)
        out[u.id] = np.concatenate([txt[[x.id for x in dia].index(u.id)], audio[0], visual[0]])
    wall = time.perf_counter() - t
    stats = {"utterances": len(utts), "wall_s": round(wall, 2), "utt_per_s": round(len(utts) / wall, 3),
             "stage_work_s": {k: round(v, 2) for k, v in sorted(clock.seconds.items())},
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    return stats, out


def max_diff(features: Path, naive: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between the dask features and the naive loop's vectors."""
    from pipeline.cache import read_split

    a = read_split(features, "dev")
    got = np.concatenate([a.text_emb, a.audio_emb, a.visual_emb], axis=1)
    want = np.stack([naive[u] for u in a.utt_id])
    return float(np.abs(got - want).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=52)
    p.add_argument("--size", default="320x240", help="clip frame size WxH")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per clip")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir, removed)")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    work = args.out or Path(tempfile.mkdtemp(prefix="m2f-bench-"))
    try:
        t = time.perf_counter()
        root = make_corpus(work / "corpus", args.clips, size, args.duration)
        gen_s = time.perf_counter() - t
        one = run_dask(root, work / "cache1", 1)
        two = run_dask(root, work / "cache2", 2)
        from pipeline.layout import CacheLayout

        naive, vectors = run_naive(CacheLayout(work / "cache2", "meld").manifest(root))
        result = {
            "corpus": {"clips": one["utterances"], "size": list(size), "seconds_per_clip": args.duration,
                       "generate_s": round(gen_s, 1)},
            "cpu_count": os.cpu_count(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            "dask_1_worker": one, "dask_2_workers": two, "naive_loop": naive,
            "speedup_2w_vs_1w": round(two["utt_per_s"] / one["utt_per_s"], 2),
            "speedup_2w_vs_naive": round(two["utt_per_s"] / naive["utt_per_s"], 2),
            "max_abs_diff_dask_vs_naive": max_diff(Path(two["features"]), vectors),
        }
        print(json.dumps(result, indent=1))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
