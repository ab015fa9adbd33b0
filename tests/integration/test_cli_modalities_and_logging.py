"""The CLI's shared option syntax (``--modalities``) and its one logging set-up."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from cli import _StderrHandler, main


@pytest.mark.parametrize("form", ["ta", "text,audio", "audio, text", "t,a"])
def test_train_dialogue_takes_both_modality_forms(form, tmp_path):
    missing = tmp_path / "none.h5"
    res = CliRunner().invoke(
        main,
        ["train-dialog", "--features", str(missing), "--out", str(tmp_path / "run"), "--modalities", form],
    )
    # the option was accepted: the run got as far as looking for the features file
    assert res.exit_code == 1 and str(missing) in res.output and "modalities" not in res.output


@pytest.mark.parametrize(
    "cmd", [["train-dialog", "--features", "x.h5", "--out", "r"], ["extract", "--dataset", "sample"]]
)
def test_unknown_modalities_are_a_usage_error_naming_both_forms(cmd):
    res = CliRunner().invoke(main, [*cmd, "--modalities", "text,smell"])
    assert res.exit_code == 2 and "--modalities" in res.output and "tav" in res.output
    assert "Traceback" not in res.output


def test_logging_is_configured_once_with_the_chosen_level():
    root, ours = logging.getLogger(), logging.getLogger("pipeline")
    before = (list(root.handlers), root.level, ours.level)
    try:
        for args, level in ((["-q"], logging.WARNING), (["-v"], logging.DEBUG), ([], logging.INFO)):
            assert CliRunner().invoke(main, [*args, "report", "--help"]).exit_code == 0
            assert ours.getEffectiveLevel() == level
            assert sum(isinstance(h, _StderrHandler) for h in root.handlers) == 1
        handler = next(h for h in root.handlers if isinstance(h, _StderrHandler))

        def record(name: str, level: int) -> logging.LogRecord:
            return logging.LogRecord(name, level, __file__, 1, "note", None, None)

        assert handler.filter(record("pipeline.extract.stage_media", logging.INFO))
        assert not handler.filter(record("distributed.core", logging.INFO))  # dask's chatter stays out
        assert handler.filter(record("distributed.core", logging.WARNING))
        assert handler.format(record("pipeline.x", logging.INFO)) == "note"
        assert handler.format(record("pipeline.x", logging.WARNING)) == "warning: note"
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        ours.setLevel(before[2])
