"""Every ``>>>`` example in pipeline/ and trainer/ runs, one test per module (so a failure names it).

Modules are found by their text (a ``>>>`` line) and imported only by their own test, so collecting
this file imports nothing heavy. An example that cannot run here (a real corpus, a trained model)
carries ``# doctest: +SKIP`` with the reason on the line before; a module whose every example is
skipped is reported as skipped without being imported.
"""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules_with_examples() -> dict[str, bool]:
    """Module name -> whether at least one of its examples runs (is not marked ``+SKIP``)."""
    found = {}
    for package in ("pipeline", "trainer"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            prompts = [line for line in lines if line.lstrip().startswith(">>>")]
            if prompts:
                parts = path.relative_to(ROOT).with_suffix("").parts
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                found[name] = any("doctest: +SKIP" not in line for line in prompts)
    return found


MODULES = modules_with_examples()


def test_examples_are_found():
    assert MODULES["pipeline.names"] and sum(MODULES.values()) >= 20


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples(name, tmp_path, monkeypatch):
    if not MODULES[name]:
        pytest.skip(f"{name}: every example is marked +SKIP (the reason is in its docstring)")
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.attempted > 0, f"{name}: no example ran"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} example(s) failed (above)"
