"""Security: pickles never loaded, configs and URIs validated, credentials never written or logged, the Ray
dashboard never exposed by a local start. Through the scan job's CLI and a real Ray head + moto S3."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support import badinputs as bi
from tests.support.ray_cluster import SMALL_SCAN, run_starting_local_ray
from tests.support.shared import CANARY_PREFIX

REPO = Path(__file__).resolve().parents[1]
SCAN_PY = REPO / "jobs" / "scan_bucket.py"
SCAN = [sys.executable, str(SCAN_PY)]
FAST = ["--batch-size", "16", *SMALL_SCAN]
CANARY = f"{CANARY_PREFIX}{uuid.uuid4().hex}"


def _scan_cli(args: list[str], timeout_s: float = 180) -> subprocess.CompletedProcess:
    """The scan CLI as a user runs it (no RAY_ADDRESS: config errors must come before any Ray work)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run(
        [*SCAN, *args], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=str(REPO)
    )


class _Evil:
    """Unpickling this creates the file at `path` (stands for arbitrary code execution)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tiny_checkpoint(path: Path) -> None:
    import torch

    from pipeline.models import DetectorConfig, create_detector, save_detector

    torch.manual_seed(0)
    save_detector(create_detector(DetectorConfig.load("tiny-mole"), pretrained=None), str(path))


# ------------------------------------------------------------------ config and URIs (no Ray needed)


def test_config_errors_name_every_field_and_write_nothing(tmp_path) -> None:
    """One config file with six problems (one CLI process: the machine is shared): exit 2, every bad field
    named with its reason, nothing written."""
    cfg = tmp_path / "scan.json"
    cfg.write_text(json.dumps({
        "input": "ftp://host/shards/x.tar", "output": "http://evil.example/out", "detector": "https://evil.example/c",
        "batchsize": 4, "batch_size": 0, "scan_date": "2026-13-40",
    }))  # fmt: skip
    res = _scan_cli(["--config-file", str(cfg)])
    err = res.stderr
    assert res.returncode == 2, err
    for field, words in (("batchsize", "Extra inputs are not permitted"), ("batch_size", "greater than or equal to 1"),
                         ("input", "'ftp' not allowed"), ("output", "'http' not allowed"),
                         ("detector", "'https' not allowed"), ("scan_date", "")):  # fmt: skip
        assert f"{field}: " in err and words in err, (field, err)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.json"]
    assert not (REPO / "http:").exists()  # the output URI was not taken for a local folder either


def test_bad_uri_on_the_command_line_is_refused() -> None:
    res = _scan_cli(["--input", "sftp://h/x.tar", "--output", "/tmp/x", "--detector", "/tmp/d"])
    assert res.returncode == 2 and "input" in res.stderr and "'sftp' not allowed" in res.stderr


# ------------------------------------------------------------------ pickles


def test_pickle_checkpoint_is_refused_before_any_work(tmp_path) -> None:
    """A checkpoint folder holding a pickle (detector.pt) instead of detector.safetensors: exit 2 naming
    the detector, nothing unpickled (the pickle's side effect never happens), nothing written."""
    ckpt = tmp_path / "ckpt"
    _tiny_checkpoint(ckpt)
    canary_file = tmp_path / "pwned"
    (ckpt / "detector.safetensors").unlink()
    (ckpt / "detector.pt").write_bytes(pickle.dumps(_Evil(str(canary_file))))
    shards = tmp_path / "in"
    shards.mkdir()
    (shards / "s.tar").write_bytes(bi.tar_bytes(bi.good_members(2)))
    for detector in (str(ckpt), str(ckpt / "detector.pt")):
        res = _scan_cli(["--input", str(shards), "--output", str(tmp_path / "out"), "--detector", detector])
        assert res.returncode == 2 and "detector" in res.stderr and ".safetensors" in res.stderr, res.stderr
    assert not canary_file.exists()
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the real scan job: secrets, pickles


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_s3_ray: dict) -> dict:
    """The run's shared moto S3 and Ray head, whose environment holds a recognisable canary secret as
    AWS_SECRET_ACCESS_KEY (tests/support/shared.py; moto accepts any). Corpus: good shards, a broken shard and
    (in the brace pattern) a missing one, so that error paths run and write messages too."""
    import s3fs

    tmp = tmp_path_factory.mktemp("security")
    env = shared_s3_ray["env"]
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}, skip_instance_cache=True)
    fs.mkdir("secure")
    fs.pipe("secure/in/shard-000000.tar", bi.tar_bytes(bi.good_members(6)))
    fs.pipe("secure/in/shard-000001.tar", bi.truncated_mid_member_tar(bi.good_members(4, prefix="t"), 3))
    fs.pipe("secure/in/shard-000002.tar", bi.non_tar_bytes())
    ckpt = tmp / "ckpt"
    _tiny_checkpoint(ckpt)
    for f in ckpt.iterdir():
        fs.pipe(f"secure/det/{f.name}", f.read_bytes())
    canary = env["AWS_SECRET_ACCESS_KEY"]
    assert canary.startswith(CANARY_PREFIX) and shared_s3_ray["head"].env["AWS_SECRET_ACCESS_KEY"] == canary
    return {"head": shared_s3_ray["head"], "fs": fs, "tmp": tmp, "ckpt": ckpt, "canary": canary}


