"""The HDF5 feature cache: round-trip, append, done-ids, ordering, validation, and kill -9 survival."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.store.cache import FeatureWriter, ShardedWriter, config_hash
from pipeline.store.features import FEATURE_FIELDS, read_attrs, read_split, validate_features
from pipeline.store.h5rows import RowReader
from pipeline.store.locks import CacheLockedError


def _rows(ids, dims=(8, 4, 6), seed=0, dialogue="d0"):
    rng = np.random.default_rng(seed)
    n = len(ids)
    has_audio = np.array([i % 3 != 0 for i in range(n)])
    audio = rng.normal(size=(n, dims[1])).astype(np.float32)
    audio[~has_audio] = 0
    return {
        "utt_id": list(ids),
        "dialogue_id": [dialogue] * n,
        "position": list(range(n)),
        "speaker": ["Ross"] * n,
        "label": ["joy"] * (n - 1) + [None],
        "text": ["héllo ’ world"] * n,
        "text_emb": rng.normal(size=(n, dims[0])),
        "audio_emb": audio,
        "visual_emb": rng.normal(size=(n, dims[2])),
        "has_text": np.ones(n, bool),
        "has_audio": has_audio,
        "has_visual": np.ones(n, bool),
        "has_face": np.zeros(n, bool),
    }


def test_config_hash_is_stable_and_order_free(tmp_path):
    a = config_hash({"x": 1, "y": [1, 2]})
    assert a == config_hash({"y": [1, 2], "x": 1})
    assert a != config_hash({"x": 2, "y": [1, 2]})


def test_round_trip_append_and_done_ids(tmp_path):
    path = tmp_path / "features.h5"
    w = FeatureWriter(path, "meld", {"text_model": "m", "n": 1})
    w.append("train", _rows(["u0", "u1", "u2"]))
    assert w.done_ids() == {"u0", "u1", "u2"}
    w.append("train", _rows(["u3"], seed=1, dialogue="d1"))
    w.append("test", _rows(["t0", "t1"], seed=2))
    assert w.done_ids("test") == {"t0", "t1"}
    assert not path.exists()  # nothing final until finalize
    w.finalize({"train": ["u0", "u1", "u2", "u3"], "test": ["t0", "t1"]})
    assert w.is_complete() and validate_features(path) == []

    tr = read_split(path, "train")
    expected = _rows(["u0", "u1", "u2"])
    assert list(tr.utt_id) == ["u0", "u1", "u2", "u3"]
    np.testing.assert_array_equal(tr.text_emb[:3], expected["text_emb"].astype(np.float32))
    np.testing.assert_array_equal(tr.has_audio[:3], expected["has_audio"])
    assert tr.label[2] == "" and tr.text[0] == "héllo ’ world"
    assert tr.position.dtype == np.int32 and tr.text_emb.dtype == np.float32
    attrs = read_attrs(path)
    assert attrs["schema_version"] == 1 and attrs["dataset"] == "meld"
    assert attrs["config"] == {"text_model": "m", "n": 1} and "created_utc" in attrs
    # readable with plain h5py too, as the README documents
    with h5py.File(path, "r") as f:
        assert set(FEATURE_FIELDS) <= set(f["train"])
        assert f["train/text_emb"].compression == "lzf"
    with pytest.raises(KeyError, match="has no split 'dev'"):
        read_split(path, "dev")


def test_finalize_orders_rows_and_rejects_unwritten_ids(tmp_path):
    w = FeatureWriter(tmp_path / "f.h5", "meld", {})
    w.append("dev", _rows(["b", "a"]))
    with pytest.raises(ValueError, match="never written"):
        w.finalize({"dev": ["a", "b", "c"]})
    w.finalize({"dev": ["a", "b"]})
    assert list(read_split(tmp_path / "f.h5", "dev").utt_id) == ["a", "b"]


def test_rewritten_id_keeps_latest_row(tmp_path):
    w = FeatureWriter(tmp_path / "f.h5", "meld", {})
    w.append("dev", _rows(["a", "b"], seed=0))
    w.append("dev", _rows(["a"], seed=5))
    w.finalize()
    got = read_split(tmp_path / "f.h5", "dev")
    assert sorted(got.utt_id) == ["a", "b"]
    i = list(got.utt_id).index("a")
    np.testing.assert_array_equal(got.text_emb[i], _rows(["a"], seed=5)["text_emb"][0].astype(np.float32))


def test_schema_errors_are_explicit(tmp_path):
    w = FeatureWriter(tmp_path / "f.h5", "meld", {})
    bad = _rows(["a"])
    del bad["has_face"]
    with pytest.raises(ValueError, match="missing fields \\['has_face'\\]"):
        w.append("train", bad)
    bad = _rows(["a", "b"])
    bad["position"] = [0]
    with pytest.raises(ValueError, match="'position' has 1 rows"):
        w.append("train", bad)


def test_validate_finds_problems(tmp_path):
    path = tmp_path / "f.h5"
    w = FeatureWriter(path, "meld", {})
    rows = _rows(["a", "b", "c"])
    rows["audio_emb"][0] = 1.0  # has_audio is False for row 0
    rows["position"] = [0, 2, 1]
    w.append("train", rows)
    w.finalize()
    problems = validate_features(path)
    assert any("non-zero rows where has_audio is False" in p for p in problems)
    assert any("do not rise" in p for p in problems)
    assert "not a readable HDF5 file" in validate_features(tmp_path / "nope.h5")[0]


def test_ragged_rows_and_row_reader(tmp_path):
    path = tmp_path / "media.h5"
    w = ShardedWriter(path, {"kind": "media"})
    waves = [np.arange(5, dtype=np.float32), np.zeros(0, np.float32), np.ones(3, np.float32)]
    faces = [
        np.zeros((2, 3, 4, 4), np.uint8),
        np.zeros((0, 3, 4, 4), np.uint8),
        np.full((1, 3, 4, 4), 7, np.uint8),
    ]
    w.append(
        "train",
        {
            "utt_id": ["x", "y"],
            "label": ["joy", "sad"],
            "waveform": waves[:2],
            "faces": faces[:2],
            "has_audio": np.array([True, False]),
        },
    )
    w.append(
        "train",
        {
            "utt_id": ["z"],
            "label": ["neu"],
            "waveform": waves[2:],
            "faces": faces[2:],
            "has_audio": np.array([True]),
        },
    )
    w.finalize({"train": ["z", "x", "y"]})
    with RowReader(path, "train") as r:
        assert len(r) == 3 and list(r.utt_ids) == ["z", "x", "y"]
        np.testing.assert_array_equal(r.row(1, ["waveform"])["waveform"], waves[0])
        assert r.row(2)["faces"].shape == (0, 3, 4, 4)
        assert r.row(0)["faces"][0, 0, 0, 0] == 7 and r.row(0)["label"] == "neu"
        assert list(r.column("has_audio")) == [True, True, False]


N_BATCHES = 60  # batches of 50 rows the writer appends; the kills land after 20 (3 and 37: slow) of them
_KILL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from tests.pipeline.store.test_cache import _rows
    from pipeline.store.cache import FeatureWriter
    w = FeatureWriter({path!r}, "meld", {{"k": 1}})
    done = w.done_ids()
    for b in range({n}):
        ids = [f"u{{b}}_{{i}}" for i in range(50)]
        if ids[0] in done:
            continue
        w.append("train", _rows(ids, dims=(256, 64, 128), seed=b, dialogue=f"d{{b}}"))
        print(b, flush=True)
    w.finalize()
    print("FINAL", flush=True)
""")


