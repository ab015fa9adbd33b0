"""The command line, quickly (in-process, no command does real work): help texts, the shared option syntax
(``--modalities``), the one logging set-up, and one-line errors given before any work.

The end-to-end CLI runs (Ctrl-C, kill -9 and resume, whole chains) are in tests/integration (slow)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("prepare", "extract", "train-encoders", "train-dialog", "report", "export", "predict", "demo")


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
        root.handlers[:] = []  # pytest's own come back in `finally`; what is left after a run is m2f's
        for args, level in ((["-q"], logging.WARNING), (["-v"], logging.DEBUG), ([], logging.INFO)):
            assert CliRunner().invoke(main, [*args, "report", "--help"]).exit_code == 0
            assert ours.getEffectiveLevel() == level
            assert len(root.handlers) == 1  # one handler, however often the CLI runs
        (handler,) = root.handlers

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


def test_help_lists_every_command_with_a_whole_line():
    out = CliRunner().invoke(main, ["--help"]).output
    for cmd in COMMANDS:
        line = next(x for x in out.splitlines() if x.strip().startswith(cmd + " "))
        assert not line.rstrip().endswith("..."), f"help of {cmd} is cut: {line!r}"
    assert CliRunner().invoke(main, ["--version"]).output.startswith("m2f, version")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_help_shows_defaults(cmd):
    res = CliRunner().invoke(main, [cmd, "--help"])
    assert res.exit_code == 0
    if cmd not in ("report", "prepare"):  # these have no option with a default value
        assert "[default:" in res.output


def test_wrong_root_names_what_was_expected(tmp_path):
    res = CliRunner().invoke(main, ["prepare", "--dataset", "meld", "--root", str(tmp_path / "nope")])
    assert res.exit_code != 0
    assert "train_sent_emo.csv" in res.output and str(tmp_path / "nope") in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["prepare", "--dataset", "iemocap", "--root", str(tmp_path / "empty")])
    assert res.exit_code != 0 and "Session" in res.output


def _extract(cache: Path, *extra: str):
    args = ["--dataset", "sample", "--cache", str(cache), "--modalities", "text", "--encoders", "random"]
    return CliRunner().invoke(main, ["extract", *args, "--workers", "1", *extra])


def test_text_base_and_text_model_exclude_each_other_and_a_missing_folder_is_one_line(tiny_roberta, tmp_path):
    both = _extract(tmp_path / "c", "--text-base", str(tiny_roberta), "--text-model", str(tiny_roberta))
    assert both.exit_code != 0 and "exclude each other" in both.output and "Traceback" not in both.output
    missing = _extract(tmp_path / "c", "--text-base", str(tmp_path / "no-such-model"))
    assert missing.exit_code != 0 and "--text-base" in missing.output and "does not exist" in missing.output
    assert "Traceback" not in missing.output


def test_cli_bad_security_file_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tls.yaml").write_text("tls_ca_file: ca.pem\n")
    res = CliRunner().invoke(
        main,
        [
            "extract",
            "--dataset",
            "sample",
            "--modalities",
            "a",
            "--encoders",
            "random",
            "--cache",
            "c",
            "--security",
            "tls.yaml",
        ],
    )
    assert res.exit_code == 1 and res.exception is not None and not res.stdout.strip()
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: --security ") and "ca.pem does not exist" in last
    assert not list(Path("c").glob("sample/media-*"))


def test_gpu_check_without_out_dir_prints_usage():
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "usage" in proc.stderr
