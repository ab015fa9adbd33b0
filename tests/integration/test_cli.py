"""The command line as a new user meets it: help texts, wrong paths, Ctrl-C, reports of unfinished runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from cli import main
from pipeline.testing.features_h5 import write_features, xor_rows


def _m2f() -> list[str]:
    exe = Path(sys.executable).with_name("m2f")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from cli import main; main()"]


@contextlib.contextmanager
def _children_take_sigint():
    """Children started in the block get SIGINT's default action.

    A process started with SIGINT ignored -- pytest run as a background job of a non-interactive shell
    (``pytest &``, ``nohup``, some CI runners) -- passes SIG_IGN on through exec, and Python then
    installs no KeyboardInterrupt handler: the child would never see the test's Ctrl-C. A handled
    signal is reset to its default at exec, so the block installs Python's own handler meanwhile.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_says_how_to_resume_and_report_says_still_training(tmp_path):
    lengths = {"train": [6] * 40, "dev": [6] * 10, "test": [6] * 10}
    features = write_features(tmp_path / "f.h5", "custom", lengths, xor_rows({"t": 8, "a": 4, "v": 6}))
    out = tmp_path / "run"
    errors = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe buffer would stall the child
    with open(errors, "w") as err_file, _children_take_sigint():
        proc = subprocess.Popen(
            _m2f()
            + [
                "train-dialog",
                "--features",
                str(features),
                "--out",
                str(out),
                "--epochs",
                "500",
                "--patience",
                "500",
                "--heads",
                "2",
                "--hidden",
                "16",
                "--threads",
                "1",
                "--no-progress",
                "--checkpoint-seconds",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    try:
        # Ctrl-C only once training runs (status.json at epoch 2), however long start-up takes on a
        # loaded machine: a fixed wait could send it during the imports instead
        status = out / "seed0" / "status.json"
        deadline = time.monotonic() + 600
        while not (status.exists() and json.loads(status.read_text())["epoch"] >= 2):
            assert proc.poll() is None, f"train-dialog exited early: {errors.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "train-dialog did not reach epoch 2 in 600 s"
            time.sleep(0.05)
        # a report while it trains says so, and gives no test numbers
        res = CliRunner().invoke(main, ["report", str(out)])
        assert res.exit_code == 0 and "STILL TRAINING" in (out / "report.md").read_text()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = errors.read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err and "Traceback" not in err
