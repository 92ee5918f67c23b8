"""Multi-node behaviour on one machine: a real Ray head started with 0 CPUs (the production shape: the driver
of `ray job submit` runs there) plus two worker nodes (`ray start --address`, each its own process group,
ports and temp dir; one with a custom resource), `ray job submit` of jobs/scan_bucket.py with the shipped
infra/runtime_env.yaml (working_dir upload), shards on the local moto S3 server over HTTP.

Asserts that BOTH worker nodes ran read+decode tasks of the scan (Ray's own task table, by node id), then
loses one mid-run (SIGKILL of its process group: its raylet, object store and workers, with the read outputs
held there) and checks that the scan still ends with every sample exactly once, every shard marked, each
marker's `node_id` naming a worker node and its `writer_node` a worker node, never the head (the head wrote no
Parquet). Recovery happens inside the same job if Ray re-executes the lost work, else by re-submitting with
`--resume`; the test records which (`recovery` property).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.support.faultproxy import FaultPlan, fault_proxy
from tests.support.ray_cluster import (
    REPO_ROOT,
    TERMINAL,
    RayHead,
    alive_nodes,
    job_client,
    job_result,
    ray_head,
    ray_worker_node,
    submit_job,
    wait_job,
)
from tests.support.shards import make_bucket, write_shards

pytestmark = pytest.mark.slow

N_SHARDS = 16
PER_SHARD = 16
SCAN_DATE = "2026-01-01"


def _submit(head: RayHead, args: list[str]) -> str:
    """`ray job submit` of the scan with the shipped runtime env (its working_dir uploaded to the nodes), not
    waited for; returns the submission id."""
    runtime_env = ["--runtime-env", str(REPO_ROOT / "infra" / "runtime_env.yaml")]
    command = [sys.executable, "jobs/scan_bucket.py", *args]
    return submit_job(head, command, wait=False, submit_flags=runtime_env).submission_id


def _markers(
    fs: Any, marker_dir: str, known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """shard id -> marker JSON; markers already in `known` are not fetched again (markers are written
    once)."""
    found = dict(known or {})
    fs.invalidate_cache()
    if not fs.exists(marker_dir):
        return found
    for path in fs.ls(marker_dir, detail=False, refresh=True):
        shard = path.rsplit("/", 1)[1].removesuffix(".json")
        if path.endswith(".json") and shard not in found:
            found[shard] = json.loads(fs.cat_file(path))
    return found


def _finished_reads_by_node(head: RayHead) -> dict[str, int]:
    """node id -> number of FINISHED read+decode tasks of the scan (Ray state API over the dashboard's
    HTTP)."""
    import urllib.request

    url = f"{head.dashboard_url}/api/v0/tasks?limit=10000&detail=true"
    with urllib.request.urlopen(url, timeout=10) as r:
        tasks = json.loads(r.read())["data"]["result"]["result"]
    counts: dict[str, int] = {}
    for t in tasks:
        if "prepare_on_node" in (t.get("name") or "") and t.get("state") == "FINISHED" and t.get("node_id"):
            counts[t["node_id"]] = counts.get(t["node_id"], 0) + 1
    return counts


def _writer_nodes(head: RayHead) -> set[str]:
    """Node ids of the scan's ALIVE shard-writer actors (Ray state API over the dashboard's HTTP)."""
    import urllib.request

    url = f"{head.dashboard_url}/api/v0/actors?limit=1000&detail=true"
    with urllib.request.urlopen(url, timeout=10) as r:
        actors = json.loads(r.read())["data"]["result"]["result"]
    return {
        a["node_id"]
        for a in actors
        if a.get("class_name") == "ShardWriterActor" and a.get("state") == "ALIVE" and a.get("node_id")
    }


def _nodes_of(marker: dict[str, Any]) -> set[str]:
    return set((marker.get("node_id") or "").split(",")) - {""}


def test_two_nodes_share_the_scan_survive_losing_one_and_the_head_writes_nothing(
    s3_server: dict[str, str], record_property: Any
) -> None:
    """A head started with 0 CPUs (the usual production shape: the driver of `ray job submit` runs there) and
    two worker nodes. Both worker nodes read; one is lost mid-run; every shard is still read, scored AND
    written on a worker node: each marker's `writer_node` is a worker, never the head, and the rows are
    complete."""
    import s3fs

    from pipeline.models import create_detector, save_detector

    bucket = make_bucket(f"mn-{uuid.uuid4().hex[:6]}")
    written = write_shards(f"{bucket}/shards", N_SHARDS, PER_SHARD, size=(112, 112), fmt="jpg")
    expected_keys = {f"{i:04d}_{j:06d}" for i in range(N_SHARDS) for j in range(PER_SHARD)}
    save_detector(create_detector("tiny-mole", pretrained=None), f"{bucket}/detector")
    out = f"{bucket}/scan"
    args = [
        "--input",
        f"{bucket}/shards/",
        "--output",
        out,
        "--detector",
        f"{bucket}/detector",
        "--scan-date",
        SCAN_DATE,
        "--num-actors",
        "1",
        "--actor-num-cpus",
        "0.5",
        "--read-num-cpus",
        "0.5",
        "--read-concurrency",
        "4",
        "--batch-size",
        "32",
        "--chunk-rows",
        "32",
        "--stall-timeout-s",
        "120",
    ]
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]})
    marker_dir = f"{out}/_shards/{SCAN_DATE}".removeprefix("s3://")

    # Shapes: head 0 CPUs, node A 1 CPU, node B 2 CPUs, scorer actor 0.5 CPU, read tasks 0.5 CPU, at most 4
    # reads at once (3 CPUs; whichever node is lost, the other still fits the actor and one read, ray#44687).
    # Object reads go through a proxy that delays every GET by 0.3 s, so reads are the bottleneck and Ray Data
    # runs several at once, on both nodes. The head notices a lost node within ~3 s instead of Ray's default
    # ~15 s.
    slow = FaultPlan(every=1, kinds=("slow",), slow_s=0.3, max_faults=1_000_000, methods=("GET",))
    with (
        fault_proxy(s3_server["AWS_ENDPOINT_URL"], slow) as proxy,
        ray_head(
            extra_env={
                **s3_server,
                "AWS_ENDPOINT_URL": proxy.url,
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_failure_threshold": "3",
                "RAY_health_check_timeout_ms": "1000",
            },
            num_cpus=0,
        ) as head,
        ray_worker_node(head, num_cpus=1) as node_a,
        ray_worker_node(head, num_cpus=2, resources={"genscan_test_node2": 1}) as node_b,
    ):
        nodes = {n["node_id"]: n for n in alive_nodes(head)}
        assert len(nodes) == 3 and {node_a.node_id, node_b.node_id} <= set(nodes)
        assert nodes[node_b.node_id]["resources_total"].get("genscan_test_node2") == 1
        (head_id,) = set(nodes) - {node_a.node_id, node_b.node_id}

        sid = _submit(head, args)
        client = job_client(head)
        # Lose a node as soon as BOTH worker nodes have finished read tasks of this scan (Ray's own task
        # table), while the scan is still running: its read outputs, running tasks and actors die with it.
        deadline = time.monotonic() + 240
        readers: dict[str, int] = {}
        writer_nodes: set[str] = set()
        while time.monotonic() < deadline:
            readers = _finished_reads_by_node(head)
            writer_nodes = _writer_nodes(head)
            if readers.get(node_a.node_id, 0) >= 1 and readers.get(node_b.node_id, 0) >= 1 and writer_nodes:
                break
            status = str(client.get_job_status(sid).value)
            if status in TERMINAL:
                pytest.fail(
                    f"job ended ({status}) before the node was lost; reads by node: {readers}\n"
                    f"{job_result(head, sid).logs[-3000:]}"
                )
            time.sleep(0.3)
        else:
            pytest.fail(f"not both worker nodes ran read tasks within the bound: {readers}")
        done_at_kill = len(_markers(fs, marker_dir))
        # lose the node that hosts the shard writer: its pending rows die with it, the writer restarts on the
        # survivor (never on the head, which has no CPUs) and the lost work is redone
        assert len(writer_nodes) == 1 and writer_nodes <= {node_a.node_id, node_b.node_id}, (
            writer_nodes,
            head_id,
        )
        lost, survivor = (node_a, node_b) if writer_nodes == {node_a.node_id} else (node_b, node_a)
        lost.kill()
        result = wait_job(head, sid, timeout_s=240)
        recovery = "same job"
        if result.status != "SUCCEEDED":
            # the job could not finish without the lost node: continue the run; markers make it skip done
            # shards
            recovery = f"--resume after {result.status}"
            result = wait_job(head, _submit(head, [*args, "--resume"]), timeout_s=240)
        assert result.status == "SUCCEEDED", result.logs[-4000:]
        assert lost.node_id not in {n["node_id"] for n in alive_nodes(head)}
    record_property("recovery", recovery)
    record_property("lost_node", "1-CPU node" if lost is node_a else "2-CPU node")
    record_property("shards_done_when_node_lost", done_at_kill)
    record_property("read_tasks_by_node_before_loss", json.dumps(readers))

    # The node was lost mid-run, not after the scan had finished.
    assert done_at_kill < N_SHARDS
    # Every shard has its marker; every sample is exactly one row (read back with pyarrow from S3).
    final = _markers(fs, marker_dir)
    assert len(final) == N_SHARDS == len(written)
    # each marker names the nodes whose tasks read the shard: worker nodes only (the head has no CPU); the
    # survivor read shards before the loss and whatever the lost node could not deliver
    recorded = set().union(*(_nodes_of(m) for m in final.values()))
    assert recorded <= {node_a.node_id, node_b.node_id} and survivor.node_id in recorded, recorded
    # each shard's Parquet and marker were written by a writer actor on a worker node, never on the head
    assert {m["writer_node"] for m in final.values()} <= {node_a.node_id, node_b.node_id}
    assert head_id not in {m["writer_node"] for m in final.values()}
    assert sum(m["rows"] for m in final.values()) == N_SHARDS * PER_SHARD
    table = pq.read_table(f"{out}/scan_date={SCAN_DATE}".removeprefix("s3://"), filesystem=fs)
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == N_SHARDS * PER_SHARD
    assert set(keys) == expected_keys
    assert set(table.column("status").to_pylist()) == {"ok"}
    run = json.loads(fs.cat_file(f"{out}/_run/{SCAN_DATE}/run.json".removeprefix("s3://")))
    assert run["status"] == "succeeded" and run["totals"]["rows"] == N_SHARDS * PER_SHARD
