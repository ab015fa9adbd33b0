"""Shared pytest setup: offline hub, quiet tokenizers, the gpu marker's skip, shared fixtures.

Test data come from the generators in ``pipeline/testing/``; fixtures that several test files use
live here.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU here)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: folder names count there
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    """A tiny random RoBERTa folder (read-only for the tests): tests/pipeline/test_text*.py."""
    from pipeline.testing.text_model import make_tiny_roberta

    return make_tiny_roberta(tmp_path_factory.mktemp("tiny_roberta"))
