"""Live latency: from an utterance's end to its prediction, warm, on this machine; prints one JSON object.

Models: the sample corpus extracted with seeded random encoders and a copy of the shipped MiniLM marked
as fine-tuned with the past-only context (``m2f_text.json``), then a causal dialogue model per input
(text; text + audio; text + audio + visual) trained for one epoch and exported into ``--workdir``.
Latency depends on the architecture (MiniLM, ResNet18 encoders, 15 frames, MTCNN), not on the weights.

Clips: ``--clip-seconds`` long, ``--size`` (default 1280x720), generated with a face, an utterance each.
Each input gets ``--utterances`` added to one conversation through :class:`trainer.apply.live.LiveModel`
(the first ``--warmup`` not counted); the latency of one is the time ``Conversation.add`` takes, which
is the time from the utterance's end (its clip complete) to its prediction. Also CPU seconds per
utterance (this process, every thread).

``--replay-minutes M`` replays a generated conversation of M minutes (one utterance per clip length,
cues back to back) through ``m2f live --replay`` at real pace and reports its lags (a backlog grows
when the median lag of the second half exceeds the first half's by over 0.5 s). ``--server-minutes M``
holds 4 conversations of one utterance every ``--server-every`` seconds each against ``m2f serve`` on
loopback and reports the request latencies and the server's RSS after warm-up and at the end.

Usage::

    python bench/live_latency.py [--utterances 30] [--size 1280x720] [--replay-minutes 0] [--server-minutes 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

INPUTS = {"text": "t", "text+audio": "ta", "text+audio+visual": "tav"}
TEXTS = [
    "I can't believe you did that!",
    "Oh, come on, it was nothing.",
    "Nothing? You call that nothing?",
    "Fine, I'm sorry, okay?",
    "Whatever. Let's just go.",
    "Wait, are you crying?",
]


def build_models(workdir: Path) -> dict[str, Path]:
    """One exported causal model per input (built once into ``workdir``)."""
    from pipeline.extract import ExtractOptions, run_extract
    from pipeline.text.embedder import DEFAULT_TEXT_MODEL
    from trainer.apply.export import export_model
    from trainer.dialogue.fit import DialogueTrainConfig, train_dialogue

    out = {name: workdir / f"model-{letters}" for name, letters in INPUTS.items()}
    if all((m / "checksums.json").exists() for m in out.values()):
        return out
    text = workdir / "minilm-past"
    if not text.exists():
        shutil.copytree(DEFAULT_TEXT_MODEL, text)
        (text / "m2f_text.json").write_text(
            json.dumps({"config": {"max_length": 64, "pooling": "mean", "context": "past"}})
        )
    result = run_extract(
        ExtractOptions(
            dataset="sample",
            root=None,
            cache=workdir / "cache",
            encoders="random",
            text_model=str(text),
            workers=1,
        )
    )
    for name, letters in INPUTS.items():
        run = workdir / f"run-{letters}"
        if not (run / "seed0" / "status.json").exists():
            train_dialogue(
                DialogueTrainConfig(
                    features=str(result.features),
                    out=str(run),
                    modalities=letters,
                    epochs=1,
                    causal=True,
                    progress=False,
                )
            )
        export_model(run, out[name], text_model=str(text), overwrite=True)
    return out


def build_clips(workdir: Path, n: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    from pipeline.testing.av_files import write_clip

    folder = workdir / f"clips-{size[0]}x{size[1]}-{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        path = folder / f"u{i}.mp4"
        if not path.exists():
            write_clip(
                path,
                duration=seconds,
                size=size,
                face_pos=(0.35 + 0.3 * (i % 2), 0.5),
                seed=i,
                tone_hz=180.0 + 40 * (i % 4),
            )
        clips.append(path)
    return clips


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {
        "n": len(a),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def time_inputs(models: dict[str, Path], clips: list[Path], n: int, warmup: int) -> dict:
    from trainer.apply.live import LiveModel

    out = {}
    for name, folder in models.items():
        with LiveModel.load(folder) as model:
            talk = model.conversation(name)
            lat, cpu = [], []
            for i in range(warmup + n):
                clip = clips[i % len(clips)] if name != "text" else None
                c0, t0 = _cpu(), time.perf_counter()
                p = talk.add(speaker="Ann" if i % 2 else "Bob", text=TEXTS[i % len(TEXTS)], clip=clip)
                dt, dc = time.perf_counter() - t0, _cpu() - c0
                if clip is not None:
                    assert p.present["audio"], p.problems
                if i >= warmup:
                    lat.append(dt)
                    cpu.append(dc)
            out[name] = {"latency_s": _stats(lat), "cpu_s_per_utterance": float(np.mean(cpu))}
            print(
                f"[live_latency] {name}: p50 {out[name]['latency_s']['p50']:.3f} s, "
                f"p95 {out[name]['latency_s']['p95']:.3f} s",
                file=sys.stderr,
                flush=True,
            )
    return out


def m2f() -> list[str]:
    return [sys.executable, "-m", "cli"]


def replay(model: Path, clips: list[Path], minutes: float, seconds: float, workdir: Path) -> dict:
    """``m2f live --replay`` of a generated conversation of ``minutes``: one clip per cue, back to back."""
    from pipeline.corpora.subtitles import Cue, write_srt
    from trainer.demo.corpus import join_clips

    n = max(2, int(minutes * 60 / seconds))
    video, srt = workdir / f"replay-{n}.mp4", workdir / f"replay-{n}.srt"
    if not video.exists():
        spans = join_clips([str(clips[i % len(clips)]) for i in range(n)], video)
        write_srt(
            srt,
            [Cue(s, e, "Ann" if i % 2 else "Bob", TEXTS[i % len(TEXTS)]) for i, (s, e) in enumerate(spans)],
        )
    cmd = [*m2f(), "live", "--model", str(model), "--replay", str(video), "--subtitles", str(srt)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lags = [json.loads(x)["lag_s"] for x in res.stdout.splitlines()]
    half = len(lags) // 2
    return {
        "utterances": len(lags),
        "minutes": minutes,
        "lag_s": _stats(lags),
        "median_lag_first_half": float(np.median(lags[:half])),
        "median_lag_second_half": float(np.median(lags[half:])),
        "backlog_grew": bool(np.median(lags[half:]) > np.median(lags[:half]) + 0.5),
    }


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def per_minute(
    lat: list[tuple[float, float, float]], loads: list[tuple[float, float]], minutes: float
) -> list:
    """Latency p50/p95, the server's own time p50 and the highest 1-minute load, minute by minute (so a
    slow hold shows whether it was slow from its start, or fell behind when the machine got busy)."""
    rows = []
    for k in range(int(np.ceil(minutes))):
        xs = [(x, s) for t, x, s in lat if k * 60 <= t < (k + 1) * 60]
        ls = [v for t, v in loads if k * 60 <= t < (k + 1) * 60]
        if xs:
            a, b = np.array([x for x, _ in xs]), np.array([s for _, s in xs])
            rows.append(
                {
                    "minute": k,
                    "n": len(xs),
                    "p50": round(float(np.percentile(a, 50)), 3),
                    "p95": round(float(np.percentile(a, 95)), 3),
                    "server_p50": round(float(np.percentile(b, 50)), 3),
                    "load_max": max(ls) if ls else None,
                }
            )
    return rows


def server(model: Path, clips: list[Path], minutes: float, every: float, conversations: int = 4) -> dict:
    """``m2f serve`` on loopback; ``conversations`` clients each posting one utterance every ``every`` s."""
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*m2f(), "serve", "--model", str(model), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("m2f serve did not start")
        lat: list[tuple[float, float, float]] = []  # (time since start, latency, server's own seconds)
        loads: list[tuple[float, float]] = []  # (time since start, 1-minute load average)
        t_start = time.monotonic()
        stop = t_start + minutes * 60
        warm_rss: list[float] = []

        def client(k: int) -> None:
            i = 0
            next_at = t_start + k * every / conversations
            while next_at < stop:
                time.sleep(max(0.0, next_at - time.monotonic()))
                clip = clips[(i + k) % len(clips)]
                t0 = time.monotonic()
                with open(clip, "rb") as f:
                    r = requests.post(
                        f"{url}/v1/conversations/c{k}/utterances",
                        timeout=120,
                        data={"speaker": "Ann" if i % 2 else "Bob", "text": TEXTS[i % len(TEXTS)]},
                        files={"clip": (clip.name, f, "video/mp4")},
                    )
                r.raise_for_status()
                lat.append((t0 - t_start, time.monotonic() - t0, float(r.json()["seconds"])))
                i += 1
                next_at += every

        threads = [threading.Thread(target=client, args=(k,)) for k in range(conversations)]
        for t in threads:
            t.start()
        time.sleep(min(60.0, minutes * 60 / 4))
        warm_rss.append(_rss_mb(proc.pid))
        while any(t.is_alive() for t in threads):
            loads.append((time.monotonic() - t_start, _load1()))
            threads[0].join(timeout=15.0)
        for t in threads:
            t.join()
        end_rss = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "conversations": conversations,
        "every_s": every,
        "minutes": minutes,
        "requests": len(lat),
        "latency_s": _stats([x for _, x, _ in lat]),
        "server_seconds": _stats([s for _, _, s in lat]),
        "per_minute": per_minute(lat, loads, minutes),
        "rss_mb_after_warmup": warm_rss[0],
        "rss_mb_end": end_rss,
        "rss_growth": end_rss / warm_rss[0] - 1,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("cache/bench/live_latency"))
    p.add_argument("--utterances", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--size", default="1280x720")
    p.add_argument("--clip-seconds", type=float, default=3.0)
    p.add_argument("--replay-minutes", type=float, default=0.0)
    p.add_argument("--server-minutes", type=float, default=0.0)
    p.add_argument("--server-every", type=float, default=3.0)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = tuple(int(x) for x in args.size.lower().split("x"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.time()
    models = build_models(args.workdir)
    clips = build_clips(args.workdir, 6, args.clip_seconds, size)
    setup_s = time.time() - t
    out = {
        "size": args.size,
        "clip_seconds": args.clip_seconds,
        "setup_s": round(setup_s, 1),
        "inputs": time_inputs(models, clips, args.utterances, args.warmup),
    }
    if args.replay_minutes > 0:
        out["replay"] = replay(
            models["text+audio+visual"], clips, args.replay_minutes, args.clip_seconds, args.workdir
        )
    if args.server_minutes > 0:
        out["server"] = server(models["text+audio+visual"], clips, args.server_minutes, args.server_every)
    with open("/proc/loadavg") as f:
        out["loadavg_at_end"] = f.read().split()[:3]
    out["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs"
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
