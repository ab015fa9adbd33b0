"""``bench/gpu_check.sh --cpu-smoke`` runs every step of the GPU check at tiny sizes on CPU, so that the
script prepared for a GPU machine cannot rot between the rare sessions that have one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke_writes_one_json_of_all_steps(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), "--cpu-smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == out / "gpu_check.json" and sorted(p.name for p in out.glob("*.json")) == ["gpu_check.json"]
    report = json.loads(path.read_text())
    assert report["mode"] == "cpu-smoke" and report["env"]["missing_imports"] == []
    steps = report["steps"]
    failed = {k: v for k, v in steps.items() if "skipped" not in v and v["rc"] != 0}
    assert not failed, json.dumps(failed, indent=1)[-4000:]
    assert steps["train_throughput"]["result"]["train_utt_per_s"] > 0
    enc = steps["encoder_train_throughput"]["result"]
    assert enc["audio"]["samples_per_s"] > 0 and enc["face"]["samples_per_s"] > 0
    ext = steps["extract"]
    assert ext["corpus"]["clips"] == 6 and Path(ext["features"]).name == "features.h5"
    assert Path(ext["features"]).exists() and ext["clips_per_s"] > 0
