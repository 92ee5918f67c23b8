"""The test suite's own rules, checked on its source (ast, no imports of the modules): no test module imports
another (shared code lives in tests/support/ or tests/conftest.py); a skip is only ever for a missing CUDA
device (a skip on anything else would hide a rename or a missing tool); no assert on elapsed wall-clock time
outside a polling loop (the machine is shared: assert bounded work, or let a pytest-timeout mark fail a
hang)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = sorted(TESTS.glob("test_*.py"))
CLOCKS = {"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns", "time_ns"}


# Parsed at collection, on the main thread before any test starts a thread (see conftest.py on gh-106905).
TREES = {path: ast.parse(path.read_text(), filename=str(path)) for path in MODULES}


def _tree(path: Path) -> ast.Module:
    return TREES[path]


def _imported_test_modules(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[-1].startswith("test_")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.split(".")[-1].startswith("test_"):
                found.append(mod)
            elif mod in ("tests", "") and any(a.name.startswith("test_") for a in node.names):
                found += [f"{mod}.{a.name}" for a in node.names if a.name.startswith("test_")]
    return found


def _is_clock_call(node: ast.AST) -> bool:
    """time.monotonic() / time.perf_counter() / time.time() ..."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCKS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "time"
    )


def _reads_clock(node: ast.AST, clock_names: set[str]) -> bool:
    return any(_is_clock_call(n) or (isinstance(n, ast.Name) and n.id in clock_names) for n in ast.walk(node))


def _wall_clock_asserts(tree: ast.Module) -> list[int]:
    """Line numbers of asserts that read the clock (directly or through a name assigned from it) and are not
    inside a `while` loop (a polling wait whose deadline assert fails a hang is allowed)."""
    lines = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        clock_names: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and _reads_clock(node.value, clock_names):
                clock_names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        polling = {id(n) for w in ast.walk(fn) if isinstance(w, ast.While) for n in ast.walk(w)}
        lines += [
            node.lineno
            for node in ast.walk(fn)
            if isinstance(node, ast.Assert)
            and id(node) not in polling
            and _reads_clock(node.test, clock_names)
        ]
    return sorted(set(lines))


def _skip_reasons(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, reason) of every pytest.skip(...), pytest.importorskip(...) and skipif(..., reason=...)."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = node.func.attr
        if name == "importorskip":
            out.append((node.lineno, "importorskip"))
        elif name in ("skip", "skipif"):
            texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            texts += [
                k.value.value
                for k in node.keywords
                if k.arg in ("reason", "msg") and isinstance(k.value, ast.Constant)
            ]
            out.append((node.lineno, " ".join(str(t) for t in texts)))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_no_test_module_imports_another(path: Path) -> None:
    assert _imported_test_modules(_tree(path)) == [], "move the shared code to tests/support/ or conftest.py"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_skips_only_for_a_missing_cuda_device(path: Path) -> None:
    bad = [(line, why) for line, why in _skip_reasons(_tree(path)) if "CUDA" not in why]
    assert bad == [], "a skip may only say the CUDA device is missing; fail instead"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_no_wall_clock_asserts(path: Path) -> None:
    assert _wall_clock_asserts(_tree(path)) == [], "assert bounded work, or guard a hang with a timeout mark"


def test_the_checks_catch_what_they_are_for() -> None:
    """Each rule flags a module that breaks it (so the checks above cannot pass vacuously)."""
    bad = ast.parse(
        "from tests.test_filter import RULES\n"
        "import tests.test_report\n"
        "from tests import test_policy\n"
        "import time, pytest\n"
        "def test_x():\n"
        "    t = time.monotonic()\n"
        "    elapsed = time.monotonic() - t\n"
        "    assert elapsed < 5\n"
        "    assert time.perf_counter() - t < 2\n"
        "    pytest.skip('chromium not installed')\n"
        "    pytest.importorskip('cv2')\n"
        "    while True:\n"
        "        assert time.monotonic() < t + 60, 'no marker within 60 s'\n"
        "    pytest.skip('no CUDA device')\n"
    )
    assert _imported_test_modules(bad) == ["tests.test_filter", "tests.test_report", "tests.test_policy"]
    assert _wall_clock_asserts(bad) == [8, 9]
    assert [line for line, why in _skip_reasons(bad) if "CUDA" not in why] == [10, 11]
