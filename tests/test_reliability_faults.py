"""Faults: transient object-storage failures, a missing shard, a shard that never answers, a scoring actor
killed mid-job, the driver killed mid-job then `--resume`. Every wait is bounded; rows are exactly once.

Object storage is a real moto S3 server behind tests/support/faultproxy.py (503 Slow Down, connection resets,
slow responses, bounded); the scan runs as a real `ray job submit` on a real Ray head whose workers reach S3
only through the proxy (AWS_ENDPOINT_URL = the proxy, set before the head starts).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.shards import list_shard, read_shard
from tests.support import badinputs as bi
from tests.support.faultproxy import FaultPlan, FaultProxy, fault_proxy
from tests.support.ray_cluster import SMALL_SCAN, job_actors
from tests.support.s3 import moto_s3_server

REPO = Path(__file__).resolve().parents[1]
SCAN = [sys.executable, str(REPO / "jobs" / "scan_bucket.py")]
BUCKET = "faults"
N_LONG, PER_LONG = 8, 24  # the kills came at 1-3 durable shards in every run so far: >= 5 shards to go
SLOW = ["--batch-size", "8", "--chunk-rows", "8", *SMALL_SCAN]  # one shard at a time: markers come one by one
FAST = ["--batch-size", "16", *SMALL_SCAN]


def _s3fs(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


# ------------------------------------------------------------------ read_shard against the proxy (no Ray)


@pytest.fixture()
def proxied_s3(s3_server) -> Iterator[tuple[FaultProxy, object]]:
    """moto + fault proxy; AWS_ENDPOINT_URL points at the proxy while the test runs. Yields (proxy, a direct
    s3fs client to moto for setup)."""
    direct = _s3fs(s3_server["AWS_ENDPOINT_URL"])
    if not direct.exists(BUCKET):  # moto's backend is per process: the bucket may exist from another test
        direct.mkdir(BUCKET)
    with fault_proxy(s3_server["AWS_ENDPOINT_URL"]) as proxy:
        saved = os.environ["AWS_ENDPOINT_URL"]
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        try:
            yield proxy, direct
        finally:
            os.environ["AWS_ENDPOINT_URL"] = saved


def test_reads_are_buffered(proxied_s3) -> None:
    """PLATFORM.md: unbuffered tar reads cost ~92 requests/shard. In memory: one GET; streamed: one GET per
    block (plus the stat)."""
    proxy, direct = proxied_s3
    data = bi.tar_bytes(bi.good_members(40))  # ~300 KB, 80 members
    direct.pipe("faults/buf.tar", data)
    c = read_shard("s3://faults/buf.tar")
    assert c.error is None and len(c.samples) == 40
    assert proxy.stats.requests["GET"] == 1 and proxy.stats.requests["HEAD"] <= 2
    proxy.set_plan(FaultPlan())
    block = 64 * 1024
    c = list_shard("s3://faults/buf.tar", max_in_memory_bytes=1000, block_size=block)
    assert c.error is None and len(c.samples) == 40
    assert proxy.stats.requests["GET"] <= len(data) // block + 2


@pytest.mark.timeout(120)  # a retry loop that never ends fails here instead of hanging the run
def test_transient_faults_are_retried_to_the_exact_samples(proxied_s3) -> None:
    """Each plan's faults are absorbed by retries that cost at most two requests per fault over a clean read
    (measured: one extra request per 503 / reset, none per slow answer) — bounded work, not a retry storm."""
    proxy, direct = proxied_s3
    members = bi.good_members(12)
    direct.pipe("faults/t.tar", bi.tar_bytes(members))
    expected = [(n.split(".")[0], p) for n, p in members if n.endswith(".png")]

    def read():
        return list_shard("s3://faults/t.tar", max_in_memory_bytes=20_000, block_size=32 * 1024)  # streamed

    proxy.set_plan(FaultPlan())  # no faults
    assert read().error is None
    clean = sum(proxy.stats.requests.values())
    for plan in (
        FaultPlan(every=1, kinds=("503",), max_faults=3),
        FaultPlan(every=1, kinds=("reset",), max_faults=3),
        FaultPlan(every=1, kinds=("slow",), max_faults=2, slow_s=0.5),
        FaultPlan(rate=0.5, kinds=("503", "reset", "slow"), max_faults=6, slow_s=0.3, seed=3),
    ):
        proxy.set_plan(plan)
        c = read()
        assert c.error is None, (plan, c.error)
        assert [(s.key, s.image_member().data) for s in c.samples] == expected
        faults = sum(proxy.stats.faults.values())
        assert faults >= min(plan.max_faults, 2), proxy.stats
        assert sum(proxy.stats.requests.values()) <= clean + 2 * faults, (plan, proxy.stats)


@pytest.mark.timeout(60)  # a stall that is waited out instead of timed out (3 s x 2) stays far below this
def test_stalled_responses_time_out_and_are_retried(proxied_s3, monkeypatch) -> None:
    """A response that stalls past the client's read timeout (1 s here, patched down from 30 s) is abandoned
    and retried; the read still returns exactly the samples."""
    from pipeline import shards as shards_mod

    proxy, direct = proxied_s3
    members = bi.good_members(6)
    direct.pipe("faults/stall.tar", bi.tar_bytes(members))
    opts = {
        "config_kwargs": {
            "connect_timeout": 1,
            "read_timeout": 1,
            "retries": {"max_attempts": 3, "mode": "standard"},
        }
    }
    monkeypatch.setattr(shards_mod, "S3_STORAGE_OPTIONS", opts)
    proxy.set_plan(FaultPlan(every=1, kinds=("slow",), slow_s=3.0, max_faults=2, methods=("GET",)))
    c = read_shard("s3://faults/stall.tar")
    assert c.error is None and [s.key for s in c.samples] == [f"g{i:04d}" for i in range(6)]
    # the two stalled GETs were abandoned and redone by the client, one GET each (a clean read of this small
    # shard is one GET; one spare: on a loaded machine a clean GET can also miss the 1 s read timeout)
    assert proxy.stats.faults["slow"] == 2 and 3 <= proxy.stats.requests["GET"] <= 4, proxy.stats


@pytest.mark.slow
@pytest.mark.timeout(180)  # bounded time: a read that keeps retrying fails the test instead of hanging it
def test_a_shard_that_never_answers_fails_in_bounded_time(proxied_s3) -> None:
    """Bounded work: 2 whole-shard attempts, each a bounded number of requests (the S3 client's own retries:
    botocore's max_attempts 4 under s3fs's retries; measured 19 requests for both attempts together)."""
    proxy, direct = proxied_s3
    direct.pipe("faults/dead.tar", bi.tar_bytes(bi.good_members(2)))
    proxy.set_plan(FaultPlan(every=1, kinds=("503", "reset"), max_faults=10**6, paths=("dead.tar",)))
    c = list_shard("s3://faults/dead.tar", attempts=2, backoff_s=0.1)
    assert c.samples == [] and c.error and "after 2 attempt(s)" in c.error and c.attempts == 2
    assert 2 <= sum(proxy.stats.requests.values()) <= 2 * 16, proxy.stats
    missing = read_shard("s3://faults/missing.tar")  # permanent: no retry, quick (no faults on this path)
    assert missing.error and "not found" in missing.error and missing.attempts == 1


# ------------------------------------------------------------------ the real scan job


@pytest.fixture(scope="module")
def world(tmp_path_factory, _shared_s3_ray: dict) -> Iterator[dict]:
    """moto S3 (corpus + tiny detector written directly) -> fault proxy; the jobs run on the run's shared Ray
    head with the proxy as their S3 endpoint (`env AWS_ENDPOINT_URL=... python jobs/scan_bucket.py`, as a user
    points one job at another store: the driver passes the endpoint on to its workers)."""
    import torch

    from pipeline.models import DetectorConfig, create_detector, save_detector

    tmp = tmp_path_factory.mktemp("relfaults")
    with moto_s3_server() as env:
        direct = _s3fs(env["AWS_ENDPOINT_URL"])
        if not direct.exists("faultscan"):
            direct.mkdir("faultscan")
        shards: dict[str, list[bi.Member]] = {}
        for i in range(4):
            members = bi.good_members(8, prefix=f"s{i}_", seed=100 * i)
            direct.pipe(f"faultscan/in/shard-{i:06d}.tar", bi.tar_bytes(members))
            shards[f"shard-{i:06d}"] = members
        for i in range(N_LONG):  # a longer corpus for the kill tests: the job must outlive the kill
            members = bi.good_members(PER_LONG, prefix=f"k{i}_", seed=1000 + i, size=(160, 144))
            direct.pipe(f"faultscan/long/shard-{i:06d}.tar", bi.tar_bytes(members))
        torch.manual_seed(0)
        det = create_detector(DetectorConfig.load("tiny-mole"), pretrained=None)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        save_detector(det, "s3://faultscan/det")
        with fault_proxy(env["AWS_ENDPOINT_URL"]) as proxy:
            yield {
                "head": _shared_s3_ray["head"],
                "proxy": proxy,
                "direct": direct,
                "shards": shards,
                "tmp": tmp,
                "scan": ["env", f"AWS_ENDPOINT_URL={proxy.url}", *SCAN],
            }


def _rows(root: str, fs=None) -> list[dict]:
    if fs is not None:
        return (
            pads.dataset(root.removeprefix("s3://"), filesystem=fs, format="parquet", partitioning="hive")
            .to_table()
            .to_pylist()
        )
    return pads.dataset(root, format="parquet", partitioning="hive").to_table().to_pylist()


@pytest.mark.slow
def test_scan_survives_storage_faults_and_ends_missing_and_unreachable_shards_as_rows(world) -> None:
    """One scan job under three storage faults at once:
    - 30 % of every S3 request of the job (reads, the detector download, the Parquet/marker writes) fail with
      503 / connection reset / a 1.5 s delay, at most 24 in all;
    - a shard whose every request fails (503);
    - a brace pattern naming a shard that does not exist.
    The job succeeds in bounded time; the healthy shards' rows are exactly their samples, their sha256 the
    bytes written; each bad shard is one shard_error row with its reason."""
    from tests.support.ray_cluster import submit_job

    proxy: FaultProxy = world["proxy"]
    proxy.set_plan(
        FaultPlan(
            rate=0.3,
            kinds=("503", "reset", "slow"),
            slow_s=1.5,
            max_faults=24,
            seed=7,
            methods=("GET", "HEAD", "PUT", "POST"),
            always=("in/shard-000003.tar",),
        )
    )
    pattern = "s3://faultscan/in/shard-{000000,000001,000002,000003,000009}.tar"  # 000009 does not exist
    res = submit_job(
        world["head"],
        [
            *world["scan"],
            "--input",
            pattern,
            "--output",
            "s3://faultscan/out1",
            "--detector",
            "s3://faultscan/det",
            "--scan-date",
            "2026-11-24",
            *FAST,
        ],
        timeout_s=400,
    )
    faults, proxy_requests, refused = (
        dict(proxy.stats.faults),
        dict(proxy.stats.requests),
        proxy.stats.refused,
    )
    proxy.set_plan(FaultPlan())
    # bounded time: submit_job stops a job still running after timeout_s and reports TIMEOUT, failing this
    assert res.status == "SUCCEEDED", res.logs[-5000:]
    assert sum(faults.values()) >= 10 and set(faults) == {"503", "reset", "slow"}, faults
    print(
        f"FAULTS_SURVIVED {json.dumps(faults)} refused={refused} requests={proxy_requests}"
    )  # docs/reliability.md
    rows = _rows("s3://faultscan/out1", world["direct"])
    errors = {r["shard"]: r["error"] for r in rows if r["status"] == "shard_error"}
    assert set(errors) == {"shard-000003", "shard-000009"}
    assert "not found" in errors["shard-000009"]
    assert "attempt" in errors["shard-000003"] and "Service Unavailable" in errors["shard-000003"]
    expected = {
        (shard, name.split(".")[0]): hashlib.sha256(payload).hexdigest()
        for shard, members in world["shards"].items()
        if shard != "shard-000003"
        for name, payload in members
        if name.endswith(".png")
    }
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(expected) == 24 and {(r["shard"], r["key"]): r["sha256"] for r in ok} == expected
    assert all(r["p_fake"] is not None for r in ok)
    assert len(rows) == len(ok) + 2  # nothing else: no row lost, none duplicated


def _scorer_actors(head, submission_id: str) -> list:
    """The job's scoring actors that have a process (ALIVE, or PENDING_CREATION with a pid: in __init__)."""
    return [
        a
        for a in job_actors(head, submission_id=submission_id)
        if "Scorer" in (a.class_name or "") and a.state in ("ALIVE", "PENDING_CREATION") and a.pid
    ]