def _strings_in_parquet(data: bytes) -> Iterator[str]:
    table = pq.read_table(io.BytesIO(data))
    yield json.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                      for k, v in (table.schema.metadata or {}).items()})  # fmt: skip
    for row in table.to_pylist():
        yield json.dumps(row, default=str)


@pytest.mark.slow
def test_credentials_never_in_outputs_or_job_logs(world) -> None:
    from tests.support.ray_cluster import job_client, submit_job

    head, fs = world["head"], world["fs"]
    out = "s3://secure/out"
    pattern = "s3://secure/in/shard-{000000..000003}.tar"  # 000003 does not exist
    # 3 of its 4 shards are broken on purpose: above the default error budget, which this test is not about
    res = submit_job(head, [*SCAN, "--input", pattern, "--output", out, "--detector", "s3://secure/det",
                            "--scan-date", "2026-11-24", *FAST, "--max-shard-error-rate", "1"], timeout_s=300)  # fmt: skip
    assert res.status == "SUCCEEDED", res.logs[-5000:]
    fs.invalidate_cache()
    files = fs.find("secure/out")
    assert any(f.endswith(".parquet") for f in files) and any("/_run/" in f for f in files)
    assert any("/_shards/" in f for f in files)
    n_checked = 0
    for f in files:
        data = fs.cat(f)
        assert world["canary"].encode() not in data, f
        if f.endswith(".parquet"):
            for text in _strings_in_parquet(data):  # decoded: compression cannot hide it
                assert world["canary"] not in text, f
        n_checked += 1
    assert n_checked >= 8
    rows = [
        r for f in files if f.endswith(".parquet") for r in pq.read_table(io.BytesIO(fs.cat(f))).to_pylist()
    ]
    assert sum(r["status"] == "shard_error" for r in rows) == 3  # truncated, non-tar, missing: errors written
    logs = job_client(head).get_job_logs(res.submission_id)
    assert len(logs) > 1000 and world["canary"] not in logs


