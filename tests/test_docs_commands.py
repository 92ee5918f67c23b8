"""Every command-line contract the README and docs/ show still holds: each job a fenced block names answers
`--help`, and every flag a documented command passes to it is one that job's --help lists (users' scripts copy
these lines). Each job's --help is run once, as a user runs it (`python jobs/<job>.py --help`)."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

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
    cmd = (
        [sys.executable, str(REPO / "jobs" / f"{name}.py")] if kind == "job" else [sys.executable, "-m", name]
    )
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, (program, proc.stderr[-2000:])
    return proc.stdout


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