@pytest.mark.parametrize(
    ("after", "delay"),
    [
        (20, 0.013),  # the quick part: mid-run, at an odd moment inside the writing of a shard
        pytest.param(3, 0.0, marks=pytest.mark.slow),  # early, right after a shard was announced
        pytest.param(37, 0.031, marks=pytest.mark.slow),  # late, close to the end
    ],
)
def test_survives_kill_9_while_writing(tmp_path, after, delay):
    """SIGKILL the writer mid-stream, restart: it resumes and the result equals an uninterrupted run."""
    root = str(Path(__file__).resolve().parents[3])
    path = tmp_path / "features.h5"
    script = tmp_path / "writer.py"
    script.write_text(_KILL_SCRIPT.format(root=root, path=str(path), n=N_BATCHES))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    for _ in range(after):  # wait until `after` batches are written, then kill at an odd moment
        proc.stdout.readline()
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shards_before = len(list((tmp_path / "features.h5.shards").glob("*.h5")))
    assert 0 < shards_before < N_BATCHES, "the kill should land mid-run; adjust delay"
    # every shard left behind is a complete, readable file
    for p in (tmp_path / "features.h5.shards").glob("*.h5"):
        with h5py.File(p, "r") as f:
            assert len(f["utt_id"]) == 50
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("FINAL")
    assert len(out.split()) == N_BATCHES - shards_before + 1  # nothing written before was recomputed
    assert validate_features(path) == []
    got = read_split(path, "train")
    assert len(got) == N_BATCHES * 50
    ref = _rows([f"u7_{i}" for i in range(50)], dims=(256, 64, 128), seed=7)
    i = list(got.utt_id).index("u7_0")
    np.testing.assert_array_equal(got.text_emb[i : i + 50], ref["text_emb"].astype(np.float32))
    assert json.loads(h5py.File(path, "r").attrs["config"]) == {"k": 1}


def test_unordered_finalize_streams_shards_and_keeps_latest(tmp_path):
    """Without an order, finalize copies one shard at a time (media.h5); a later row for an id wins."""
    path = tmp_path / "media.h5"
    w = ShardedWriter(path, {})
    w.append("train", {"utt_id": ["a", "b"], "wave": [np.ones(3, np.float32), np.zeros(0, np.float32)]})
    w.append("train", {"utt_id": ["c", "a"], "wave": [np.full(2, 5, np.float32), np.full(4, 7, np.float32)]})
    w.finalize()
    w.append("train", {"utt_id": ["d"], "wave": [np.ones(1, np.float32)]})
    w.finalize()  # merging into an existing final file
    with RowReader(path, "train") as r:
        assert list(r.utt_ids) == ["b", "c", "a", "d"]
        np.testing.assert_array_equal(r.row(2)["wave"], np.full(4, 7, np.float32))
        assert r.row(0)["wave"].shape == (0,)
    assert not list((tmp_path / "media.h5.shards").glob("*.h5"))


def test_a_second_live_writer_is_refused_until_the_first_closes_or_dies(tmp_path):
    path = tmp_path / "features.h5"
    first = FeatureWriter(path, "meld", {})
    with pytest.raises(CacheLockedError, match="another m2f process is writing"):
        FeatureWriter(path, "meld", {})
    first.close()
    with FeatureWriter(path, "meld", {}) as again:
        again.append("dev", _rows(["a"]))
    # a holder killed with SIGKILL releases the lock (the kernel drops flocks of dead processes)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
        from pipeline.store.cache import ShardedWriter
        w = ShardedWriter({str(path)!r})
        print("locked", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(CacheLockedError):
        ShardedWriter(path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with ShardedWriter(path) as w:
        assert w.done_ids() == {"a"}
