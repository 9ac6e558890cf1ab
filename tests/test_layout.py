"""The package layout's rules: what the online package may import, and no import cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "internalizer", "demo")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, top_level_only: bool) -> set[str]:
    """Absolute module names imported by a file (all of them, or only those run when it is imported)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def test_the_online_package_imports_neither_the_offline_package_nor_the_demo():
    offenders = {
        name: sorted(
            i
            for i in imports_of(path, top_level_only=False)
            if i.split(".")[0] in {"internalizer", "demo", "tests", "torch"}
        )
        for name, path in our_modules().items()
        if name.split(".")[0] == "gateway"
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_there_are_no_import_cycles():
    # imports inside functions count too: a lazy import hides a cycle from Python, not from a reader
    modules = our_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = {i for i in imports_of(path, top_level_only=False) if i in modules and i != name}
        # importing a.b.c first imports its packages a and a.b
        parts = name.split(".")
        edges |= {".".join(parts[:n]) for n in range(1, len(parts))} & modules.keys()
        graph[name] = edges
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_importing_the_app_and_the_cli_loads_no_torch_internalizer_or_demo():
    code = (
        "import json, sys; import gateway.app, gateway.cli, gateway.cli.logs, gateway.cli.serve; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'internalizer', 'demo', 'tests', 'transformers'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_every_online_and_demo_module_imports():
    names = [
        name
        for name in our_modules()
        if not name.endswith("__main__") and not name.startswith("internalizer")
    ]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, check=True, timeout=300)
