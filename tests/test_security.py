"""Security: pickles never loaded, configs and URIs validated, secrets never put in a Ray runtime_env, through
the scan job's CLI. Elsewhere: credentials never written or logged by a scan job on a real Ray head + moto S3
(tests/test_scan_job.py), the Ray dashboard never exposed by a local start (tests/test_console.py)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support import badinputs as bi
from tests.support.ray_cluster import SMALL_SCAN
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
    cfg.write_text(
        json.dumps(
            {
                "input": "ftp://host/shards/x.tar",
                "output": "http://evil.example/out",
                "detector": "https://evil.example/c",
                "batchsize": 4,
                "batch_size": 0,
                "scan_date": "2026-13-40",
            }
        )
    )
    res = _scan_cli(["--config-file", str(cfg)])
    err = res.stderr
    assert res.returncode == 2, err
    for field, words in (
        ("batchsize", "Extra inputs are not permitted"),
        ("batch_size", "greater than or equal to 1"),
        ("input", "'ftp' not allowed"),
        ("output", "'http' not allowed"),
        ("detector", "'https' not allowed"),
        ("scan_date", ""),
    ):
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


# ------------------------------------------------------------------ a pickle disguised as safetensors


def test_pickle_disguised_as_safetensors_is_refused_before_any_work(tmp_path) -> None:
    """A pickle renamed detector.safetensors, with detector.json's id forged to match its hash: the scan's
    driver reads the weights file's header before any Ray work and refuses it with one configuration-error
    line naming the file (exit 2); the pickle's side effect never happens and nothing is written."""
    import hashlib

    ckpt = tmp_path / "forged"
    _tiny_checkpoint(ckpt)
    canary_file = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(canary_file)))
    (ckpt / "detector.safetensors").write_bytes(payload)
    meta = json.loads((ckpt / "detector.json").read_text())
    meta["detector_id"] = meta["detector_id"].split("@")[0] + "@" + hashlib.sha256(payload).hexdigest()[:12]
    (ckpt / "detector.json").write_text(json.dumps(meta))
    shards = tmp_path / "in"
    shards.mkdir()
    (shards / "s.tar").write_bytes(bi.tar_bytes(bi.good_members(2)))
    res = _scan_cli(["--input", str(shards), "--output", str(tmp_path / "out"), "--detector", str(ckpt)])
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("configuration error: detector: ") and "is not a safetensors file" in lines[-1]
    )
    assert str(ckpt / "detector.safetensors") in lines[-1] and "Traceback" not in res.stderr, res.stderr[
        -3000:
    ]
    assert not canary_file.exists()
    assert not list((tmp_path / "out").glob("scan_date=*/*.parquet"))


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
