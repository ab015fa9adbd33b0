"""Shared pytest setup: offline hub, quiet tokenizers, the gpu marker's skip, shared fixtures.

Test data come from the generators in ``pipeline/testing/``; fixtures that several test files use
live here.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite starts many Python processes (the CLI, dask workers, killed-and-rerun jobs), and each imports
# torch, transformers and torchvision. With PYTHONDONTWRITEBYTECODE set (as on the project's own machines
# and CI image) and a venv installed with --no-compile, every one of them compiles those libraries from
# source again: 17 s instead of 7 s per process, measured on the 2-core machine. The suite lets Python
# cache bytecode in the venv it runs in, for itself and for the processes it starts.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

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
def face_detector():
    """The session's one MTCNN, as a CPU FaceDetector with MediaConfig's defaults; for other batching or
    shrinking settings: ``pipeline.testing.faces.shared_face_detector(cfg)`` (same networks)."""
    from pipeline.testing.faces import shared_face_detector

    return shared_face_detector()


@pytest.fixture(scope="session")
def make_utterance():
    """The Utterance factory of :mod:`pipeline.testing.utterances` (every field defaulted)."""
    from pipeline.testing.utterances import make_utterance

    return make_utterance


@pytest.fixture(scope="session")
def save_encoder_set():
    """The encoder-set factory of :mod:`pipeline.testing.encoder_sets`: ``save_encoder_set(folder, seed)``."""
    from pipeline.testing.encoder_sets import save_encoder_set

    return save_encoder_set


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    """A tiny random RoBERTa folder (read-only for the tests): tests/pipeline/text/test_text*.py."""
    from pipeline.testing.text_model import make_tiny_roberta

    return make_tiny_roberta(tmp_path_factory.mktemp("tiny_roberta"))


@pytest.fixture(scope="session")
def tiny_finetuned(tmp_path_factory, tiny_roberta) -> Path:
    """The tiny RoBERTa fine-tuned (one epoch, seconds) on the sample corpus with the past-only context: a
    real ``finetune_text`` folder with its classification head (MELD's 7 classes) and ``m2f_text.json``
    (tests/trainer/apply/test_head_residual.py)."""
    from pipeline.corpora.sample import prepare_sample
    from pipeline.text.finetune.loop import finetune_text
    from pipeline.text.finetune.recipe import FinetuneConfig

    config = FinetuneConfig(
        out=tmp_path_factory.mktemp("tiny_finetuned") / "ft",
        base_model=str(tiny_roberta),
        max_length=48,
        epochs=1,
        batch_size=8,
        evals_per_epoch=1,
        eval_test=False,
        context="past",
        threads=1,
    )
    return finetune_text(prepare_sample(), config)


LIVE_SMALL = {
    "seeds": 1,
    "epochs": 3,
    "patience": 3,
    "heads": 2,
    "hidden": 16,
    "fusion_layers": 1,
    "progress": False,
    "threads": 1,
}


@pytest.fixture(scope="session")
def live_models(tmp_path_factory, tiny_roberta):
    """The sample corpus extracted (random encoders, a tiny text model marked as fine-tuned with the
    past-only context), a causal and a bidirectional dialogue model trained on it, each exported:
    ``(root, {"causal": folder, "bidirectional": folder})`` (tests/trainer/apply/test_live.py, test_serve)."""
    import json
    import shutil

    from pipeline.extract import ExtractOptions, run_extract
    from trainer.apply.export import export_model
    from trainer.dialogue.fit import DialogueTrainConfig, train_dialogue

    root = tmp_path_factory.mktemp("live")
    text = root / "text-past"
    shutil.copytree(tiny_roberta, text)
    (text / "m2f_text.json").write_text(
        json.dumps({"config": {"max_length": 48, "pooling": "cls", "context": "past"}})
    )
    result = run_extract(
        ExtractOptions(
            dataset="sample",
            root=None,
            cache=root / "cache",
            encoders="random",
            text_model=str(text),
            workers=1,
            media_config={"n_frames": 4},
        )
    )
    models = {}
    for name, causal in (("causal", True), ("bidirectional", False)):
        run = root / f"run-{name}"
        train_dialogue(
            DialogueTrainConfig(features=str(result.features), out=str(run), causal=causal, **LIVE_SMALL)
        )
        models[name] = export_model(run, root / f"model-{name}", text_model=str(text))
    return root, models


@pytest.fixture(scope="module")
def one_worker_client():
    """A client of a one-worker cluster from ``make_local_cluster`` (as m2f starts it: TLS, loopback),
    shared by the tests of one module."""
    from distributed import Client

    from pipeline.extract import make_local_cluster

    cluster = make_local_cluster(1)
    with Client(cluster) as c:
        yield c
    cluster.close()
