"""``kill -9`` of a whole ``m2f extract`` run (driver, scheduler and workers) at a random moment, then the
same command again: it completes, recomputes nothing that was written, and equals an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.store.cache import ShardedWriter
from pipeline.store.features import read_split, validate_features
from pipeline.testing.meld_tree import make_meld_tree
from pipeline.text.embedder import DEFAULT_TEXT_MODEL

M2F = [sys.executable, "-c", "import cli; cli.main()"]
KILL_SEED = int(os.environ.get("M2F_KILL_SEED", "0"))


def _command(root: Path, cache: Path) -> list[str]:
    return M2F + [
        "extract",
        "--dataset",
        "meld",
        "--root",
        str(root),
        "--cache",
        str(cache),
        "--splits",
        "dev",
        "--encoders",
        "random",
        "--text-model",
        DEFAULT_TEXT_MODEL,
        "--workers",
        "2",
        "--partition-size",
        "1",
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _shards(cache: Path) -> list[Path]:
    return list(cache.glob("meld/*/*.h5.shards/*.h5"))


def _kill_mid_run(cmd: list[str], cache: Path, rng: random.Random) -> None:
    """Start the run in its own process group; once a shard is written, wait a random moment, kill all."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not _shards(cache) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 4.0))
    assert proc.poll() is None, "the run finished before it could be killed; make the corpus bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(100):  # the workers die with their group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)


def _written(cache: Path, name: str) -> set[str]:
    """Ids in the finished file ``name`` and its shards, wherever under ``cache/meld`` they are."""
    done: set[str] = set()
    folders = {p.parent for pattern in (name, name + ".shards") for p in cache.glob(f"meld/*/{pattern}")}
    for folder in folders:
        done |= ShardedWriter(folder / name).done_ids()
    return done


def _resumed_count(stderr: str, stage: str, total: int) -> int:
    if re.search(rf"^{stage}: complete", stderr, re.M):
        return total
    m = re.search(rf"^{stage}: (\d+) of (\d+) utterances already written", stderr, re.M)
    assert m, stderr[-2000:]
    assert int(m[2]) == total
    return int(m[1])


def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path, dask_cli_cluster):
    root = make_meld_tree(
        tmp_path / "corpus",
        n_dialogues=4,
        utterances_per_dialogue=3,
        splits=("dev",),
        size=(128, 96),
        duration=1.0,
    )
    # the uninterrupted run, on the session's warm cluster (the killed run and its rerun start their own)
    reference = _run(_command(root, tmp_path / "ref") + dask_cli_cluster.cli_args())
    ref_path = Path(reference.stdout.strip().splitlines()[-1])
    n = len(read_split(ref_path, "dev"))

    cache = tmp_path / "cache"
    _kill_mid_run(_command(root, cache), cache, random.Random(KILL_SEED))
    media_done = _written(cache, "media.h5")
    feature_done = _written(cache, "features.h5")
    assert media_done or feature_done, "nothing was written before the kill"

    again = _run(_command(root, cache))
    path = Path(again.stdout.strip().splitlines()[-1])  # the last line is the features path
    assert path.relative_to(cache) == ref_path.relative_to(tmp_path / "ref")
    assert _resumed_count(again.stderr, "media", n) == len(media_done)  # nothing written is redone
    assert _resumed_count(again.stderr, "features", n) == len(feature_done)
    assert validate_features(path) == []
    a, b = read_split(ref_path, "dev"), read_split(path, "dev")
    assert list(a.utt_id) == list(b.utt_id)
    for k in ("text_emb", "audio_emb", "visual_emb", "has_text", "has_audio", "has_visual", "has_face"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), atol=1e-6, err_msg=k)
    assert not _shards(cache) and not list(cache.rglob("*.tmp"))
