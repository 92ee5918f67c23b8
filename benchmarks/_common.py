"""What every benchmark shares: its results go to one folder as STEM.json (the raw numbers) and STEM.md (the
tables the README links), side by side; the tables are written by one helper.

Import it after the benchmark has put the repository first on sys.path (`from benchmarks._common import ...`):
run as a script, sys.path[0] is this folder, whose pipeline.py would shadow the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def timed_job(name: str, *args: str) -> float:
    """Run `python jobs/<name>.py args` as a user runs it (a fresh process); returns its wall seconds (fails
    loudly, with the job's stderr, on a non-zero exit)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def write_results(
    out: str | Path,
    stem: str,
    result: dict[str, Any],
    markdown: str,
    *,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write OUT/STEM.json (`result`, indented; `default` as json.dumps takes it) and OUT/STEM.md
    (`markdown`), creating OUT; returns the markdown file's path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2, default=default) + "\n")
    md = folder / f"{stem}.md"
    md.write_text(markdown)
    return md


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines: the header, the separator and one line per row (cells formatted by the
    caller); a row whose cell count differs from the header's is refused (it would shift the columns)."""
    lines = [_md_row(header), "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row of {len(row)} cells under a header of {len(header)}: {row!r}")
        lines.append(_md_row(row))
    return lines


def _md_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
