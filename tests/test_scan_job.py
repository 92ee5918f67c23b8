"""Integration tests of the scan job: shards in a bucket on a real moto S3 server (HTTP, 127.0.0.1), a real
`ray start --head`, `ray job submit` of jobs/scan_bucket.py, output read back with pyarrow AND DuckDB.
One S3 server, one detector and one Ray head are shared by the whole module. The head's AWS secret is the
run's canary: the scan's outputs, its job logs, Ray's session logs and the state API must not hold it."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.output import SCHEMA
from tests.support.ray_cluster import SMALL_SCAN, RayHead, submit_job, wait_job
from tests.support.shards import (
    corrupt_image_sample,
    good_samples,
    make_bucket,
    no_image_sample,
    truncated_tar_bytes,
    write_raw,
    write_shard,
    write_shards,
)
from tests.support.shared import CANARY_PREFIX

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCAN = [sys.executable, str(REPO / "jobs" / "scan_bucket.py")]
FAST = ["--batch-size", "16", *SMALL_SCAN]


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_s3_ray) -> Iterator[dict]:
    """S3 server with a corpus (good + bad shards), a tiny detector on S3, a Ray head with the S3 env (the
    run's shared ones: tests/conftest.py)."""
    import s3fs
    import torch

    from pipeline.models import DetectorConfig, create_detector, save_detector

    tmp = tmp_path_factory.mktemp("scanjob")
    env, head = shared_s3_ray["env"], shared_s3_ray["head"]
    bucket = make_bucket("corpus")
    write_shards(f"{bucket}/shards/", 3, 10, size=(112, 104))
    mixed = good_samples(4, seed=11, prefix="m", fmt="jpg", size=(100, 120)) + [
        corrupt_image_sample("m_bad"),
        no_image_sample("m_noimg"),
    ]
    write_shard(f"{bucket}/shards/shard-000003.tar", mixed)
    trunc = good_samples(6, seed=12, prefix="t", size=(112, 104))
    write_raw(f"{bucket}/shards/shard-000004.tar", truncated_tar_bytes(trunc, 0.6))
    write_raw(f"{bucket}/shards/shard-000005.tar", b"this is not a tar file")
    torch.manual_seed(0)
    det = create_detector(DetectorConfig.load("tiny-mole"), pretrained=None)
    meta = save_detector(det, f"{bucket}/detectors/tiny")
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    yield {
        "env": env,
        "head": head,
        "bucket": bucket,
        "fs": fs,
        "tmp": tmp,
        "meta": meta,
        "good_samples": 30 + len(mixed),
        "trunc": trunc,
        "det": det,
    }


def _read_s3_dataset(fs, root: str):
    return pads.dataset(
        root.removeprefix("s3://"), filesystem=fs, format="parquet", partitioning="hive"
    ).to_table()


def test_scan_s3_end_to_end_accounts_for_every_sample(world):
    head: RayHead = world["head"]
    b, fs = world["bucket"], world["fs"]
    out = f"{b}/scan"
    args = [
        *SCAN,
        "--input",
        f"{b}/shards/",
        "--output",
        out,
        "--detector",
        f"{b}/detectors/tiny",
        "--scan-date",
        "2026-11-20",
        *FAST,
    ]
    res = submit_job(head, args, timeout_s=240)
    assert res.status == "SUCCEEDED", res.logs[-5000:]
    assert res.driver_exit_code in (0, None)
    fs.invalidate_cache()
    files = sorted(fs.find(f"{out.removeprefix('s3://')}/scan_date=2026-11-20"))
    assert [Path(f).name for f in files] == [f"shard-00000{i}.parquet" for i in range(6)]

    table = _read_s3_dataset(fs, out)
    per_file = [pq.read_table(f, filesystem=fs) for f in files]
    assert sum(t.num_rows for t in per_file) == table.num_rows
    for f, t in zip(files, per_file, strict=True):
        assert t.schema.equals(SCHEMA, check_metadata=False)
        assert set(t.column("shard").to_pylist()) <= {Path(f).stem}  # file named by its shard id
    rows = table.to_pylist()
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    n_trunc_salvaged = sum(1 for r in rows if r["shard"] == "shard-000004" and r["status"] == "ok")
    assert n_trunc_salvaged >= 1
    # exact accounting: every sample of the good/mixed shards is one row; bad shards add one shard_error row
    # each
    assert by_status == {"ok": 30 + 4 + n_trunc_salvaged, "decode_error": 1, "no_image": 1, "shard_error": 2}
    keys = [(r["shard"], r["key"]) for r in rows if r["key"] is not None]
    assert len(keys) == len(set(keys))
    errs = {r["shard"]: r["error"] for r in rows if r["status"] == "shard_error"}
    assert set(errs) == {"shard-000004", "shard-000005"} and all(errs.values())
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(0.0 <= r["p_fake"] <= 1.0 and r["is_fake"] == (r["p_fake"] >= r["threshold"]) for r in ok)
    assert {r["detector_id"] for r in rows} == {world["meta"].detector_id}
    assert len({r["run_id"] for r in rows}) == 1

    # numerics: p_fake of a few rows equals the detector run locally on the same bytes
    from pipeline.models import Predictor
    from pipeline.scan.decode import decode_image

    pred = Predictor(world["det"], world["meta"])
    sample = good_samples(10, seed=0, prefix="0000_", size=(112, 104))[:4]
    px = np.stack([decode_image(s.files["png"], image_size=96).pixels for s in sample])
    ref = pred.predict(px)["p_fake"]
    got = {r["key"]: r["p_fake"] for r in ok if r["shard"] == "shard-000000"}
    np.testing.assert_allclose([got[s.key] for s in sample], ref, rtol=1e-4, atol=1e-6)

    # DuckDB reads the same files with one hive-partitioned glob (through the fsspec S3 filesystem)
    con = duckdb.connect()
    con.register_filesystem(fs)
    q = con.execute(
        f"SELECT scan_date, count(*), count(DISTINCT shard), sum((status = 'shard_error')::INT) "
        f"FROM read_parquet('s3://{out.removeprefix('s3://')}/scan_date=*/*.parquet', "
        "hive_partitioning=true) GROUP BY scan_date"
    ).fetchall()
    assert [(str(d), n, s, e) for d, n, s, e in q] == [("2026-11-20", len(rows), 6, 2)]

    # provenance: config, versions, run summary, per-shard markers; credentials never written or logged
    run = json.loads(fs.cat(f"{out}/_run/2026-11-20/run.json"))
    assert run["status"] == "succeeded" and run["totals"]["rows"] == len(rows)
    assert run["totals"]["counts"]["ok"] == by_status["ok"] and run["shards_total"] == 6
    versions = json.loads(fs.cat(f"{out}/_run/2026-11-20/versions.json"))
    assert {"python", "torch", "ray", "open_clip", "pyarrow", "genscan"} <= set(versions)
    cfg = json.loads(fs.cat(f"{out}/_run/2026-11-20/config.json"))
    assert cfg["input"] == f"{b}/shards/" and cfg["batch_size"] == 16
    marker = json.loads(fs.cat(f"{out}/_shards/2026-11-20/shard-000003.json"))
    assert marker["counts"]["ok"] == 4 and marker["rows"] == 6 and marker["infer_s"] > 0
    # the head's AWS_SECRET_ACCESS_KEY is the run's canary (tests/support/shared.py): in no output object
    # (Parquet decoded too: compression cannot hide it), not in the job's logs
    secret = world["env"]["AWS_SECRET_ACCESS_KEY"]
    assert secret.startswith(CANARY_PREFIX) and head.env["AWS_SECRET_ACCESS_KEY"] == secret
    objects = fs.find(out.removeprefix("s3://"))
    assert all(any(part in f for f in objects) for part in ("/_run/", "/_shards/", ".parquet")), objects
    for f in objects:
        data = fs.cat(f)
        assert secret.encode() not in data, f
        if f.endswith(".parquet"):
            assert not [text for text in _strings_in_parquet(data) if secret in text], f
    assert len(res.logs) > 1000 and secret not in res.logs

    # the same command again, without --resume: refused with exit code 2, nothing touched
    fs.invalidate_cache()
    before = {f: fs.info(f)["LastModified"] for f in fs.find(out.removeprefix("s3://"))}
    again = submit_job(head, args, timeout_s=120)
    assert again.status == "FAILED" and again.driver_exit_code == 2
    assert "--resume" in again.logs and "scan_date" in again.logs
    fs.invalidate_cache()
    assert {f: fs.info(f)["LastModified"] for f in fs.find(out.removeprefix("s3://"))} == before


def _strings_in_parquet(data: bytes) -> Iterator[str]:
    table = pq.read_table(io.BytesIO(data))
    yield json.dumps(
        {
            k.decode(errors="replace"): v.decode(errors="replace")
            for k, v in (table.schema.metadata or {}).items()
        }
    )
    for row in table.to_pylist():
        yield json.dumps(row, default=str)


def test_credentials_not_in_ray_logs_or_state_api(world) -> None:
    """After the scan above: Ray's own log files of the session (raylet, workers, runtime-env agent, job
    driver logs) and what the dashboard's state API shows (jobs, actors with their runtime_env) do not hold
    the secret. (Ray logs every runtime_env: secrets must never be passed through one.)"""
    from ray.util.state import list_actors

    from tests.support.ray_cluster import job_client

    head, secret = world["head"], world["env"]["AWS_SECRET_ACCESS_KEY"]
    jobs = job_client(head).list_jobs()
    assert jobs
    assert secret not in json.dumps([j.dict() if hasattr(j, "dict") else str(j) for j in jobs], default=str)
    actors = list_actors(address=head.dashboard_url, detail=True, limit=1000)
    assert any(a.class_name == "ShardWriterActor" for a in actors)  # the scan's actors are among them
    assert secret not in json.dumps([a.serialized_runtime_env for a in actors], default=str)
    hits = []
    for p in Path(head.temp_dir).rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 200 * 2**20:
            with contextlib.suppress(OSError):
                if secret.encode() in p.read_bytes():
                    hits.append(str(p.relative_to(head.temp_dir)))
    assert not hits, hits


def test_missing_detector_fails_the_job(world):
    head, b = world["head"], world["bucket"]
    res = submit_job(
        head,
        [
            *SCAN,
            "--input",
            f"{b}/shards/",
            "--output",
            str(world["tmp"] / "nodet"),
            "--detector",
            f"{b}/detectors/does-not-exist",
        ],
        timeout_s=120,
    )
    assert res.status == "FAILED"
    assert res.driver_exit_code == 2 and "detector" in res.logs
    from tests.support.ray_cluster import job_client

    assert str(job_client(head).get_job_info(res.submission_id).status.value) == "FAILED"


def test_bad_config_field_is_named(world, tmp_path):
    head = world["head"]
    cfg = tmp_path / "scan.json"
    cfg.write_text(json.dumps({"input": "x", "output": "y", "detector": "z", "batchsize": 4}))
    res = submit_job(head, [*SCAN, "--config-file", str(cfg)], timeout_s=120)
    assert res.status == "FAILED" and res.driver_exit_code == 2 and "batchsize" in res.logs


def test_wait_job_bound(world):
    """The helper's wait is bounded: a job that outlives the bound is stopped and reported as TIMEOUT."""
    res = submit_job(world["head"], [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=3)
    assert res.status == "TIMEOUT"
    assert wait_job(world["head"], res.submission_id, timeout_s=60).status == "STOPPED"


def test_plan_keeps_decode_out_of_the_model_actors(world):
    """Equal num_cpus for read tasks and actors must not let Ray fuse decode into the actor stage."""
    import ray
    from ray.data._internal.logical.optimizers import get_execution_plan

    from pipeline.engine.scan import build_dataset
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.execute import ScanWork
    from pipeline.scan.rows import RunContext

    cfg = ScanConfig.parse(
        {"input": "x", "output": "y", "detector": "z", "read_num_cpus": 0.5, "actor_num_cpus": 0.5}
    )
    ctx = RunContext(run_id="r", source="x", detector_id="d", labels=["real"])
    work = ScanWork(cfg, ctx, "2026-01-01", inputs=[(96, "center_crop")])
    ray.init(address=world["head"].address)
    try:
        ds = build_dataset([("s3://b/a.tar", "a")], work)
        op, names = get_execution_plan(ds._logical_plan)[0].dag, []
        while op is not None:
            names.append(type(op).__name__)
            op = op.input_dependencies[0] if op.input_dependencies else None
    finally:
        ray.shutdown()
    assert names == ["ActorPoolMapOperator", "TaskPoolMapOperator", "InputDataBuffer"]


def test_cluster_session_never_shuts_down_a_cluster_it_attached_to(world):
    """`pipeline.engine.cluster.session`: attaching to a running head and leaving disconnects this driver only
    (the head keeps serving); inside an existing connection it leaves that connection alone."""
    import subprocess

    from tests.support.ray_cluster import alive_nodes

    head = world["head"]
    code = f"""
import ray
from pipeline.engine import cluster
with cluster.session({head.address!r}) as how:
    assert how == "attached" and ray.is_initialized(), how
assert not ray.is_initialized()
ray.init(address={head.address!r})
with cluster.session() as how:
    assert how == "existing", how
assert ray.is_initialized()
print("session-ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.returncode == 0 and "session-ok" in proc.stdout, proc.stderr[-3000:]
    assert alive_nodes(head), "the attached cluster was shut down"
