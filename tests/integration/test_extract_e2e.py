"""``m2f extract`` end to end through a real 2-worker LocalCluster on generated MELD and IEMOCAP trees.

One cluster serves the module. The MELD tree carries the corpus traps (missing clip, zero-byte clip,
5.1 audio) and the media faults below, so one run checks the features file, the fault flags and
``problems.jsonl`` together; the per-fault decoding behaviour itself is tested in ``test_media*``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.encoders.checkpoint import save_encoder
from pipeline.encoders.network import build_encoder
from pipeline.extract import ExtractError, ExtractOptions, encoder_identity, make_local_cluster, run_extract
from pipeline.extract.stage_encoders import labels_key, stored_labels
from pipeline.manifest import read_jsonl
from pipeline.store.features import read_split, validate_features
from pipeline.store.h5rows import RowReader
from pipeline.store.layout import CacheLayout
from pipeline.testing.av_files import write_clip, write_truncated
from pipeline.testing.iemocap_tree import make_iemocap_tree
from pipeline.testing.meld_tree import MELD_CLIP_DIRS, make_meld_tree
from pipeline.testing.tls import security_file
from pipeline.text.embedder import DEFAULT_TEXT_MODEL

N_FRAMES = 6  # fewer frames than the paper's 15 keep MTCNN and the encoders quick on 2 shared cores
SIZE = (160, 120)  # the face is then above MTCNN's min_face_size

# split, clip name -> (fault, how to write it)
FAULTS = {
    ("dev", "dia1_utt0.mp4"): "no audio stream",
    ("dev", "dia1_utt1.mp4"): "no video stream",
    ("dev", "dia1_utt2.mp4"): "silent audio",
    ("test", "dia1_utt0.mp4"): "truncated mp4",
    ("test", "dia1_utt1.mp4"): "no face",
    ("test", "dia1_utt2.mp4"): "short clip",
    ("train", "dia2_utt0.mp4"): "many minutes long",
}


def _write_faults(root: Path) -> None:
    base = root / "MELD.Raw"
    for (split, name), fault in FAULTS.items():
        path = base / MELD_CLIP_DIRS[split] / name
        kw = {"size": SIZE, "duration": 1.0}
        if fault == "no audio stream":
            write_clip(path, audio=False, **kw)
        elif fault == "no video stream":
            write_clip(path, video=False, **kw)
        elif fault == "silent audio":
            write_clip(path, silent=True, **kw)
        elif fault == "truncated mp4":
            good = write_clip(path.parent.parent / f"good-{name}", **kw)  # outside the clip folder
            write_truncated(good, path, keep_fraction=0.4)
            good.unlink()
        elif fault == "no face":
            write_clip(path, face=False, **kw)
        elif fault == "short clip":
            write_clip(path, size=SIZE, duration=3 / 24, fps=24)  # 3 frames < N_FRAMES
        elif fault == "many minutes long":
            write_clip(path, size=(64, 48), duration=240.0, fps=2, sample_rate=16000)


def _opts(root: Path, cache: Path, **kw) -> ExtractOptions:
    base = {
        "encoders": "random",
        "text_model": DEFAULT_TEXT_MODEL,
        "partition_size": 3,
        "media_config": {"n_frames": N_FRAMES},
    }
    return ExtractOptions("meld", root, cache=cache, **{**base, **kw})


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    cluster = make_local_cluster(2)
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def meld_tree(tmp_path_factory) -> Path:
    root = make_meld_tree(
        tmp_path_factory.mktemp("meld"), n_dialogues=2, utterances_per_dialogue=3, size=SIZE, duration=1.0
    )
    _write_faults(root)
    return root


@pytest.fixture(scope="module")
def meld_run(meld_tree, client, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return _opts(meld_tree, cache), run_extract(_opts(meld_tree, cache), client=client)


def _media_rows(media: Path) -> dict[str, dict]:
    out = {}
    with h5py.File(media, "r") as f:
        splits = list(f)
    for split in splits:
        with RowReader(media, split) as r:
            for i, uid in enumerate(r.utt_ids):
                out[uid] = r.row(i, ["has_audio", "has_visual", "has_face", "audio_cut", "problems"])
    return out


def test_meld_features_valid_complete_and_ordered(meld_run):
    opts, res = meld_run
    assert validate_features(res.features) == []
    manifest = read_jsonl(res.manifest)
    for split in ("train", "dev", "test"):
        want = [u for u in manifest if u.split == split]
        got = read_split(res.features, split)
        assert list(got.utt_id) == [u.id for u in want]  # manifest order: dialogue, then position
        assert list(got.text) == [u.text for u in want] and list(got.label) == [u.label for u in want]
        assert got.text_emb.shape == (len(want), 384) and got.has_text.all()
        assert got.audio_emb.shape == (len(want), 300) and got.visual_emb.shape == (len(want), 600)
        n = np.linalg.norm(got.audio_emb[got.has_audio], axis=1)
        np.testing.assert_allclose(n, 1, atol=1e-4)  # encoders' L2-normalised outputs arrive unchanged
    assert sum(s.done for s in res.summary.values()) == len(manifest)
    cfg = json.loads(h5py.File(res.features, "r").attrs["config"])
    assert cfg["encoders"] == "random-seed0" and cfg["media"]["n_frames"] == N_FRAMES


def test_meld_faults_are_flagged_in_features_and_problems(meld_run):
    _, res = meld_run
    media = _media_rows(res.media)
    feats = {}
    for split in ("train", "dev", "test"):
        a = read_split(res.features, split)
        for i, uid in enumerate(a.utt_id):
            feats[uid] = {
                "has_audio": a.has_audio[i],
                "has_visual": a.has_visual[i],
                "has_face": a.has_face[i],
                "audio": a.audio_emb[i],
                "visual": a.visual_emb[i],
            }
    for uid, m in media.items():  # features flags are the media flags, and zeros go with False
        f = feats[uid]
        assert f["has_audio"] == m["has_audio"] and f["has_visual"] == m["has_visual"], uid
        assert f["has_face"] == (m["has_face"] and m["has_visual"]), uid
        assert np.any(f["audio"] != 0) == f["has_audio"] and np.any(f["visual"] != 0) == f["has_visual"], uid
        assert np.any(f["visual"][:300] != 0) == f["has_face"], uid
    lines = [json.loads(x) for x in (res.media.parent / "problems.jsonl").read_text().splitlines()]
    logged = {x["utt_id"]: x["problems"] for x in lines}
    assert len(logged) == len(lines)  # one line per utterance
    assert logged == {u: json.loads(m["problems"]) for u, m in media.items() if json.loads(m["problems"])}

    def flags(uid):
        f = feats[uid]
        return bool(f["has_audio"]), bool(f["has_visual"]), bool(f["has_face"])

    # corpus traps: missing clip (train dia2_utt2), zero-byte clip (train dia0_utt1), 5.1 audio (dev)
    assert flags("meld/train/dia2_utt2") == (False, False, False) and "meld/train/dia2_utt2" in logged
    assert flags("meld/train/dia0_utt1") == (False, False, False) and "meld/train/dia0_utt1" in logged
    assert flags("meld/dev/dia0_utt0")[:2] == (True, True)  # 5.1 audio: centre channel
    assert sum(f["has_face"] for f in feats.values()) >= 10  # the face path ran on most clips
    assert flags("meld/dev/dia1_utt0")[:2] == (False, True)  # no audio stream
    assert flags("meld/dev/dia1_utt1")[:2] == (True, False)  # no video stream
    assert flags("meld/dev/dia1_utt2")[:2] == (False, True)  # silent audio
    assert flags("meld/test/dia1_utt1") == (True, True, False)  # no face
    assert flags("meld/test/dia1_utt2")[1]  # short clip: frames kept
    assert media["meld/train/dia2_utt0"]["audio_cut"] and flags("meld/train/dia2_utt0")[0]  # 4 minutes
    for uid in (
        "meld/dev/dia1_utt0",
        "meld/dev/dia1_utt1",
        "meld/dev/dia1_utt2",
        "meld/test/dia1_utt0",
        "meld/test/dia1_utt1",
        "meld/test/dia1_utt2",
        "meld/train/dia2_utt0",
    ):
        assert uid in logged, uid
    assert res.summary["dev"].problems >= 3 and res.summary["test"].problems >= 3


def test_models_are_loaded_once_per_worker(meld_run):
    _, res = meld_run
    assert len(res.workers) == 2  # both processes worked
    for pid, w in res.workers.items():
        for kind in ("mtcnn", "encoders", "text"):
            assert w["loads"].get(kind, 0) <= 1, (pid, w)
        assert w["tasks"] >= 2
    assert sum(w["loads"].get("mtcnn", 0) for w in res.workers.values()) == 2


def test_rerun_is_a_noop(meld_run, client):
    opts, res = meld_run
    stamp = (res.features.stat().st_mtime_ns, res.media.stat().st_mtime_ns)
    again = run_extract(opts, client=client)
    assert again.features == res.features and again.workers == {}  # no task ran
    assert (res.features.stat().st_mtime_ns, res.media.stat().st_mtime_ns) == stamp
    assert all(s.done == 0 and s.skipped == s.total for s in again.summary.values())


def test_default_encoders_are_the_ones_cached_for_this_media(meld_run, client):
    opts, ref = meld_run
    folder = opts.layout.encoders_dir(CacheLayout.media_key(ref.media), labels_key(stored_labels(ref.media)))
    sizes = {"face": 80, "scene": 64}  # the media's crop sizes: the input contract is checked
    for i, m in enumerate(("audio", "face", "scene")):
        save_encoder(
            build_encoder(m, seed=100 + i, **({"image_size": sizes[m]} if m in sizes else {})),
            folder / f"{m}.pt",
        )
    res = run_extract(_opts(opts.root, opts.cache, encoders=None), client=client)
    assert res.encoders == str(folder.resolve()) and res.media == ref.media
    assert res.features != ref.features  # other weights, other cache key
    cfg = json.loads(h5py.File(res.features, "r").attrs["config"])
    assert cfg["encoders"] == encoder_identity(str(folder))
    a, b = read_split(ref.features, "test"), read_split(res.features, "test")
    np.testing.assert_array_equal(a.text_emb, b.text_emb)
    assert not np.allclose(a.audio_emb[a.has_audio], b.audio_emb[b.has_audio])
    with pytest.raises(ExtractError, match="train split"):
        run_extract(_opts(opts.root, opts.cache / "other", encoders=None, splits=("dev",)))
    assert CacheLayout(opts.cache / "other", "meld").media_files() == []  # stopped before decoding


def test_missing_default_encoders_are_trained_on_the_stored_media(meld_run, client, tmp_path):
    opts, ref = meld_run
    cache = tmp_path / "cache"
    layout, key = CacheLayout(cache, "meld"), CacheLayout.media_key(ref.media)
    shutil.copytree(ref.media.parent, layout.media_dir(key))  # decoded media, reused
    shutil.copy(ref.manifest, layout.manifest(opts.root))
    res = run_extract(_opts(opts.root, cache, encoders=None), client=client)
    folder = layout.encoders_dir(key, labels_key(stored_labels(ref.media)))
    assert res.encoders == str(folder.resolve())
    assert sorted(p.name for p in folder.glob("*.pt")) == ["audio.pt", "face.pt", "scene.pt"]
    assert validate_features(res.features) == []
    assert "media" not in res.seconds  # nothing decoded again
    cfg = json.loads(h5py.File(res.features, "r").attrs["config"])
    assert cfg["encoders"] == encoder_identity(str(folder))
    from pipeline.corpora.base import MELD_CLASSES
    from pipeline.encoders.checkpoint import load_checkpoint

    for m in ("audio", "face", "scene"):  # triplets are drawn over the corpus's class map only
        assert load_checkpoint(folder / f"{m}.pt")["meta"]["train_config"]["classes"] == list(MELD_CLASSES)


def test_worker_killed_mid_run_is_replaced_and_result_is_the_same(meld_tree, meld_run, client, tmp_path):
    _, ref = meld_run
    killed: list[int] = []

    def kill_busy_worker(c, i):
        if killed or i != 0:
            return
        busy = [addr for addr, tasks in c.processing().items() if tasks]
        pids = c.run(os.getpid, workers=busy[:1]) if busy else {}
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    before = set(client.run(os.getpid).values())
    res = run_extract(
        _opts(meld_tree, tmp_path, media_config={"n_frames": N_FRAMES}),
        client=client,
        on_written=kill_busy_worker,
    )
    assert killed, "no worker was busy when the first partition was written"
    client.wait_for_workers(2, timeout=60)
    after = set(client.run(os.getpid).values())
    assert killed[0] in before and killed[0] not in after and len(after) == 2
    assert validate_features(res.features) == []
    for split in ("train", "dev", "test"):
        a, b = read_split(ref.features, split), read_split(res.features, split)
        assert list(a.utt_id) == list(b.utt_id)
        for k in ("text_emb", "audio_emb", "visual_emb", "has_audio", "has_visual", "has_face"):
            np.testing.assert_allclose(getattr(a, k), getattr(b, k), atol=1e-5, err_msg=k)


def test_iemocap_end_to_end(client, tmp_path):
    root = make_iemocap_tree(
        tmp_path / "corpus",
        sessions=(1, 5),
        dialogues_per_session=1,
        utterances_per_dialogue=3,
        video_size=(320, 240),
        fps=15.0,
    )
    opts = ExtractOptions(
        "iemocap",
        root,
        cache=tmp_path / "cache",
        encoders="random",
        text_model=DEFAULT_TEXT_MODEL,
        partition_size=2,
        media_config={"n_frames": N_FRAMES},
    )
    res = run_extract(opts, client=client)
    assert validate_features(res.features) == []
    manifest = read_jsonl(res.manifest)
    total = 0
    for split in sorted({u.split for u in manifest}):
        a = read_split(res.features, split)
        assert list(a.utt_id) == [u.id for u in manifest if u.split == split]
        assert a.has_text.all() and a.has_audio.all()  # each utterance has its own wav
        total += len(a)
    assert total == len(manifest)


def test_text_only_needs_no_clips_and_runs_on_a_given_scheduler(client, tmp_path, caplog):
    root = make_meld_tree(tmp_path / "corpus", n_dialogues=2, utterances_per_dialogue=2, clips=False)
    opts = ExtractOptions(
        "meld",
        root,
        cache=tmp_path / "cache",
        modalities=("text",),
        text_model=DEFAULT_TEXT_MODEL,
        splits=("dev", "test"),
        scheduler=client.scheduler.address,
        security=security_file(client.security, tmp_path / "tls"),
    )  # its TLS certificate
    with caplog.at_level(logging.INFO, logger="pipeline"):
        res = run_extract(opts)
    assert f"connected to {client.scheduler.address}; dashboard:" in caplog.text
    assert len(res.workers) >= 1 and set(res.workers) <= {str(p) for p in client.run(os.getpid).values()}
    assert res.media is None and opts.layout.media_files() == []
    assert validate_features(res.features) == []
    a = read_split(res.features, "dev")
    assert a.has_text.all() and not a.has_audio.any() and not a.has_visual.any()
    assert a.audio_emb.shape == (len(a), 0) and a.text_emb.shape == (len(a), 384)
    with h5py.File(res.features, "r") as f:
        assert sorted(f) == ["dev", "test"]


def test_encoders_folder_without_checkpoints_stops_before_decoding(meld_tree, tmp_path):
    (tmp_path / "enc").mkdir()
    opts = _opts(meld_tree, tmp_path / "cache", encoders=str(tmp_path / "enc"))
    with pytest.raises(ExtractError, match="--encoders random"):
        run_extract(opts)
    assert opts.layout.media_files() == []


@pytest.mark.gpu
def test_cuda_run_matches_cpu(tmp_path, tiny_roberta):
    # the tiny local text model: the GPU machine has no MiniLM package; 2 workers share the GPU
    root = make_meld_tree(
        tmp_path / "corpus", n_dialogues=2, utterances_per_dialogue=2, splits=("dev",), traps=False, size=SIZE
    )
    text = {"text_model": str(tiny_roberta)}
    cpu = run_extract(_opts(root, tmp_path / "cpu", splits=("dev",), workers=1, **text))
    gpu = run_extract(_opts(root, tmp_path / "gpu", splits=("dev",), device="cuda", workers=2, **text))
    assert validate_features(gpu.features) == [] and 1 <= len(gpu.workers) <= 2
    a, b = read_split(cpu.features, "dev"), read_split(gpu.features, "dev")
    np.testing.assert_array_equal(a.has_face, b.has_face)
    for k in ("text_emb", "audio_emb"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), atol=2e-2, err_msg=k)
    # scene half: same frames, other kernels; the face half may differ where MTCNN boxes move a pixel
    np.testing.assert_allclose(a.visual_emb[:, 300:], b.visual_emb[:, 300:], atol=2e-2)
