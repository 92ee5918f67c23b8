"""benchmarks/driver.py's shard-count sweep runs the scan driver's own per-shard path
(`pipeline.scan.job._scan` with the error-budget guard, the progress line and the run log) over synthetic
shard summaries. The sweep behind results/driver.md must keep running against the product it measures: one
small size of it here, in a fresh process as the sweep runs each size (timings are not asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.subproc import run_python


@pytest.mark.parametrize("old_guard", [False, True], ids=["guard", "old-guard"])
def test_sweep_size_runs_the_scan_drivers_path_over_every_shard(tmp_path: Path, old_guard: bool) -> None:
    n = 300
    args = ["benchmarks/driver.py", "--contract-child", str(n), *(["--old-guard"] if old_guard else [])]
    proc = run_python(*args, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the child asserts that _scan reported every shard done and the run's totals counted each once
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shards"] == n and result["old_guard"] is old_guard
    assert result["cpu_us_per_shard"] > 0 and result["peak_rss_mb"] > 0
    assert list(tmp_path.iterdir()) == []  # the sweep's synthetic run folder is removed after each size
