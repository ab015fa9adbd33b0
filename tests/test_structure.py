"""The package layout keeps its rules (docs/DESIGN.md section 8): one module per name, no cycle, no reach
into another subpackage's private names."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "trainer")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages and cli.py."""
    found = {"cli": ROOT / "cli.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _package_of(module: str, modules: dict[str, Path]) -> str:
    """The subpackage a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    if modules[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def _imports(path: Path, top_level_only: bool = False, type_checking: bool = True):
    """(imported module, imported names) of a file: every import, or only those that run when the module is
    imported (``top_level_only``); imports under ``if TYPE_CHECKING:`` unless ``type_checking`` is False."""
    tree = ast.parse(path.read_text(), filename=str(path))

    def walk(nodes):
        for node in nodes:
            if not type_checking and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, []
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.module, [a.name for a in node.names]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and top_level_only:
                continue
            yield from walk(ast.iter_child_nodes(node))

    yield from walk(tree.body)


def test_every_module_name_is_used_once():
    by_name = defaultdict(list)
    for module, path in _modules().items():
        if path.name != "__init__.py":
            by_name[path.stem].append(module)
    repeated = {name: mods for name, mods in by_name.items() if len(mods) > 1}
    assert not repeated, f"module names used more than once: {repeated}"


def test_no_private_name_is_imported_from_another_subpackage():
    modules = _modules()
    crossings = []
    for module, path in modules.items():
        for target, names in _imports(path):
            if target not in modules:
                continue
            for name in names:
                imported = f"{target}.{name}"
                if name.startswith("_") and not name.startswith("__") and imported not in modules:
                    if _package_of(target, modules) != _package_of(module, modules):
                        crossings.append(f"{module} imports {target}.{name}")
    assert not crossings, "\n".join(crossings)


def test_imports_have_no_cycle():
    """No cycle, counting imports inside functions and for type checking: a lazy import hides a cycle from
    Python, not from a reader."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for target, names in _imports(path):
            for candidate in [target] + [f"{target}.{n}" for n in names]:
                if candidate in modules and candidate != module:
                    edges.add(candidate)
        graph[module] = edges
    cycles = []
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_rules_see_what_they_check(tmp_path):
    """The checks read real files: the cli module and a known import edge are found."""
    modules = _modules()
    assert "trainer.dialogue.fit" in modules and "pipeline.store.cache" in modules
    imported = {t for t, _ in _imports(modules["cli"])}
    assert any(t.startswith("trainer.") for t in imported)
