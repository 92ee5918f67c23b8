"""The test run's ONE shared cluster: a moto S3 server (its own process) and a real Ray head, started by the
first test that asks for it, whichever pytest-xdist worker runs that test, and used by every module of the run
that needs a plain head; ended once, by the process that owns the run (the xdist controller, or the only
process of a plain `pytest`), when the session finishes.

Why processes and a lock instead of a session fixture per worker: a fixture is per worker process, so two
xdist workers would start two heads (each ~20 CPU-s to start and ~0.08 of a core while idle on this 2-core
machine). The state file in the run's folder (tests/conftest.py: `GENSCAN_TEST_RUN_DIR`, shared by the
controller and its workers) says what runs; `fcntl.flock` makes the first caller the only starter.

The moto server is a separate process (`python -m moto.server`): moto keeps S3 state in process-wide backends,
so an in-process shared server would be emptied by any per-test server (tests/support/s3.py resets on start
and stop). Its buckets are named per module (no two modules share a bucket name), so modules on both workers
use it at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from tests.support.ray_cluster import RayHead, start_head, stop_head, stop_process_group
from tests.support.s3 import free_port

STATE = "shared-cluster.json"
# The shared cluster's AWS secret is a recognisable canary (moto accepts any): tests/test_security.py checks
# that no output object, job log, Ray log file or state API answer of the head holds it.
CANARY_PREFIX = "GENSCAN-CANARY-SECRET-"
# Logical CPUs of the shared head: the two test workers' jobs run on it at once (as on two 2-CPU heads
# before), each shaped for 2 CPUs (tests/support/ray_cluster.SMALL_SCAN).
SHARED_HEAD_CPUS = 4


def _start_moto(run_dir: Path, timeout_s: float = 60.0) -> tuple[dict[str, str], int]:
    port = free_port()
    with open(run_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"moto server exited with {proc.returncode}: {(run_dir / 'moto.log').read_text()[-2000:]}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2) as r,
        ):
            if r.status == 200:
                break
        if time.monotonic() > deadline:
            stop_process_group(proc.pid)
            raise TimeoutError(f"moto server not answering after {timeout_s} s")
        time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing-key",
        "AWS_SECRET_ACCESS_KEY": f"{CANARY_PREFIX}{uuid.uuid4().hex}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return env, proc.pid


def shared_cluster(run_dir: Path) -> dict:
    """{"env": the S3 env, "head": RayHead}: started on the first call of the run, read back on later ones
    (from any process of the run)."""
    state = run_dir / STATE
    with open(run_dir / "shared-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter; the others wait here and read what it wrote
        if state.exists():
            got = json.loads(state.read_text())
            return {"env": got["env"], "head": RayHead(**got["head"])}
        env, moto_pid = _start_moto(run_dir)
        try:
            head = start_head(extra_env=env, num_cpus=SHARED_HEAD_CPUS)
        except BaseException:
            stop_process_group(moto_pid)
            raise
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"env": env, "head": dataclasses.asdict(head), "moto_pid": moto_pid}))
        os.replace(tmp, state)
        return {"env": env, "head": head}


def stop_shared_cluster(run_dir: Path) -> None:
    """End the shared head and moto server if this run started them (called once, by the run's owner)."""
    state = run_dir / STATE
    if not state.exists():
        return
    got = json.loads(state.read_text())
    stop_head(RayHead(**got["head"]))
    stop_process_group(got["moto_pid"])
    state.unlink()
