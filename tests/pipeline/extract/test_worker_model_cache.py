"""The worker-side model cache (keyed by content, bounded, LRU) and the folders workers must see."""

from __future__ import annotations

import pytest

from pipeline.extract import tasks


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.setattr(tasks, "_MODELS", type(tasks._MODELS)())
    monkeypatch.setattr(tasks, "_LOADS", {})


def test_cache_keeps_at_most_max_cached_and_drops_the_least_recently_used(monkeypatch):
    monkeypatch.setattr(tasks, "MAX_CACHED", 2)
    built: list[str] = []

    def get(name):
        return tasks.cached_model(("m", name), lambda: built.append(name) or name)

    get("a"), get("b"), get("a"), get("c")  # "b" is the least recently used when "c" arrives
    assert list(tasks._MODELS) == [("m", "a"), ("m", "c")]
    get("a"), get("b")
    assert built == ["a", "b", "c", "b"] and tasks._LOADS == {"m": 4}


def test_weights_identity_follows_content_not_path(tmp_path):
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "audio.pt").write_bytes(b"one")
    first = tasks.weights_identity(str(folder))
    assert tasks.weights_identity(str(folder)) == first
    (folder / "audio.pt").write_bytes(b"two")  # rewritten in place: same path, new identity
    assert tasks.weights_identity(str(folder)) != first
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "audio.pt").write_bytes(b"two")
    assert tasks.weights_identity(str(copy)) == tasks.weights_identity(str(folder))
    assert tasks.weights_identity("org/hub-model") == "org/hub-model"
    assert tasks.weights_identity("random") == "random" and tasks.weights_identity(None) is None


def test_clip_folders_are_the_distinct_folders_the_driver_sees(tmp_path):
    from pipeline.extract.cluster import clip_folders
    from pipeline.manifest import Utterance

    (tmp_path / "a").mkdir()
    (tmp_path / "wav").mkdir()

    def utt(i, clip, audio=None):
        return Utterance("meld", "dev", "0", i, str(i), "s", "t", "neutral", clip=clip, audio=audio)

    utts = [
        utt(0, str(tmp_path / "a" / "x.mp4")),
        utt(1, str(tmp_path / "a" / "y.mp4"), str(tmp_path / "wav" / "y.wav")),
        utt(2, str(tmp_path / "gone" / "z.mp4")),
        utt(3, None),
    ]
    assert clip_folders(utts) == [str(tmp_path / "a"), str(tmp_path / "wav")]
