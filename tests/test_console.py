"""The jobs' quiet console: the scan job as a user runs it (a subprocess starting its own local Ray) prints a
few lines and no traceback or ANSI code on stderr, exits 1 naming the counts when most shards are unreadable
(the error budget), and leaves its JSON log in `_run/<scan_date>/` where every line parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.ray_cluster import run_starting_local_ray

REPO = Path(__file__).resolve().parents[1]
MAX_STDERR_LINES = (
    4  # "N shard(s) to scan; starting the workers…", the progress line, the result line (+1 spare)
)


def test_console_shows_status_progress_and_counts_hides_ray_noise(tmp_path: Path) -> None:
    """The quiet console in process (no Ray): Python and C-level writes to fd 2 go to the driver's stderr log,
    the console's lines and the progress line reach the real stderr."""
    code = """
import os, sys
from pipeline.console import Console
from pipeline.runner import Progress
with Console(prefix="scan") as c:
    c.status("starting Ray...")
    print("a Ray warning", file=sys.stderr)
    os.write(2, b"[E core_worker.cc:1] constructor arguments\\n")
    bar = c.shards("scan")
    for i in range(3):
        bar(
            f"s{i}",
            {"rows": 4, "counts": {"ok": 3, "decode_error": 1}},
            Progress(total=3, skipped=0, todo=3),
        )
    c.end_progress()
    c.line("scan succeeded")
    print(c.stderr_log)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, cwd=str(REPO))
    err = proc.stderr.decode()  # bytes: text mode would turn tqdm's \r into line breaks
    assert proc.returncode == 0, err
    lines = err.rstrip("\n").split("\n")  # tqdm redraws its one line with \r
    assert lines[0] == "scan: starting Ray..." and lines[-1] == "scan succeeded" and len(lines) == 3, lines
    bar = lines[1].split("\r")[-1]
    assert "3/3" in bar and "3 errors" in bar and "img/s" in bar, bar
    assert "Ray warning" not in err and "core_worker" not in err
    hidden = Path(proc.stdout.decode().strip().splitlines()[-1])
    assert "a Ray warning" in hidden.read_text() and "constructor arguments" in hidden.read_text()
    hidden.unlink()


@pytest.mark.slow
def test_scan_job_console_is_quiet_and_its_log_parses(tmp_path: Path) -> None:
    """6 shards, 5 unreadable: exit 1 with the counts on one line (error budget); stderr: at most
    MAX_STDERR_LINES lines, no traceback, no ANSI escape; the JSON log has one shard event per finished shard.
    The job starts its own local Ray, which exposes no dashboard (the run log's `ray_started_local`)."""
    from pipeline.models import create_detector, save_detector
    from tests.support.shards import write_raw, write_shards

    write_shards(str(tmp_path / "in"), 1, 3)
    for i in range(1, 6):
        write_raw(str(tmp_path / "in" / f"shard-{i:06d}.tar"), b"not a tar archive")
    save_detector(create_detector("tiny-mole", pretrained=None), str(tmp_path / "det"))
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("GENSCAN_VERBOSE", None)
    out = tmp_path / "out"
    try:
        proc = run_starting_local_ray(
            [
                sys.executable,
                str(REPO / "jobs" / "scan_bucket.py"),
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(out),
                "--detector",
                str(tmp_path / "det"),
                "--scan-date",
                "2026-04-01",
                "--batch-size",
                "8",
                "--ray-num-cpus",
                "2",
                "--read-num-cpus",
                "0.5",
                "--actor-num-cpus",
                "0.5",
                "--read-concurrency",
                "1",
            ],
            timeout=400,
            env=env,
            cwd=str(tmp_path),
        )
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    err = proc.stderr.decode()  # bytes: text mode would turn tqdm's \r into line breaks
    assert proc.returncode == 1, err[-3000:]
    lines = err.rstrip("\n").split("\n")  # tqdm redraws its one line with \r
    assert len(lines) <= MAX_STDERR_LINES, lines
    assert "Traceback" not in err and "\x1b[" not in err, err[-3000:]
    assert (
        lines[0].startswith("scan: ")
        and "shard(s) to scan; starting the workers, loading the detector" in lines[0]
    )
    last = lines[-1]
    assert last.startswith("scan failed: error budget exceeded") and "of 6 shards failed" in last, last
    assert "--max-shard-error-rate 0.5" in last

    log = out / "_run" / "2026-04-01" / "log.jsonl"
    assert str(log) in last
    events = [json.loads(line) for line in log.read_text().splitlines()]  # every line is plain JSON
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    done = [e for e in events if e["event"] == "shard_done"]
    run = json.loads((out / "_run" / "2026-04-01" / "run.json").read_text())
    assert run["status"] == "failed" and run["error_budget"]["exceeded"]
    assert len(done) >= 4 and all(e["shard"].startswith("shard-") for e in done)
    assert {e["event"] for e in events} >= {"scan_start", "shard_done", "scan_failed"}
    # the job started a local Ray (no address, no RAY_ADDRESS) and that Ray serves no dashboard / job API
    (started,) = [e for e in events if e["event"] == "ray_started_local"]
    assert started["dashboard"] is None, started


def test_jobs_without_a_progress_console_keep_json_logs_off_stderr_unless_verbose(tmp_path) -> None:
    """make_demo_data (like report, evaluate, calibrate, import_detector: `job_main(quiet=True)`) prints its
    result and nothing else; --verbose shows the JSON log lines on stderr too."""
    args = ["--out", str(tmp_path / "d"), "--layout", "wds", "--families", "upconv", "--n-per-class", "2"]
    quiet = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "make_demo_data.py"), *args], capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr
    assert not [ln for ln in quiet.stderr.splitlines() if ln.startswith("{")], quiet.stderr
    loud = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "make_demo_data.py"),
            *args,
            "--out",
            str(tmp_path / "e"),
            "--verbose",
        ],
        capture_output=True,
        text=True,
    )
    assert loud.returncode == 0, loud.stderr
    assert [json.loads(ln) for ln in loud.stderr.splitlines() if ln.startswith("{")], loud.stderr
