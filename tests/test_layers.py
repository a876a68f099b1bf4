"""The floors of radixserve/ (docs/architecture.md): every import, at module level or inside a
function, runs from a folder (or top-level module) to one below it in FLOORS, so no import runs back
up and no circle crosses folders. Read from the source with ast; nothing is imported."""
from __future__ import annotations

import ast
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "radixserve"))

# NOTE: lowest first. A new folder or top-level module takes its place here, above all it imports.
FLOORS = ["syspath", "parent_watch", "errors", "sample_id", "config", "outputs", "sampling_params", "engine_flags", "core", "cache", "speculative", "grammar", "sampling",
          "distributed", "models", "runtime", "scheduler", "engine", "offline", "lang", "server", "router", "bench", "deploy", "cli",
          "__main__"]
# what `from radixserve import NAME` reaches (radixserve/__init__.py)
FACE = {"Engine": "engine", "LLM": "offline", "EngineConfig": "config", "SamplingParams": "sampling_params", "RequestOutput": "outputs",
        "StreamDelta": "outputs", "TokenLogprob": "outputs"}


def _imports(path: str, module: list[str]):
    """(imported part of radixserve, line) for every import of a radixserve module in `path`."""
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = module[:-node.level] if node.level else []
            names = [base + (node.module.split(".") if node.module else [])]
            if names[0] == ["radixserve"]:
                names = [["radixserve", FACE.get(a.name, a.name)] for a in node.names]
        else:
            continue
        for name in names:
            if len(name) > 1 and name[0] == "radixserve" and name[1] != "kernels":
                yield name[1], node.lineno


def _sources():
    for folder, _, files in os.walk(ROOT):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                module = ["radixserve"] + os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if module[1] != "__init__":
                    yield path, module


def test_every_part_has_a_floor():
    parts = {m[1] for _, m in _sources()}
    assert parts <= set(FLOORS), f"give these a floor in FLOORS: {sorted(parts - set(FLOORS))}"


def test_imports_only_run_down():
    floor = {name: i for i, name in enumerate(FLOORS)}
    up = []
    for path, module in _sources():
        for target, line in _imports(path, module):
            if target != module[1] and floor.get(target, -1) >= floor[module[1]]:
                up.append(f"{os.path.relpath(path, ROOT)}:{line} imports radixserve.{target}")
    assert not up, "imports that run back up (or sideways) a floor:\n" + "\n".join(up)


def test_core_imports_nothing_of_radixserve():
    for path, module in _sources():
        if module[1] == "core":
            assert {t for t, _ in _imports(path, module)} <= {"core"}, path
