"""The prepared GPU check: every CUDA-only measurement in one go, written to ONE JSON file.

Run through ``bench/gpu_check.sh OUT_DIR [--cpu-smoke]`` (which installs the carried wheels first on
the GPU machine). Steps, each a subprocess with its own time limit so that one failure or hang does not
lose the others:

1. ``pytest -m gpu`` (the CUDA tests; the text model is a tiny random RoBERTa);
2. ``bench/train_throughput.py --device cuda`` and with ``--compile``;
3. ``bench/encoder_train_throughput.py --device cuda``;
4. ``m2f extract --device cuda`` (workers: cores minus one, sharing the GPU) on a generated MELD-shaped
   corpus of 1280x720, 3 s clips (MELD's resolution and typical length), random encoders and a tiny
   random text model, timed.

``--cpu-smoke`` runs the same steps on CPU at tiny sizes (tests/integration/test_gpu_check_smoke.py),
so the script cannot rot; compile is skipped there (inductor on 2 cores takes minutes).

Usage::

    python bench/gpu_check.py OUT_DIR [--cpu-smoke]

Writes ``OUT_DIR/gpu_check.json``: ``{"mode", "env", "steps": {name: {"rc", "wall_s", "limit_s",
"result" or "tail"}}, "total_s"}``; its path is the last line printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: (n_dialogues per split, utterances per dialogue, seconds, (width, height))
FULL_CORPUS = (10, 10, 3.0, (1280, 720))
SMOKE_CORPUS = (1, 2, 1.0, (160, 120))
#: per step in smoke mode: generous, for a busy shared machine (a quiet 2-core one needs far less)
SMOKE_LIMIT_S = 300


def environment() -> dict:
    """Versions, devices and which of m2f's imports are missing here."""
    import importlib.util

    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["missing_imports"] = [
        m
        for m in (
            "av",
            "dask",
            "distributed",
            "facenet_pytorch",
            "soxr",
            "sklearn",
            "skimage",
            "h5py",
            "cv2",
            "transformers",
            "click",
        )
        if importlib.util.find_spec(m) is None
    ]
    return info


