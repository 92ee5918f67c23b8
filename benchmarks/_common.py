"""What every benchmark shares: its results go to one folder as STEM.json (the raw numbers) and STEM.md (the
tables the README links), side by side; the tables are written by one helper.

Import it after the benchmark has put the repository first on sys.path (`from benchmarks._common import ...`):
run as a script, sys.path[0] is this folder, not the repository."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parser(doc: str | None, *, quick: str | None = None) -> argparse.ArgumentParser:
    """The benchmark's command line, its module docstring (`doc`) as the --help text, line breaks kept. With
    `quick` (that flag's help): also --quick, a smoke run, and --out, where the results go (`results_dir`)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
        help = "results folder (default results/; --quick: results/tmp/, never the committed files)"
        ap.add_argument("--out", default=None, help=help)
    return ap


def results_dir(out: str | Path | None, quick: bool) -> Path:
    """Where the results go: `out` when given, else results/ (a --quick smoke run: results/tmp/, so it never
    replaces the committed files)."""
    return Path(out) if out else REPO / "results" / ("tmp" if quick else "")


def progress(line: str) -> None:
    """Print a progress line at once (flushed: it shows while a long run goes on, also through a pipe)."""
    print(line, flush=True)


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load averages (recorded before and after a run: the machine is shared)."""
    return [round(v, 2) for v in os.getloadavg()]


def torch_host(**more: Any) -> dict[str, Any]:
    """What a torch benchmark ran on: CPU, cores, torch threads and version (`more`: further fields)."""
    import torch

    cpu = platform.processor() or platform.machine()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **more,
    }


def run_job(name: str, *args: str) -> tuple[float, float]:
    """Run `python jobs/<name>.py args` as a user runs it (a fresh process); returns its wall seconds and the
    job process's own peak RSS in MB (`wait4`'s ru_maxrss: the job's process, not the Ray processes it
    starts). Fails loudly, with the job's stderr, on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        cmd = [sys.executable, str(REPO / "jobs" / f"{name}.py"), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{name} {' '.join(args)} failed ({proc.returncode}): {err.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def timed_job(name: str, *args: str) -> float:
    """`run_job`'s wall seconds."""
    return run_job(name, *args)[0]


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


def write_headline(
    out: str | Path, stem: str, results: Any, headline: dict[str, Any], meta: dict[str, Any], lines: list[str]
) -> None:
    """write_results of a record {results, headline, meta} and its markdown `lines`; then the headline is
    printed, the run's last line (one JSON object, for whoever runs the benchmark)."""
    write_results(out, stem, {"results": results, "headline": headline, "meta": meta}, "\n".join(lines))
    print(json.dumps(headline))


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines: the header, the separator and one line per row (cells formatted by the
    caller); a row whose cell count differs from the header's is refused (it would shift the columns)."""
    lines = [_md_row(header), "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row of {len(row)} cells under a header of {len(header)}: {row!r}")
        lines.append(_md_row(row))
    return lines


def stamp(load_before: list[float], **host: Any) -> dict[str, Any]:
    """What `byline` reads back from a record: the date (UTC), the machine (`torch_host(**host)`) and the load
    average before (`load_before`) and after (now) the run."""
    date = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "date": date,
        "host": torch_host(**host),
        "load_before": load_before,
        "load_after": load_average(),
    }


def byline(command: str, res: dict[str, Any], *, cuda: bool = False) -> str:
    """A torch benchmark page's byline: the command, when, on what (`torch_host`, its GPU with
    `cuda`) and the load average before/after the run (res: date, host, load_before, load_after)."""
    host = res["host"]
    gpu = f", {host['cuda']}" if cuda and host["cuda"] else ""
    return (
        f"Generated by `{command}` on {res['date']} ({host['cpu']}, {host['cores']} cores, torch "
        f"{host['torch']}, {host['threads']} threads{gpu}). Load average before/after: "
        f"{res['load_before']} / {res['load_after']}"
    )


def md_page(
    title: str,
    intro: Sequence[str],
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    notes: Sequence[str],
) -> str:
    """A results page: `# title`, each `intro` paragraph, the table (md_table), then the `notes` lines; blank
    lines between the parts, a newline at the end."""
    lines = [f"# {title}", ""]
    for paragraph in intro:
        lines += [paragraph, ""]
    return "\n".join([*lines, *md_table(header, rows), "", *notes]) + "\n"


def _md_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
