"""A cluster as users start it: ``dask scheduler`` and ``dask worker`` processes, extract from a third folder.

The scheduler and the workers listen on 127.0.0.1 only and run in folders of their own; ``m2f extract``
runs in a third folder with a relative ``--cache``. Its features equal a LocalCluster run's. (A worker
killed mid-run: the engine's kill -9 test, tests/integration/test_extract_e2e.py, on a LocalCluster.)
Every process is started in its own process group and killed at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.extract import ExtractOptions, run_extract
from pipeline.text.embedder import DEFAULT_TEXT_MODEL

DASK = Path(sys.executable).with_name("dask")
REPO = Path(__file__).resolve().parents[2]
ARGS = {
    "dataset": "sample",
    "root": None,
    "encoders": "random",
    "text_model": str(DEFAULT_TEXT_MODEL),
    "splits": ("train", "dev"),
    "limit": 3,
    "partition_size": 1,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "log.txt", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
    # the workers' own processes (nanny children) live in the same group: make sure none is left
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """Address of a ``dask scheduler`` with two worker processes (``dask worker --nworkers 2``)."""
    if not DASK.exists():
        pytest.skip(f"no dask command beside {sys.executable}")
    from distributed import Client

    base = tmp_path_factory.mktemp("cluster")
    address = f"tcp://127.0.0.1:{_free_port()}"
    procs = [
        _start(
            [
                str(DASK),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                address.rsplit(":", 1)[1],
                "--no-dashboard",
            ],
            base / "scheduler",
        )
    ]
    try:
        procs.append(
            _start(
                [
                    str(DASK),
                    "worker",
                    address,
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--death-timeout",
                    "60",
                ],
                base / "workers",
            )
        )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert all(a.startswith("tcp://127.0.0.1:") for a in client.scheduler_info()["workers"])
            assert set(client.run(os.getcwd).values()) == {str(base / "workers")}
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert np.array_equal(da[name], db[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same extract on a LocalCluster."""
    cache = tmp_path_factory.mktemp("local")
    return run_extract(ExtractOptions(cache=cache, workers=1, **ARGS)).features


def test_cli_from_a_third_folder_with_relative_cache_equals_local_cluster(scheduler, reference, tmp_path):
    work = tmp_path / "driver"
    work.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "extract",
        "--dataset",
        "sample",
        "--encoders",
        "random",
        "--text-model",
        ARGS["text_model"],
        "--splits",
        "train,dev",
        "--limit",
        "3",
        "--partition-size",
        "1",
        "--cache",
        "relcache",
        "--scheduler",
        scheduler,
    ]
    res = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    features = Path(res.stdout.strip().splitlines()[-1])
    assert features.is_relative_to(work / "relcache" / "sample")
    _assert_same(reference, features)
