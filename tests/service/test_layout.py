"""The layout of ``service/`` as docs/architecture.md draws it, read from the code's own imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
#: Layers from the bottom up; a module may import its own layer and those below, never one above.
LAYERS = [
    ["service.contract", "service.errors"],
    ["service.images", "service.feedback", "service.storage"],
    ["service.settings", "service.rollout"],
    ["service.telemetry"],
    ["service.core"],
    ["service.http", "service.grpc"],
    ["service.app", "service.controller"],
    ["service.server", "service.__main__"],
]
MAX_LINES = 350
SIZE_REASON = "One module of this size on purpose"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SERVICE.rglob("*.py") if "generated" not in p.parts}


def imports_of(path: Path) -> set[str]:
    """Every ``service.*`` module ``path`` imports, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    known = modules()
    return {name for name in found if name in known}


def layer_of(name: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{name} is in no layer of LAYERS: add it where it belongs")


def test_every_module_has_a_layer() -> None:
    for name in modules():
        if name != "service":
            layer_of(name)


def test_no_import_runs_upward() -> None:
    upward = [
        f"{name} -> {target}"
        for name, path in modules().items()
        if name != "service"
        for target in imports_of(path)
        if target != "service" and layer_of(target) > layer_of(name)
    ]
    assert not upward, upward


def test_no_two_modules_import_each_other() -> None:
    graph = {name: imports_of(path) - {name} for name, path in modules().items()}
    # Importing a package runs its __init__, so an import of service.x.y also imports service.x.
    for targets in graph.values():
        for target in list(targets):
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in graph)
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if target == node or target == "service" or node.startswith(target + "."):
                continue  # a module's own package is being initialised when it runs
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(modules()))
def test_a_long_module_says_why(name: str) -> None:
    path = modules()[name]
    lines = len(path.read_text().splitlines())
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert lines <= MAX_LINES or SIZE_REASON in docstring, f"{path}: {lines} lines and no reason at its top"


def test_the_serving_side_never_imports_tensorflow() -> None:
    for path in modules().values():
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in {"tensorflow", "keras", "tf2onnx"}], path
