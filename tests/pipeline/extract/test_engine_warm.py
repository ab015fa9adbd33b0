"""The engine starts its LocalCluster early and warms its workers between stages (a real 1-worker cluster).

``Engine.start_soon`` starts the cluster in a thread while the driver checks its inputs, then has every
worker import the first stage's modules; ``warm_after`` has them import the next stage's at the end of a
stage. Nothing here may change what a stage computes or hide a failed start.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest
from distributed import wait

from pipeline.extract import ExtractOptions
from pipeline.extract import engine as engine_mod
from pipeline.extract.engine import Engine
from pipeline.extract.tasks import warm_modules, warm_worker
from pipeline.testing.utterances import make_dialogues

# stdlib modules a fresh dask worker has not imported (checked below, so the test cannot pass vacuously)
EARLY, LATER = "colorsys", "wave"


def _imported(name: str) -> bool:
    return name in sys.modules


def _frozen() -> int:
    return gc.get_freeze_count()


def _env(name: str) -> str | None:
    return os.environ.get(name)


def _double(part, k):
    return {"ids": [u.id for u in part], "k": k}


def test_warm_worker_imports_and_freezes_what_it_imported():
    before = gc.get_freeze_count()
    try:
        warm_worker(["json"])
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_warm_modules_follow_the_stage_and_modalities():
    assert "facenet_pytorch" in warm_modules(("text", "audio", "visual"), "media")
    assert any(m.startswith("transformers") for m in warm_modules(("text", "audio"), "embed"))
    assert warm_modules(("audio", "visual"), "embed") == []


def test_start_soon_warms_the_workers_and_a_stage_warms_the_next():
    engine = Engine(ExtractOptions(dataset="sample", root=None, workers=1))
    try:
        engine.start_soon([EARLY])
        client = engine.client  # waits for the start
        wait(engine._warming)
        assert all(client.run(_imported, EARLY).values())
        assert all(n > 0 for n in client.run(_frozen).values())
        assert not any(client.run(_imported, LATER).values())

        engine.warm_after([LATER])
        utts = make_dialogues([2, 2, 2], corpus="meld", split="dev", speaker="Ross")
        got = []
        engine.map_partitions(_double, engine.partitions(utts), 7, desc="t", on_result=got.append)
        assert sorted(i for r in got for i in r["ids"]) == sorted(u.id for u in utts)
        assert {r["k"] for r in got} == {7}
        wait(engine._warming)  # sent at the stage's tail, held for the next stage
        assert all(client.run(_imported, LATER).values())
    finally:
        engine.close()
    assert engine._own == []


def test_a_failed_early_start_is_raised_where_the_client_is_wanted(monkeypatch):
    def broken(n, security=None):
        raise OSError("no ports left")

    monkeypatch.setattr(engine_mod, "make_local_cluster", broken)
    engine = Engine(ExtractOptions(dataset="sample", root=None, workers=1))
    engine.start_soon(["json"])
    with pytest.raises(OSError, match="no ports left"):
        engine.client  # noqa: B018
    engine.close()  # nothing to close, and no second error


def test_a_given_client_is_never_replaced(monkeypatch):
    sentinel = object()
    engine = Engine(ExtractOptions(dataset="sample", root=None, workers=1), client=sentinel)
    engine.start_soon(["json"])
    engine.warm_after(["json"])
    assert engine.client is sentinel and engine._starting is None


def test_forked_workers_see_the_environment_of_each_start(monkeypatch):
    """Workers are forked from a server started once; each cluster still gets the driver's present env."""
    for value in ("first", "second"):  # the second cluster's workers come from the same server
        monkeypatch.setenv("M2F_TEST_WORKER_ENV", value)
        engine = Engine(ExtractOptions(dataset="sample", root=None, workers=1))
        try:
            assert set(engine.client.run(_env, "M2F_TEST_WORKER_ENV").values()) == {value}
            assert all(engine.client.run(_imported, "facenet_pytorch").values())  # the server's preload
        finally:
            engine.close()