def _scan_actors_alive(head, submission_id: str) -> list:
    """The job's scoring and shard-writer actors not yet DEAD (a killed driver's actors are ended by Ray a
    moment after the driver; until then its writers may still make a shard durable)."""
    return [
        a
        for a in job_actors(head, submission_id=submission_id)
        if a.state != "DEAD" and ("Scorer" in (a.class_name or "") or a.class_name == "ShardWriterActor")
    ]


def _wait_until(ready, what: str, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while not (got := ready()):
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.2)
    return got


def _wait_markers(out: Path, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = len(list(out.glob("_shards/*/*.json")))
        if n >= at_least:
            return n
        time.sleep(0.1)
    return len(list(out.glob("_shards/*/*.json")))


def _exactly_once(out: Path, n_shards: int, per: int) -> None:
    import duckdb

    total, distinct, shards, bad = (
        duckdb.connect()
        .execute(
            "SELECT count(*), count(DISTINCT shard || '/' || key), count(DISTINCT shard), "
            "sum((status <> 'ok')::INT) FROM read_parquet(?, hive_partitioning=true)",
            [str(out / "scan_date=*" / "*.parquet")],
        )
        .fetchone()
    )
    assert (total, distinct, shards, bad) == (n_shards * per, n_shards * per, n_shards, 0)


def _driver_pids(marker: str) -> list[int]:
    """PIDs of python processes running jobs/scan_bucket.py with `marker` in their arguments (the job's
    driver; the job supervisor's `/bin/sh -c` wrapper is not one of them)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [c.decode(errors="replace") for c in cmd if c]
        if (
            args
            and "python" in Path(args[0]).name
            and any(a.endswith("scan_bucket.py") for a in args)
            and any(marker in a for a in args)
        ):
            pids.append(int(d))
    return pids


@pytest.mark.slow
def test_killed_driver_then_resume_with_a_killed_scoring_actor_rows_exactly_once(world) -> None:
    """Two faults, one after the other (one scan start-up fewer than a scan per fault; the suite's time):
    1. SIGKILL the job's driver process (no cleanup runs) after some shards are durable: the job fails with
       run.json still "running";
    2. the same command with `--resume` skips the durable shards; once it has made a shard durable, SIGKILL
       its scoring actor's process (a crash / OOM kill): Ray restarts the actor and retries its batches, the
       writers drop re-delivered rows, and the resumed job succeeds.
    The dataset holds every sample exactly once and the run records both attempts."""
    from ray.util.state import get_actor

    from tests.support.ray_cluster import submit_job, wait_job

    head = world["head"]
    out = world["tmp"] / "out3-kills"
    args = [
        *world["scan"],
        "--input",
        "s3://faultscan/long/",
        "--output",
        str(out),
        "--detector",
        "s3://faultscan/det",
        "--scan-date",
        "2026-11-24",
        *SLOW,
    ]
    first = submit_job(head, args, wait=False)
    assert _wait_markers(out, 1, 240) >= 1
    pids = _driver_pids(str(out))
    assert len(pids) == 1, pids
    (run_dir,) = list((out / "_run").iterdir())
    driver = json.loads((run_dir / "run.json").read_text())["attempts"][-1]["driver"]
    assert (driver["host"], driver["pid"]) == (
        socket.gethostname(),
        pids[0],
    )  # run.json names the live driver
    os.kill(pids[0], signal.SIGKILL)  # the driver dies abruptly, mid-run
    killed = wait_job(head, first.submission_id, timeout_s=120)
    assert killed.status == "FAILED", killed.status
    # the killed job's writer actors outlive its driver for a moment and may still make a shard durable: count
    # the durable shards once Ray has ended them, so that the next marker is the resumed job's
    _wait_until(
        lambda: not _scan_actors_alive(head, first.submission_id), "end of the killed job's actors", 120
    )
    n_done = len(list(out.glob("_shards/*/*.json")))
    assert 1 <= n_done < N_LONG, n_done
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # died without cleanup

    second = submit_job(head, [*args, "--resume"], wait=False)
    assert _wait_markers(out, n_done + 1, 240) > n_done  # the resumed job has made a shard durable
    victim = _wait_until(
        lambda: _scorer_actors(head, second.submission_id), "scoring actor of the resumed job", 60
    )[0]
    os.kill(victim.pid, signal.SIGKILL)
    done_at_kill = len(list(out.glob("_shards/*/*.json")))
    result = wait_job(head, second.submission_id, timeout_s=300)
    assert result.status == "SUCCEEDED", result.logs[-5000:]
    assert done_at_kill < N_LONG, "the job finished before the actor was killed; nothing was tested"
    after = get_actor(victim.actor_id, address=head.dashboard_url)
    assert after is not None and after.num_restarts >= 1  # Ray restarted the killed actor
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded" and len(run["attempts"]) == 2
    assert run["attempts"][1]["shards_skipped"] >= n_done
    _exactly_once(out, N_LONG, PER_LONG)
    print(f"KILLS driver_at={n_done}/{N_LONG} actor_at={done_at_kill}/{N_LONG} restarts={after.num_restarts}")
