"""The layers point one way: `bge_core` is a pure library, and no module of `src/` is part of an import cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

#: What `bge_core` must never import: adapters, applications, frameworks, Milvus, HTTP, Ray, click, file formats.
FORBIDDEN_IN_CORE = [
    "bge_cli", "bge_server", "bge_ray", "bge_eval",
    "bge_milvus", "bge_langchain", "bge_llamaindex", "bge_haystack", "haystack_integrations",
    "langchain_core", "llama_index", "haystack", "pymilvus", "milvus_lite",
    "click", "pyarrow", "fastapi", "starlette", "uvicorn", "httpx", "ray",
]

IMPORT_ALL_OF_CORE = """
import importlib, json, pkgutil, sys
import bge_core
names = ["bge_core"] + [m.name for m in pkgutil.walk_packages(bge_core.__path__, "bge_core.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def test_bge_core_and_every_submodule_import_no_framework_milvus_http_ray_click_or_pyarrow():
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL_OF_CORE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"bge_core.engine.workers", "bge_core.loading", "bge_core.compat", "bge_core.tiny"} <= set(report["modules"])
    loaded = set(report["loaded"])
    leaked = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_IN_CORE)
    assert not leaked, f"importing bge_core pulled in {leaked}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """First-party modules `path` imports when it runs, at module level or inside functions
    (imports only a type checker sees are left out: they never execute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) - {module_name(f)} for f in files}


def test_no_import_cycle_anywhere_in_src():
    graph = import_graph()
    # `loading` imports the workers inside a function: such imports count too.
    assert len(graph) > 50 and "bge_core.engine.workers" in graph["bge_core.loading"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_point_down():
    """Core imports no other package of ours; adapters import no application; the applications other
    than the command line (its entry point) import neither the command line nor each other, except
    `bge_cli.io`, the project's file formats (`bge_ray` writes `bge encode`'s Parquet layout)."""
    graph = import_graph()
    applications = ("bge_cli", "bge_server", "bge_ray", "bge_eval")
    for module, imports in graph.items():
        top = module.split(".")[0]
        tops = {name.split(".")[0] for name in imports}
        if top == "bge_core":
            assert tops <= {"bge_core"}, f"{module} imports {sorted(tops - {'bge_core'})}"
        elif top not in applications:
            assert not tops & set(applications), f"adapter {module} imports an application: {sorted(tops)}"
        elif top != "bge_cli":
            others = {name for name in imports if name.split(".")[0] in applications} - {"bge_cli.io"}
            others = {name for name in others if name.split(".")[0] != top}
            assert not others, f"application {module} imports {sorted(others)}"
