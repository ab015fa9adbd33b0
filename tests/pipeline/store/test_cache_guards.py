"""The cache writers as the last guard: no non-finite number or NUL written, stale temp files removed,
free space checked before a merge, one flock helper for every folder a run writes into."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.store import cache
from pipeline.store.cache import DiskSpaceError, FeatureWriter, NonFiniteError, ShardedWriter
from pipeline.store.features import validate_features
from pipeline.store.locks import CacheLockedError, folder_lock

ROOT = Path(__file__).resolve().parents[3]


def _rows(ids, dialogue="d0"):
    n = len(ids)
    rng = np.random.default_rng(0)
    return {
        "utt_id": list(ids),
        "dialogue_id": [dialogue] * n,
        "position": list(range(n)),
        "speaker": ["Ann"] * n,
        "label": ["joy"] * n,
        "text": ["hi"] * n,
        "text_emb": rng.normal(size=(n, 8)),
        "audio_emb": rng.normal(size=(n, 4)),
        "visual_emb": rng.normal(size=(n, 6)),
        "has_text": np.ones(n, bool),
        "has_audio": np.ones(n, bool),
        "has_visual": np.ones(n, bool),
        "has_face": np.ones(n, bool),
    }


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_feature_writer_refuses_a_non_finite_embedding_naming_the_row(tmp_path, bad):
    rows = _rows(["u0", "u1", "u2"])
    rows["audio_emb"][1, 2] = bad
    with FeatureWriter(tmp_path / "features.h5", "custom", {}) as w:
        with pytest.raises(NonFiniteError, match=r"audio_emb.*'u1'.*split 'train'"):
            w.append("train", rows)
        assert w.shards() == []  # nothing written
        w.append("train", _rows(["u0"]))  # a clean batch still goes in


def test_media_writer_refuses_non_finite_float_arrays_ragged_or_not(tmp_path):
    with ShardedWriter(tmp_path / "media.h5") as w:
        wave = [np.zeros(5, np.float32), np.array([0.0, np.nan], np.float32)]
        with pytest.raises(NonFiniteError, match=r"waveform.*'b'"):
            w.append("train", {"utt_id": ["a", "b"], "waveform": wave})
        with pytest.raises(NonFiniteError, match=r"duration.*'a'"):
            w.append("train", {"utt_id": ["a"], "duration": np.array([np.inf])})
        assert w.shards() == []
        frames = [np.zeros((2, 4, 4, 3), np.uint8)]  # integer arrays cannot hold NaN: not checked
        w.append("train", {"utt_id": ["a"], "frames": frames, "waveform": [np.ones(3, np.float32)]})
        assert len(w.shards()) == 1


def test_feature_writer_refuses_a_nul_character_in_text(tmp_path):
    rows = _rows(["u0", "u1"])
    rows["text"][1] = "bad\x00text"
    with FeatureWriter(tmp_path / "features.h5", "custom", {}) as w:
        with pytest.raises(ValueError, match=r"text of 'u1'.*NUL"):
            w.append("dev", rows)


def _write_finished(path: Path) -> None:
    with FeatureWriter(path, "custom", {}) as w:
        w.append("train", _rows(["u0", "u1", "u2"]))
        w.append("dev", _rows(["v0", "v1"]))
        w.finalize()


def test_validate_features_reports_a_short_dataset_instead_of_crashing(tmp_path):
    path = tmp_path / "features.h5"
    _write_finished(path)
    with h5py.File(path, "a") as f:
        del f["train/position"]
        f["train/position"] = np.arange(2, dtype=np.int32)  # one row short
    problems = validate_features(path)
    assert any("split 'train', dataset 'position': 2 rows, utt_id has 3" in p for p in problems), problems


def test_validate_features_names_the_row_of_a_nan(tmp_path):
    path = tmp_path / "features.h5"
    _write_finished(path)
    with h5py.File(path, "a") as f:
        emb = f["dev/text_emb"][()]
        emb[1, 3] = np.nan
        f["dev/text_emb"][...] = emb
    problems = validate_features(path)
    assert any("split 'dev', dataset 'text_emb', row 1 (utt_id 'v1'): not finite" in p for p in problems), (
        problems
    )


def test_text_logits_go_with_the_head_classes_only_and_are_validated(tmp_path):
    path = tmp_path / "features.h5"
    with FeatureWriter(tmp_path / "plain.h5", "custom", {}) as w:  # no head: no logits accepted
        with pytest.raises(ValueError, match="unknown fields.*text_logits"):
            w.append("train", {**_rows(["u0"]), "text_logits": np.zeros((1, 2))})
    with FeatureWriter(path, "custom", {}, text_classes=("joy", "anger")) as w:
        with pytest.raises(ValueError, match="missing fields.*text_logits"):
            w.append("train", _rows(["u0"]))
        with pytest.raises(ValueError, match=r"\(N, 2\)"):
            w.append("train", {**_rows(["u0"]), "text_logits": np.zeros((1, 3))})
        with pytest.raises(NonFiniteError, match="text_logits"):
            w.append("train", {**_rows(["u0"]), "text_logits": np.array([[0.0, np.nan]])})
        logits = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
        w.append("train", {**_rows(["u0", "u1"]), "text_logits": logits})
        w.append("dev", {**_rows(["v0"]), "text_logits": logits[:1]})
        w.finalize()
    assert validate_features(path) == []
    from pipeline.store.features import read_split

    train = read_split(path, "train")
    assert train.text_logits_classes == ("joy", "anger")
    np.testing.assert_array_equal(train.text_logits, logits)
    with h5py.File(path, "a") as f:  # logits where the text is missing are a broken file
        f["dev/has_text"][...] = np.zeros(1, bool)
        f["dev/text_emb"][...] = np.zeros((1, 8))
    assert any("dataset 'text_logits', row 0" in p for p in validate_features(path))


def test_a_stale_merge_tmp_is_removed_under_the_lock(tmp_path):
    """A merge that died (full disk, segfault) leaves features.h5.tmp; the next writer removes it."""
    path = tmp_path / "media.h5"
    with ShardedWriter(path) as w:
        w.append("train", {"utt_id": ["a"], "x": np.ones((1, 2))})
    stale = tmp_path / "media.h5.tmp"
    stale.write_bytes(b"\0" * 1000)
    with ShardedWriter(path) as w:
        assert not stale.exists()
        assert w.done_ids() == {"a"}
        w.finalize()
    # while another writer holds the lock, its tmp is left alone
    with ShardedWriter(path) as w:
        stale.write_bytes(b"in progress")
        with pytest.raises(CacheLockedError):
            ShardedWriter(path)
        assert stale.exists()
        stale.unlink()


def test_a_failed_merge_removes_its_tmp_and_keeps_the_shards(tmp_path, monkeypatch):
    path = tmp_path / "features.h5"
    with FeatureWriter(path, "custom", {}) as w:
        w.append("train", _rows(["u0", "u1"]))

        def disk_full(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(cache, "append_rows", disk_full)
        with pytest.raises(OSError, match="No space left"):
            w.finalize()
        assert not (tmp_path / "features.h5.tmp").exists() and not path.exists()
        assert len(w.shards("train")) == 1


def test_merge_stops_before_writing_when_the_disk_is_too_full(tmp_path, monkeypatch):
    path = tmp_path / "features.h5"
    with FeatureWriter(path, "custom", {}) as w:
        w.append("train", _rows(["u0", "u1"]))
        w.append("train", _rows(["u2"], dialogue="d1"))
        shard_bytes = sum(p.stat().st_size for p in w.shards())
        real = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: real._replace(free=shard_bytes // 2))
        with pytest.raises(DiskSpaceError) as e:
            w.finalize()
        msg = str(e.value)
        assert str(path) in msg and "needs about" in msg and "free" in msg and "\n" not in msg
        assert not (tmp_path / "features.h5.tmp").exists() and not path.exists()
        assert len(w.shards()) == 2  # finished work kept
        monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: real._replace(free=10 * shard_bytes))
        w.finalize()
    assert validate_features(path) == []


def test_folder_lock_refuses_a_second_holder_naming_its_pid(tmp_path):
    folder = tmp_path / "models"
    with folder_lock(folder, ".train.lock", "training encoders into " + str(folder)):
        with pytest.raises(CacheLockedError, match=r"training encoders into .*models.*pid \d+"):
            with folder_lock(folder, ".train.lock", "training encoders into " + str(folder)):
                pass
        with folder_lock(folder, ".other.lock", "something else"):  # another lock name is independent
            pass
    with folder_lock(folder, ".train.lock", "again"):  # released on exit
        pass


def test_folder_lock_held_by_another_process_names_that_pid(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.store.locks import folder_lock
        with folder_lock({str(tmp_path)!r}, ".x.lock", "x"):
            print("locked", flush=True)
            time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=rf"pid {holder.pid}\b"):
            with folder_lock(tmp_path, ".x.lock", "x"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, ".x.lock", "x"):
        pass


def test_encoder_training_and_text_finetuning_hold_their_folder_lock(tmp_path):
    """Two extracts on one corpus would train into the same folder with the same temp names."""
    from pipeline.encoders.train import train_encoders
    from pipeline.encoders.train_config import TrainEncodersConfig
    from pipeline.text.finetune.loop import finetune_text
    from pipeline.text.finetune.recipe import FinetuneConfig

    media = tmp_path / "media.h5"
    media.write_bytes(b"")  # never read: the lock is checked first
    out = tmp_path / "encoders"
    with folder_lock(out, ".train-encoders.lock", "held"):
        with pytest.raises(CacheLockedError, match=r"training encoders into .*encoders.*pid \d+"):
            train_encoders(TrainEncodersConfig(media, out, modalities=("audio",)))
    text_out = tmp_path / "text-model"
    with folder_lock(text_out, ".finetune-text.lock", "held"):
        with pytest.raises(CacheLockedError, match=r"fine-tuning a text model in .*text-model.*pid \d+"):
            finetune_text([], FinetuneConfig(out=text_out))
