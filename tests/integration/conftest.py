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
