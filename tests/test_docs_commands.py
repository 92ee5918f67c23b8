"""Every command-line contract the README and docs/ show still holds: each job a fenced block names answers
`--help`, and every flag a documented command passes to it is one that job's --help lists (users' scripts copy
these lines). Each job's --help is run once, by its own entry point (`jobs/<job>.py` run as `__main__`, in
this process: the blocks that can run here are run as commands by tests/test_docs_readme.py,
test_docs_guides.py and test_docs_training.py). And every fenced block of the docs is accounted for: run by
one of those modules (or by tests/test_queries_doc.py), a listing, or marked with the reason it cannot run
here."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.support.docs_run import QUERY_DOC, RUN_BY, blocks, commands, runnable

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
JOB = re.compile(r"(?:^|[\s/])jobs/([a-z_]+)\.py\b(.*)")
MODULE = re.compile(r"python -m (pipeline(?:\.[a-z_]+)+)\b(.*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _commands() -> list[tuple[str, str, str]]:
    """(doc, program, the rest of the command line) for every documented job or module call, in a fenced block
    (line continuations joined) or an inline code span; a `ray job submit ... --` prefix is not part of the
    job's flags."""
    out = []
    for doc in DOCS:
        in_block = False
        lines: list[str] = []
        for line in doc.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            lines.extend([line] if in_block else re.findall(r"`([^`]+)`", line))
        text = "\n".join(lines).replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0]
            for pattern, kind in ((JOB, "job"), (MODULE, "module")):
                m = pattern.search(line)
                if m:
                    out.append((doc.name, f"{kind}:{m.group(1)}", m.group(2)))
    return out


COMMANDS = _commands()


@cache
def _help(program: str) -> str:
    kind, name = program.split(":", 1)
    path = str(REPO / "jobs" / f"{name}.py")
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [path if kind == "job" else name, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            if kind == "job":
                runpy.run_path(path, run_name="__main__")
            else:
                runpy.run_module(name, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    assert done.value.code in (0, None), (program, out.getvalue()[-2000:])
    return out.getvalue()


def test_the_docs_show_every_job() -> None:
    shown = {p.split(":", 1)[1] for _, p, _ in COMMANDS if p.startswith("job:")}
    jobs = {p.stem for p in (REPO / "jobs").glob("*.py")}
    assert shown == jobs, (
        f"jobs without a documented command: {jobs - shown}; documented, not a job: {shown - jobs}"
    )


@pytest.mark.parametrize("program", sorted({p for _, p, _ in COMMANDS}))
def test_every_documented_flag_is_one_the_job_accepts(program: str) -> None:
    offered = set(FLAG.findall(_help(program)))
    used = {
        (doc, flag)
        for doc, p, rest in COMMANDS
        if p == program
        for flag in FLAG.findall(rest)
        if flag != "--"
    }
    unknown = sorted((doc, flag) for doc, flag in used if flag not in offered)
    assert not unknown, f"{program}: documented flags its --help does not list: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_fenced_block_is_run_or_says_why_not(doc: Path) -> None:
    """A bash (or sql) block is run (its doc is in RUN_BY) unless marked `skip: <reason>`; a json block
    marked `file` is written for the blocks that read it; sql / python blocks are docs/queries.md's (run by
    tests/test_queries_doc.py) or marked; a block without a language is a listing."""
    unaccounted = []
    for b in blocks(doc):
        if b.mark is not None:
            assert b.mark[1].strip(), f"{b.where}: a docs-test marker needs its reason or file name"
            continue
        if b.lang in ("bash", "sql") and doc.name in RUN_BY:
            continue
        if b.lang in ("sql", "python") and doc.name == QUERY_DOC:
            continue
        if b.lang == "":
            continue
        unaccounted.append(f"{b.where} ({b.lang})")
    assert not unaccounted, f"fenced blocks neither run nor marked with why not: {unaccounted}"
    if doc.name in RUN_BY:
        module = REPO / RUN_BY[doc.name]
        assert module.is_file() and doc.name in module.read_text(), (doc.name, RUN_BY[doc.name])


def test_a_block_marked_same_runs_elsewhere_word_for_word() -> None:
    """A `same as <doc>` block is not run twice: each of its commands is a command of one of <doc>'s run
    blocks, exactly."""
    by_name = {d.name: d for d in DOCS}
    checked = 0
    for doc in DOCS:
        for b in blocks(doc):
            if not b.mark or b.mark[0] != "same as":
                continue
            other = by_name[b.mark[1]]
            assert other.name in RUN_BY, f"{b.where}: {other.name} is not run"
            there = {c for ob in runnable(other) for c in commands(ob.text)}
            missing = [c for c in commands(b.text) if c not in there]
            assert not missing, f"{b.where}: not in {other.name}'s run blocks: {missing}"
            checked += 1
    assert checked >= 2
