"""pipeline.store.layout.CacheLayout: every path under the cache root comes from it, absolute, and nowhere
else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.store.layout import CacheLayout

REPO = Path(__file__).resolve().parents[3]

#: names of files and folders directly below the cache root or a dataset folder
CACHE_PARTS = {"encoders", "text-model", "features.h5", "media.h5", "problems.jsonl", "m2f-finetuned.json"}
CACHE_PREFIXES = ("media-", "manifest-")


def _is_cache_part(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in CACHE_PARTS or node.value.startswith(CACHE_PREFIXES)
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        return isinstance(first, ast.Constant) and str(first.value).startswith(CACHE_PREFIXES)
    return False


def _is_cache_root(node: ast.AST) -> bool:
    """``cache``, ``opts.cache``, ``Path(cache)``, ``Path(opts.cache)``."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Path" and node.args:
        node = node.args[0]
    return (isinstance(node, ast.Name) and node.id == "cache") or (
        isinstance(node, ast.Attribute) and node.attr == "cache"
    )


def hand_built_cache_paths(source: str) -> list[str]:
    """Code (docstrings left out) that joins a cache path by hand: ``cache / ...``, ``... / "encoders"``,
    a ``"media-..."`` or ``"manifest-..."`` name."""
    tree = ast.parse(source)
    docstrings = {
        id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if _is_cache_root(node.left) or _is_cache_part(node.left) or _is_cache_part(node.right):
                hits.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Constant | ast.JoinedStr)
            and id(node) not in docstrings
            and _is_cache_part(node)
            and getattr(node, "value", None) not in CACHE_PARTS
        ):
            hits.append(f"line {node.lineno}: {ast.unparse(node)}")
    return hits


def test_the_detector_finds_hand_built_paths():
    bad = [
        'folder = Path(opts.cache) / opts.dataset / "encoders" / key',
        "p = cache / dataset / 'x'",
        'out = root / "text-model" / h',
        'f = folder / "features.h5"',
        'd = base / f"media-{key}"',
        'found = sorted(d.glob("media-*/media.h5"))',
        'k = p.parent.name.removeprefix("media-")',
    ]
    for line in bad:
        assert hand_built_cache_paths(line), line
    good = [
        '"""Writes cache/<dataset>/media-<key>/media.h5 and features.h5."""',
        "path = layout.media_file(key)",
        'x = cached_model(("encoders", spec), build)',
        'clock.timed("encoders", f)',
        'help_text = "Default: cache/<dataset>/encoders/<media hash>/"',
    ]
    for line in good:
        assert not hand_built_cache_paths(line), line


def test_no_module_but_the_layout_builds_a_cache_path():
    files = [
        REPO / "cli.py",
        *sorted((REPO / "pipeline").rglob("*.py")),
        *sorted((REPO / "trainer").rglob("*.py")),
    ]
    offenders = {}
    for f in files:
        if f == REPO / "pipeline" / "store" / "layout.py":
            continue
        hits = hand_built_cache_paths(f.read_text(encoding="utf-8"))
        if hits:
            offenders[str(f.relative_to(REPO))] = hits
    assert not offenders, f"build these paths with pipeline.store.layout.CacheLayout: {offenders}"


def test_every_path_is_absolute_under_the_root_even_from_a_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout = CacheLayout(Path("relcache"), "sample")
    base = tmp_path.resolve() / "relcache" / "sample"
    assert layout.root == tmp_path.resolve() / "relcache" and layout.dataset_dir == base
    paths = [
        layout.manifest(None),
        layout.manifest("corpus"),
        layout.media_dir("k"),
        layout.media_file("k"),
        layout.problems_file("k"),
        layout.encoders_dir("k", "l"),
        layout.text_model_dir("t", "b"),
        layout.text_model_marker("t", "b"),
        layout.features_dir("f"),
        layout.features_file("f"),
        layout.features_config("f"),
    ]
    for p in paths:
        assert p.is_absolute() and p.is_relative_to(base), p
    assert len(set(paths)) == len(paths)
    # the manifest is keyed by the corpus folder wherever it is named from
    assert layout.manifest("corpus") == layout.manifest(tmp_path / "corpus") != layout.manifest(None)
    monkeypatch.chdir("/")
    assert CacheLayout(tmp_path / "relcache", "sample") == layout  # the same cache, named from elsewhere


def test_media_key_reads_back_and_media_files_are_found(tmp_path):
    layout = CacheLayout(tmp_path, "meld")
    assert layout.media_key(layout.media_file("ab12")) == "ab12"
    assert layout.media_files() == []
    for key in ("b", "a"):
        layout.media_dir(key).mkdir(parents=True)
        layout.media_file(key).touch()
    layout.features_dir("c").mkdir()
    assert layout.media_files() == [layout.media_file("a"), layout.media_file("b")]


@pytest.mark.parametrize("dataset", ["", "a/b", ".."])
def test_a_dataset_must_be_a_folder_name(dataset, tmp_path):
    with pytest.raises(ValueError, match="folder name"):
        CacheLayout(tmp_path, dataset)


def test_encoder_folders_are_keyed_by_media_labels_and_recipe_and_all_are_found(tmp_path):
    from pipeline.encoders.recipe_version import ENCODER_RECIPE_VERSION

    layout = CacheLayout(tmp_path, "meld")
    current = layout.encoders_dir("m1", "l1")
    assert current == layout.encoders_dir("m1", "l1", ENCODER_RECIPE_VERSION)
    assert current.parent == layout.dataset_dir / "encoders" / "m1"
    others = [
        layout.encoders_dir("m1", "l2"),
        layout.encoders_dir("m1", "l1", ENCODER_RECIPE_VERSION + 1),
        layout.encoders_dir("m2", "l1"),
    ]
    assert len({current, *others}) == 4
    legacy = layout.dataset_dir / "encoders" / "m0"  # a cache made before the labels and recipe keys
    for folder in (current, *others, legacy):
        (folder / ".train-state").mkdir(parents=True)
        (folder / "audio.pt").touch()
    # export finds the encoders of runs made with any of them (legacy included), never a state folder
    assert layout.all_encoders_dirs() == sorted([current, *others, legacy])
