"""Everything under tests/integration is an end-to-end check (CLI processes, clusters, whole extractions,
trainings): all of it is marked ``slow`` here, so ``pytest -m "not slow"`` leaves the folder out.

The cheap guarantees that these tests also gave live in the quick part elsewhere: the CLI's help, option
syntax and one-line errors in ``tests/test_cli_quick.py``, the cache keys and the security file in
``tests/pipeline/extract/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def dask_cli_cluster(tmp_path_factory):
    """One cluster started as users start one (``dask scheduler`` and ``dask worker --nworkers 2``
    processes, TLS on 127.0.0.1; :mod:`pipeline.testing.dask_cli`), shared by the integration tests whose
    subject is not the cluster m2f starts itself: they pass ``--scheduler`` and ``--security``. Its
    workers stay warm between tests, as a user's long-lived cluster does; the LocalCluster path keeps
    its own tests (test_readme_path, test_extract_resume's killed runs, test_extract_e2e, the GPU
    check's smoke run)."""
    from pipeline.testing.dask_cli import DASK, start_dask_cli_cluster

    if not DASK.exists():
        pytest.skip(f"no dask command at {DASK}")
    cluster = start_dask_cli_cluster(tmp_path_factory.mktemp("dask-cli"), n_workers=2)
    yield cluster
    cluster.close()
