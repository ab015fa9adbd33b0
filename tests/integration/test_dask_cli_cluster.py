"""A cluster as users start it: ``dask scheduler`` and ``dask worker`` processes, extract from a third folder.

The scheduler and the workers (the session's :func:`dask_cli_cluster`, TLS on 127.0.0.1) run in folders of
their own; ``m2f extract`` runs in a third folder where ``--cache``, ``--encoders``, ``--text-model`` and
``--security`` are relative paths that exist only there. Its features equal a LocalCluster run's. (A worker
killed mid-run: the engine's kill -9 test, tests/integration/test_extract_e2e.py, on a LocalCluster.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from pipeline.extract import ExtractOptions, run_extract
from pipeline.store.features import read_attrs, validate_features
from pipeline.testing.dask_cli import cluster_env
from pipeline.testing.encoder_sets import save_encoder_set
from pipeline.text.embedder import DEFAULT_TEXT_MODEL

ARGS = {
    "dataset": "sample",
    "root": None,
    "splits": ("train", "dev"),
    "limit": 3,
    "partition_size": 1,
}


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


def test_cli_from_a_third_folder_with_relative_paths_equals_local_cluster(dask_cli_cluster, tmp_path):
    with dask_cli_cluster.client() as client:  # the workers run in their own folder
        assert set(client.run(os.getcwd).values()) == {str(dask_cli_cluster.folder / "workers")}
        assert all(a.startswith("tls://127.0.0.1:") for a in client.scheduler_info()["workers"])
    enc = save_encoder_set(tmp_path / "enc")
    reference = run_extract(
        ExtractOptions(
            cache=tmp_path / "local", workers=1, encoders=str(enc), text_model=DEFAULT_TEXT_MODEL, **ARGS
        )
    ).features
    work = tmp_path / "driver"  # the relative paths below exist only here
    work.mkdir()
    shutil.copytree(enc, work / "enc")
    (work / "minilm").symlink_to(DEFAULT_TEXT_MODEL)
    shutil.copytree(dask_cli_cluster.security.parent, work / "tls")
    cmd = [sys.executable, "-m", "cli", "extract", "--dataset", "sample", "--splits", "train,dev"]
    cmd += ["--limit", "3", "--partition-size", "1", "--cache", "relcache", "--encoders", "enc"]
    cmd += [
        "--text-model",
        "minilm",
        "--scheduler",
        dask_cli_cluster.address,
        "--security",
        "tls/security.yaml",
    ]
    res = subprocess.run(cmd, cwd=work, env=cluster_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    features = Path(res.stdout.strip().splitlines()[-1])
    assert features.is_relative_to(work / "relcache" / "sample") and validate_features(features) == []
    assert read_attrs(features)["config"]["limit"] == 3
    assert not (dask_cli_cluster.folder / "workers" / "relcache").exists()
    _assert_same(reference, features)
