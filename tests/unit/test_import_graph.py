"""Our modules import each other without cycles and never upward (layering of docs/architecture.md).

Imports are read with `ast` from every file of the package, function-level ones included (a cycle hidden in a
function still couples the modules); only `if TYPE_CHECKING:` blocks are skipped, since they never run.
Importing `a.b.c` implicitly runs the package `a.b`'s `__init__`; that parent edge is not counted, an explicit
`from a.b import name` of a non-module name is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import megatron_endprompt

PACKAGE = Path(megatron_endprompt.__file__).parent
ROOT = "megatron_endprompt"

LAYERS = {
    "positions": 0,
    "data": 1,
    "model": 2,
    "parallel": 3,
    "training": 4,
    "convert": 4,
    "eval": 5,
    "demo_corpus": 6,
    "experiments": 7,
    "demo": 8,
    "train": 8,
}
"""positions <- data <- model <- parallel <- training / convert <- eval, then the top-level modules above them:
demo_corpus (the synthetic corpus) <- experiments (what the demo and the examples share) <- demo / train (the
entry points). Modules of one level are peers that must not import each other (training and convert; demo and
train)."""
BASE = {"checkpoint_layout", "machine", "warnings_filter"}
"""Top-level helpers below every layer: they import nothing of ours."""
ENTRY_POINTS = {""}
"""The package root (its lazy `load_model`) may import anything."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(tree: ast.AST):
    """Import nodes, skipping the bodies of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _imports_of(child))
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def _targets(name: str, node: ast.AST, is_package: bool, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = name.split(".") if is_package else name.split(".")[:-1]
        if node.level:
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module
        candidates = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
    out = set()
    for candidate in candidates:
        while candidate and candidate not in modules:
            candidate = candidate.rpartition(".")[0]
        if candidate.startswith(ROOT) and candidate != name:
            out.add(candidate)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set()
        for node in _imports(tree):
            graph[name] |= _targets(name, node, path.name == "__init__.py", modules)
    return graph


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def _level(name: str) -> float | None:
    top = name.split(".")[1] if "." in name else ""
    if top in BASE:
        return -1
    if top in ENTRY_POINTS:
        return None  # may import anything
    return LAYERS[top]


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # megatron_io imports the layout at module level, the model builder inside a function:
    assert "megatron_endprompt.checkpoint_layout" in graph["megatron_endprompt.convert.megatron_io"]
    assert "megatron_endprompt.model.gpt" in graph["megatron_endprompt.convert.megatron_io"]
    assert "megatron_endprompt.training.config" not in graph["megatron_endprompt.training.validation"]


def test_no_import_cycle():
    graph = import_graph()
    cycles = [c for name in sorted(graph) if (c := _cycle_from(name, graph))]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_upward():
    graph = import_graph()
    bad = []
    for name, targets in sorted(graph.items()):
        level = _level(name)
        if level is None:
            continue
        for target in sorted(targets):
            same_subpackage = name.split(".")[1:2] == target.split(".")[1:2]
            target_level = _level(target)
            if not same_subpackage and (target_level is None or target_level >= level):
                bad.append(f"{name} -> {target}")
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)