def run_step(cmd: list[str], limit_s: int, parse: str | None = None) -> dict:
    """Run ``cmd`` in the repository; ``result`` is its JSON output (``parse``: "stdout" or "last_line").

    Without a parsed result (or on failure) the ends of its stdout and stderr are kept instead.
    """
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", _text(e.stdout), _text(e.stderr)
    step = {
        "cmd": " ".join(cmd),
        "rc": rc,
        "wall_s": round(time.perf_counter() - started, 1),
        "limit_s": limit_s,
    }
    if rc == 0 and parse in ("stdout", "last_line"):
        try:
            step["result"] = json.loads(out if parse == "stdout" else out.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            step["parse_error"] = str(e)
    if "result" not in step:
        step["stdout_tail"], step["stderr_tail"] = out[-3000:], err[-3000:]
    return step


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _make_unique_clips(args: tuple) -> None:
    from pipeline.testing.meld_tree import make_meld_tree

    root, split, n_clips, seconds, size, seed = args
    make_meld_tree(
        root,
        n_dialogues=1,
        utterances_per_dialogue=n_clips,
        splits=(split,),
        layout="flat",
        traps=False,
        duration=seconds,
        size=size,
        seed=seed,
    )


def make_corpus(root: Path, spec: tuple, unique_per_split: int) -> dict:
    """A MELD tree (flat layout): real CSVs, every row's clip a copy of one of a few distinct clips.

    Encoding 720p clips costs seconds each; a few distinct ones, made in parallel and copied under
    every utterance's name, give the same decoding and embedding work.
    """
    import csv
    import shutil

    from pipeline.testing.meld_tree import MELD_CLIP_DIRS, make_meld_tree

    n_dialogues, per_dialogue, seconds, size = spec
    started = time.perf_counter()
    make_meld_tree(
        root,
        n_dialogues=n_dialogues,
        utterances_per_dialogue=per_dialogue,
        clips=False,
        layout="flat",
        traps=False,
        seed=0,
    )
    unique = root.parent / "unique"
    jobs = [
        (unique / f"{split}{k}", split, unique_per_split, seconds, size, k)
        for split in ("train", "dev", "test")
        for k in range(2)
    ]
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
        list(pool.map(_make_unique_clips, jobs))
    n = 0
    for split, folder in MELD_CLIP_DIRS.items():
        sources = sorted((unique / f"{split}0" / folder).glob("*.mp4")) + sorted(
            (unique / f"{split}1" / folder).glob("*.mp4")
        )
        (root / folder).mkdir(exist_ok=True)
        with open(root / f"{split}_sent_emo.csv", encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                dest = root / folder / f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4"
                shutil.copyfile(sources[i % len(sources)], dest)
                n += 1
    return {
        "clips": n,
        "distinct_clips": 6 * unique_per_split,
        "seconds_per_clip": seconds,
        "size": list(size),
        "generate_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (a test runs this)")
    args = ap.parse_args()
    smoke = args.cpu_smoke
    out_dir = args.out_dir.resolve()
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    device = "cpu" if smoke else "cuda"
    started = time.perf_counter()
    report: dict = {"mode": "cpu-smoke" if smoke else "gpu", "env": environment(), "steps": {}}
    steps = report["steps"]

    def save() -> Path:
        report["total_s"] = round(time.perf_counter() - started, 1)
        path = out_dir / "gpu_check.json"
        path.write_text(json.dumps(report, indent=2))
        return path

    # 1. the CUDA tests (smoke: one file's, all skipped without CUDA: the command itself is checked)
    where = (
        ["tests/trainer/dialogue/test_trainer_fit.py"]
        if smoke
        else ["tests/pipeline", "tests/trainer", "tests/integration"]
    )
    steps["pytest_gpu"] = run_step(
        [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *where],
        SMOKE_LIMIT_S if smoke else 120,
    )
    save()
    # 2. dialogue training throughput
    tt = [py, "bench/train_throughput.py", "--device", device]
    if smoke:
        tt += ["--cpu-batches", "1", "--max-dialogues", "16"]  # one batch of 16 dialogues
    steps["train_throughput"] = run_step(tt, SMOKE_LIMIT_S if smoke else 60, parse="stdout")
    save()
    if smoke:
        steps["train_throughput_compile"] = {"skipped": "compile is not run in cpu-smoke mode"}
    else:
        steps["train_throughput_compile"] = run_step(tt + ["--compile"], 90, parse="stdout")
    save()
    # 3. encoder training throughput (a warm-up epoch on the same loader first)
    et = [py, "bench/encoder_train_throughput.py", "--device", device]
    et += (
        ["--batch-size", "8", "--steps", "1", "--audio-seconds", "0.5", "--modalities", "audio,face"]
        if smoke
        else ["--steps", "10"]
    )
    steps["encoder_train_throughput"] = run_step(et, SMOKE_LIMIT_S if smoke else 60, parse="last_line")
    save()
    # 4. extract on a MELD-shaped corpus
    corpus = work / "meld"
    try:
        info = make_corpus(corpus, SMOKE_CORPUS if smoke else FULL_CORPUS, 1 if smoke else 2)
        from pipeline.testing.text_model import make_tiny_roberta

        text_model = make_tiny_roberta(work / "tiny_roberta")
    except Exception as e:  # noqa: BLE001 - recorded, the other steps' results are kept
        steps["extract"] = {"rc": "corpus", "error": f"{type(e).__name__}: {e}"}
        print(save())
        return
    cmd = [
        py,
        "-m",
        "cli",
        "extract",
        "--dataset",
        "meld",
        "--root",
        str(corpus),
        "--device",
        device,
        "--encoders",
        "random",
        "--text-model",
        str(text_model),
        "--cache",
        str(work / "cache"),
    ]
    if smoke:
        cmd += ["--workers", "1"]
    step = run_step(cmd, SMOKE_LIMIT_S if smoke else 150)
    step["corpus"] = info
    if step["rc"] == 0:
        step["clips_per_s"] = round(info["clips"] / step["wall_s"], 2)
        step["features"] = step["stdout_tail"].strip().splitlines()[-1]
    steps["extract"] = step
    print(save())


if __name__ == "__main__":
    main()
