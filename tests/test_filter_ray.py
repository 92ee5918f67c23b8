"""The filter as a Ray job: `ray job submit` of jobs/filter_shards.py --engine ray on a real local Ray head
(one Ray task per shard). Its output is byte-identical to the local engine's, and a refused run reports the
driver's real exit code (3) and writes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.cli.filter_shards import main as filter_main
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


@pytest.mark.slow
def test_ray_filter_stops_at_the_error_budget_before_planning_every_shard(tmp_path, shared_s3_ray) -> None:
    """A Ray-mode filter over 24 shards of which 20 have a scan shard error (a truncated tar): the plans
    arrive as their tasks finish (`ray_map` yields through `ray.wait`), so the error budget (at most half the
    shards may fail) stops the run once 13 failures are in: exit 1, nothing written, and the shards not yet
    planned are cancelled instead of run."""
    import torch

    from pipeline.models import DetectorConfig, create_detector, save_detector
    from pipeline.models.meta import DetectorMeta
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import run_scan
    from tests.support.shards import good_samples, tar_bytes, truncated_tar_bytes, write_raw

    corpus = tmp_path / "corpus"
    n_shards, n_bad = 24, 20
    for i in range(n_shards):
        samples = good_samples(4, seed=i, prefix=f"{i:02d}_", size=(24, 20))
        data = truncated_tar_bytes(samples) if i >= n_shards - n_bad else tar_bytes(samples)
        write_raw(str(corpus / f"shard-{i:06d}.tar"), data)
    torch.manual_seed(0)
    det = create_detector(DetectorConfig.load("tiny-mole"), pretrained=None, generators=["famA"]).eval()
    ckpt = str(tmp_path / "detector")
    save_detector(det, ckpt, DetectorMeta(threshold=0.5, unknown_threshold=0.6))
    scan = str(tmp_path / "scan")
    threads = torch.get_num_threads()
    try:  # the in-process scan (the real read/score/write code); every truncated shard gets a shard_error row
        run = run_scan(
            ScanConfig.parse(
                {"input": str(corpus), "output": scan, "detector": ckpt, "max_shard_error_rate": 1.0}
            )
        )
    finally:
        torch.set_num_threads(threads)
    assert run["totals"]["counts"]["shard_error"] == n_bad

    out = tmp_path / "clean"
    res = submit_job(
        shared_s3_ray["head"],
        [
            *FILTER,
            "--engine",
            "ray",
            "--task-cpus",
            "2",
            "--on-shard-error",
            "skip",
            "--scan",
            scan,
            "--input",
            str(corpus),
            "--output",
            str(out),
        ],
        timeout_s=300,
    )
    assert res.status == "FAILED" and res.driver_exit_code == 1, (
        res.status,
        res.driver_exit_code,
        res.logs[-3000:],
    )
    assert "error budget exceeded (run stopped early)" in res.logs
    cancelled = [json.loads(ln) for ln in res.logs.splitlines() if '"tasks_cancelled"' in ln]
    assert len(cancelled) == 1 and 0 < cancelled[0]["tasks"] < n_shards, cancelled
    assert not out.exists()
