"""The LocalCluster topology: ``--workers`` processes with ``--device cpu`` and ``cuda`` alike.

The cuda case starts the same real cluster here (starting workers touches no GPU): what decides the
number of workers is the code path under test, not a copy of it.
"""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from pipeline.extract import ExtractOptions
from pipeline.extract.engine import Engine, local_worker_count
from pipeline.extract.options import ExtractError, default_workers


def test_default_workers_is_cores_minus_one(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_workers() == 15
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_workers() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_options_default_and_explicit_workers(device, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert ExtractOptions(dataset="sample", root=None, device=device).workers == 15
    opts = ExtractOptions(dataset="sample", root=None, device=device, workers=5)
    assert local_worker_count(opts) == 5


@pytest.mark.parametrize(("device", "partition", "batch"), [("cpu", 16, 32), ("cuda", 64, 256)])
def test_gpu_runs_embed_in_larger_partitions_and_batches(device, partition, batch):
    opts = ExtractOptions(dataset="sample", root=None, device=device)
    assert (opts.partition, opts.batch) == (partition, batch)
    assert ExtractOptions(dataset="sample", root=None, device=device, partition_size=5).partition == 5


def test_zero_workers_is_refused():
    with pytest.raises(ExtractError, match="--workers 0"):
        ExtractOptions(dataset="sample", root=None, workers=0)


def test_cli_default_is_cores_minus_one(monkeypatch):
    import cli

    seen = {}

    def fake_run(opts):  # stops the command right after the options are built
        seen["workers"] = opts.workers
        raise ExtractError("stop here")

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr("pipeline.extract.run_extract", fake_run)
    for device in ("cpu", "cuda"):
        res = CliRunner().invoke(cli.main, ["extract", "--dataset", "sample", "--device", device])
        assert "stop here" in res.output, res.output
        assert seen.pop("workers") == 7


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_engine_starts_the_requested_workers(device):
    engine = Engine(ExtractOptions(dataset="sample", root=None, device=device, workers=2))
    try:
        assert engine.n_workers() == 2  # the old cuda path started 1
    finally:
        engine.close()
