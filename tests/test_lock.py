"""requirements.lock and pyproject.toml agree: every install goes through the lock (`bash .ci/lock` makes it).

A dependency added to pyproject.toml and not locked, or locked as a direct dependency and dropped from
pyproject.toml, or locked at a version its pyproject range excludes, fails here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SELF = "m2f (pyproject.toml)"
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")


def parse_lock(text: str) -> list[dict]:
    """The lock's entries: name, version, marker, hashes and what pulled each in (uv's `# via` lines)."""
    entries: list[dict] = []
    in_via = False
    for line in text.splitlines():
        head = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if head:
            name, version, marker = head.groups()
            entries.append(
                {
                    "name": canonicalize_name(name),
                    "version": version,
                    "marker": marker,
                    "hashes": [],
                    "via": [],
                }
            )
            in_via = False
            continue
        stripped = line.strip()
        if not entries or not stripped:
            continue
        if stripped.startswith("--hash=sha256:"):
            entries[-1]["hashes"].append(stripped.split(":", 1)[1].rstrip(" \\"))
        elif stripped.startswith("# via"):
            rest = stripped[len("# via") :].strip()
            in_via = not rest
            if rest:
                entries[-1]["via"].append(rest)
        elif stripped.startswith("#   ") and in_via:
            entries[-1]["via"].append(stripped[1:].strip())
        elif stripped.startswith("#"):
            in_via = False
    return entries


def project_requirements() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def lock_entries() -> list[dict]:
    return parse_lock((ROOT / "requirements.lock").read_text())


def test_parser_reads_uv_output():
    text = (
        "dask==2026.8.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via m2f (pyproject.toml)\n"
        "distributed==2026.8.0 ; python_full_version >= '3.12' \\\n    --hash=sha256:cc\n"
        "    # via\n    #   dask\n    #   m2f (pyproject.toml)\n"
    )
    a, b = parse_lock(text)
    assert (a["name"], a["version"], a["hashes"], a["via"]) == ("dask", "2026.8.0", ["aa", "bb"], [SELF])
    assert b["marker"] == "python_full_version >= '3.12'" and b["via"] == ["dask", SELF]


def test_every_pyproject_dependency_is_locked_within_its_range():
    entries = lock_entries()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        locked = [e for e in entries if e["name"] == name]
        assert locked, f"{req.name} is in pyproject.toml but not in requirements.lock: run `bash .ci/lock`"
        assert any(SELF in e["via"] for e in locked), f"{req.name} is not locked as a direct dependency"
        for e in locked:
            assert req.specifier.contains(e["version"], prereleases=True), (
                f"requirements.lock holds {req.name}=={e['version']}, outside pyproject's {req.specifier}"
            )


def test_every_direct_lock_entry_is_in_pyproject():
    direct = {canonicalize_name(r.name) for r in project_requirements()}
    for e in lock_entries():
        if SELF in e["via"]:
            assert e["name"] in direct, (
                f"requirements.lock has {e['name']} as a dependency of m2f, pyproject.toml does not: "
                "run `bash .ci/lock`"
            )


def test_every_lock_entry_is_exact_and_hashed():
    entries = lock_entries()
    assert len(entries) > 50
    for e in entries:
        assert e["hashes"], f"{e['name']} has no hash in requirements.lock"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in e["hashes"])


def test_torch_family_is_pinned_exactly_and_locked_at_those_pins():
    """torch, torchvision and torchaudio load together only as a set (torchaudio 2.11.1 fails beside
    torch 2.11.0): pyproject pins each exactly, so `pip install m2f` without the lock gets the same set."""
    reqs = {canonicalize_name(r.name): r for r in project_requirements()}
    entries = lock_entries()
    for name in TORCH_FAMILY:
        (spec,) = list(reqs[name].specifier)
        assert spec.operator == "==" and "*" not in spec.version, f"{name} must be pinned exactly"
        assert {e["version"] for e in entries if e["name"] == name} == {spec.version}
