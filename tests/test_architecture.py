"""The house's rules, read from the source (AST): no import cycles between modules or between packages; the
dependencies point down the layers of docs/architecture.md; only `pipeline.engine` imports Ray."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pipeline"

# docs/architecture.md, "Packages and what each may import": a package may import its own layer's or lower
# ones
LAYERS = {
    "pipeline": 0,
    "pipeline.exitcodes": 0,
    "pipeline.limits": 0,
    "pipeline.settings": 0,
    "pipeline.logs": 0,
    "pipeline.storage": 0,
    "pipeline.metrics": 0,
    "pipeline.output": 1,
    "pipeline.feature_store": 1,
    "pipeline.preflight": 1,
    "pipeline.shards": 1,
    "pipeline.runner": 1,
    "pipeline.console": 1,
    "pipeline.models": 2,
    "pipeline.data": 2,
    "pipeline.scan": 3,
    "pipeline.hygiene": 3,
    "pipeline.report": 3,
    "pipeline.train": 3,
    "pipeline.eval": 3,
    "pipeline.features": 3,
    "pipeline.engine": 4,
    "pipeline.cli": 5,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    return mods


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """{module: pipeline modules it imports (at any depth: function-level imports too)}, {module: top-level
    third-party names it imports}."""

    def resolve(target: str) -> str:
        while target and target not in mods:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        return target

    edges: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] == "pipeline":
                    for alias in node.names:
                        edges[name].add(resolve(f"{node.module}.{alias.name}"))
                else:
                    external[name].add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "pipeline":
                        edges[name].add(resolve(alias.name))
                    else:
                        external[name].add(alias.name.split(".")[0])
        edges[name].discard(name)
        edges[name].discard("")
    return edges, external


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(n: str) -> None:
        index[n] = low[n] = len(index)
        stack.append(n)
        on.add(n)
        for w in graph.get(n, ()):
            if w not in index:
                visit(w)
                low[n] = min(low[n], low[w])
            elif w in on:
                low[n] = min(low[n], index[w])
        if low[n] == index[n]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == n:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for n in sorted(graph):
        if n not in index:
            visit(n)
    return out


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_and_dependencies_point_down() -> None:
    mods = _modules()
    edges, _ = _imports(mods)
    assert _cycles(edges) == []
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if _package(a) != _package(b):
                packages[_package(a)].add(_package(b))
    assert _cycles(packages) == []
    assert set(LAYERS) >= {_package(m) for m in mods}, "a new package needs its layer here and in the docs"
    upward = sorted(
        f"{a} -> {b}" for a, targets in packages.items() for b in targets if LAYERS[b] > LAYERS[a]
    )
    assert upward == []


def test_only_the_engine_imports_ray() -> None:
    mods = _modules()
    _, external = _imports(mods)
    users = sorted(m for m, names in external.items() if "ray" in names)
    assert users and all(_package(m) == "pipeline.engine" for m in users), users
