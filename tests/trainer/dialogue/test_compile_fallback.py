"""``--compile`` falls back to eager training, with a warning, where inductor cannot build kernels."""

from __future__ import annotations

import logging
import shutil

import torch

from trainer.dialogue.steps import compile_missing, compiled_or_eager


def test_no_c_compiler_means_eager_with_a_warning(monkeypatch, caplog):
    model = torch.nn.Linear(3, 2)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C compiler" in compile_missing()
    with caplog.at_level(logging.WARNING, logger="trainer.dialogue.steps"):
        assert compiled_or_eager(model) is model
    assert "training eagerly" in caplog.text


def test_missing_python_headers_are_named(monkeypatch, tmp_path):
    import sysconfig

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/cc")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert "Python.h" in compile_missing()
    assert compiled_or_eager(torch.nn.Linear(3, 2)).__class__ is torch.nn.Linear


def test_with_a_compiler_and_headers_the_model_is_compiled(monkeypatch, tmp_path):
    import sysconfig

    (tmp_path / "Python.h").write_text("")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/cc")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    model = torch.nn.Linear(3, 2)
    assert compiled_or_eager(model) is not model  # the lazy wrapper; nothing is compiled before a call
