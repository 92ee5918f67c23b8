"""The filter as a Ray job: `ray job submit` of jobs/filter_shards.py --engine ray on a real local Ray head
(one Ray task per shard). Its output is byte-identical to the local engine's, and a refused run reports the
driver's real exit code (3) and writes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jobs.filter_shards import main as filter_main
from tests.support.hygiene import RULES, RUN_RECORDS, shared_scans, tree_bytes
from tests.support.ray_cluster import submit_job

REPO = Path(__file__).resolve().parents[1]
FILTER = [sys.executable, str(REPO / "jobs" / "filter_shards.py")]


@pytest.mark.slow
def test_ray_job_output_equals_local_engine(tmp_path_factory, tmp_path, capsys, shared_s3_ray) -> None:
    shared = shared_scans(tmp_path_factory)
    local = tmp_path / "local"
    assert (
        filter_main(["--scan", shared.scan, "--input", shared.corpus.root, "--output", str(local), *RULES])
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "ray"
    head = shared_s3_ray["head"]  # the run's shared head (tests/conftest.py)
    # 2 CPUs a task: at most two task processes on the shared 4-CPU head (each costs 2-4 CPU-s to start)
    res = submit_job(
        head,
        [
            *FILTER,
            "--engine",
            "ray",
            "--task-cpus",
            "2",
            "--scan",
            shared.scan,
            "--input",
            shared.corpus.root,
            "--output",
            str(out),
            *RULES,
        ],
        timeout_s=300,
    )
    assert res.status == "SUCCEEDED" and res.driver_exit_code in (0, None), res.logs[-4000:]
    assert "tasks_submitted" in res.logs
    refused = tmp_path / "refused"
    res = submit_job(
        head,
        [
            *FILTER,
            "--engine",
            "ray",
            "--scan",
            shared.scan,
            "--input",
            shared.corpus.root,
            "--output",
            str(refused),
        ],
        timeout_s=300,
    )
    assert res.status == "FAILED" and res.driver_exit_code == 3, (res.status, res.driver_exit_code)
    assert "the scan could not read this shard" in res.logs
    assert not refused.exists()
    skip = (*RUN_RECORDS, "_run/config.json")
    assert tree_bytes(out, skip=skip) == tree_bytes(local, skip=skip)