@pytest.mark.slow
def test_credentials_not_in_ray_logs_or_state_api(world) -> None:
    """After the scan above: Ray's own log files of the session (raylet, workers, runtime-env agent, job
    driver logs) and what the dashboard's state API shows (jobs, actors with their runtime_env) do not hold
    the secret. (Ray logs every runtime_env: secrets must never be passed through one.)"""
    from ray.util.state import list_actors

    from tests.support.ray_cluster import job_client

    head = world["head"]
    jobs = job_client(head).list_jobs()
    assert jobs
    assert world["canary"] not in json.dumps([j.dict() if hasattr(j, "dict") else str(j) for j in jobs], default=str)
    actors = list_actors(address=head.dashboard_url, detail=True, limit=1000)
    assert actors
    assert world["canary"] not in json.dumps([a.serialized_runtime_env for a in actors], default=str)
    hits = []
    for p in Path(world["head"].temp_dir).rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 200 * 2**20:
            with contextlib.suppress(OSError):
                if world["canary"].encode() in p.read_bytes():
                    hits.append(str(p.relative_to(world["head"].temp_dir)))
    assert not hits, hits


@pytest.mark.slow
def test_pickle_disguised_as_safetensors_fails_the_job_without_unpickling(world, tmp_path) -> None:
    """A pickle renamed detector.safetensors, with detector.json's id forged to match its hash: the job fails
    (non-zero) with a safetensors error and the pickle's side effect never happens."""
    import hashlib
    import shutil

    from tests.support.ray_cluster import submit_job

    ckpt = tmp_path / "forged"
    shutil.copytree(world["ckpt"], ckpt)
    canary_file = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(canary_file)))
    (ckpt / "detector.safetensors").write_bytes(payload)
    meta = json.loads((ckpt / "detector.json").read_text())
    meta["detector_id"] = meta["detector_id"].split("@")[0] + "@" + hashlib.sha256(payload).hexdigest()[:12]
    (ckpt / "detector.json").write_text(json.dumps(meta))
    shards = tmp_path / "in"
    shards.mkdir()
    (shards / "s.tar").write_bytes(bi.tar_bytes(bi.good_members(2)))
    res = submit_job(world["head"], [*SCAN, "--input", str(shards), "--output", str(tmp_path / "out"),
                                     "--detector", str(ckpt), *FAST], timeout_s=300)  # fmt: skip
    assert res.status == "FAILED", res.logs[-3000:]
    assert res.driver_exit_code not in (0, None)
    assert "safetensors" in res.logs.lower() or "header" in res.logs.lower(), res.logs[-3000:]
    assert not canary_file.exists()
    assert not list((tmp_path / "out").glob("scan_date=*/*.parquet"))


# ------------------------------------------------------------------ Ray dashboard in local mode

_LOCAL_PROBE = r"""
import json, os
from pipeline.engine import cluster
import ray
with cluster.session(None, 1) as how:
    info = ray._private.worker.global_worker.node.address_info
    print("PROBE " + json.dumps({"how": how, "webui_url": info.get("webui_url") or ""}))
"""


@pytest.mark.slow
def test_local_ray_start_exposes_no_dashboard(tmp_path) -> None:
    """`cluster.session()` without an address starts a local Ray: no dashboard is started at all
    (include_dashboard=False), so nothing serves the dashboard/job API on any interface."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    res = run_starting_local_ray([sys.executable, "-c", _LOCAL_PROBE], text=True, timeout=180, env=env,
                                 cwd=str(tmp_path))  # fmt: skip
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")]
    assert res.returncode == 0 and line, res.stderr[-3000:]
    probe = json.loads(line[0][6:])
    assert probe["how"] == "local"
    assert probe["webui_url"] in ("", None) or probe["webui_url"].startswith(("127.0.0.1", "localhost"))


def test_secrets_are_never_put_in_a_ray_runtime_env() -> None:
    """Ray logs runtime_envs and shows them in the dashboard: the pass-through to workers carries the S3
    endpoint and region by name, never the secret key, session token or key id."""
    from pipeline.engine import cluster

    env = {
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "AWS_SESSION_TOKEN": CANARY,
        "AWS_ACCESS_KEY_ID": "AKIA" + CANARY,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GENSCAN_LOG_LEVEL": "INFO",
    }
    passed = cluster.runtime_env(env)["env_vars"]
    assert passed == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GENSCAN_LOG_LEVEL": "INFO",
    }
