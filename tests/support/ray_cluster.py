"""A REAL local Ray head for tests (`ray start --head --block` in its own process group) and a helper to
`ray job submit --no-wait` a command and wait for it with a bound.

Rules from ../shared/docs/PLATFORM.md: private short `--temp-dir` (unix sockets < 108 chars), free ports for
every listener, `--dashboard-host 127.0.0.1`, `RAY_AUTH_MODE` set explicitly (same value for the head and for
`ray job submit`), `RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`, AWS env set before the head starts (workers take
their environment at start). Teardown kills the head's process group by PID — never `ray stop`, which would
kill every other Ray on this shared machine.

Usage::

    with ray_head(extra_env=s3_env) as head:
        result = submit_job(head, [sys.executable, "jobs/scan_bucket.py", ...], timeout_s=180)
        assert result.status == "SUCCEEDED", result.logs
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.s3 import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = str(Path(sys.executable).with_name("ray"))
AUTH_MODE = "disabled"  # loopback-only test head; set identically for head, driver and `ray job submit`
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# The resource shape of a scan of a small test corpus on a 2-CPU head: fractional CPUs for the scoring actor
# and the read tasks (an actor pool that takes every CPU hangs, ray#44687), a stall bound, and ONE read
# process (each extra Ray worker process costs 2-4 CPU-s on this machine; measured 49.3 -> 43.9 CPU-s for a
# 30-image scan).
SMALL_SCAN = [
    "--actor-num-cpus",
    "0.5",
    "--read-num-cpus",
    "0.5",
    "--stall-timeout-s",
    "120",
    "--read-concurrency",
    "1",
]
# Ray's local start (`ray.init()` without an address) waits a FIXED 30 s for its raylet to register
# (ray/_private/node.py, not configurable); on this 2-core machine under the test run's load (~19) that once
# passed: "The current node timed out during startup".
RAY_START_TIMED_OUT = "timed out during startup"


def run_starting_local_ray(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, **kwargs)` for a command that starts its own local Ray, run
    once more if Ray's fixed start-up wait passed (the machine's load, not the code under test)."""
    res = subprocess.run(cmd, capture_output=True, **kwargs)
    err = res.stderr if isinstance(res.stderr, str) else res.stderr.decode(errors="replace")
    if res.returncode != 0 and RAY_START_TIMED_OUT in err:
        res = subprocess.run(cmd, capture_output=True, **kwargs)
    return res


@dataclass
class RayHead:
    address: str  # GCS address "127.0.0.1:PORT" for ray.init(address=...)
    dashboard_url: str  # "http://127.0.0.1:PORT" for `ray job submit --address` / JobSubmissionClient
    env: dict[str, str] = field(repr=False)  # the environment of the head (use it for clients too)
    temp_dir: str
    pid: int
    log_path: str = ""


@dataclass
class JobResult:
    submission_id: str
    status: str  # SUCCEEDED | FAILED | STOPPED | TIMEOUT
    logs: str
    driver_exit_code: int | None = None
    message: str | None = None
    info: dict = field(default_factory=dict)


def _distinct_free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


# The test run's folder (created by tests/conftest.py, removed when the run ends): its `tmp/` is the TMPDIR of
# the test heads, so what their workers and Ray's own processes leave in a temp folder (a killed training
# worker's resume copy, multiprocessing's pymp-* folders) goes away with the run.
RUN_DIR_ENV = "GENSCAN_TEST_RUN_DIR"


def head_env(extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the head AND for every client talking to it."""
    env = dict(os.environ)
    if env.get(RUN_DIR_ENV):
        env["TMPDIR"] = os.path.join(env[RUN_DIR_ENV], "tmp")
        os.makedirs(env["TMPDIR"], exist_ok=True)
    env.update(
        {
            "RAY_AUTH_MODE": AUTH_MODE,
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        }
    )
    if extra_env:
        env.update(extra_env)
    return env


def _node_args(
    nm: int,
    om: int,
    agent_http: int,
    agent_grpc: int,
    rt_agent: int,
    metrics: int,
    num_cpus: int,
    object_store_mb: int,
    temp_dir: str,
) -> list[str]:
    """`ray start` flags every node of a test cluster takes: its own free ports, CPUs, no GPU, a small object
    store, a private short temp dir, no usage stats, no log monitor. Ray's log monitor tails every worker's
    log file to stream it to the drivers; genscan's jobs run quiet (`pipeline.engine.cluster.session`:
    log_to_driver off), so nothing reads that stream, and on the run's shared head it cost about 35 CPU-s a
    run (2 cores). Workers still write their log files (the security checks read them); `ray job logs` is the
    driver's own output either way."""
    return [
        "--node-manager-port",
        str(nm),
        "--object-manager-port",
        str(om),
        "--dashboard-agent-listen-port",
        str(agent_http),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(rt_agent),
        "--metrics-export-port",
        str(metrics),
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(object_store_mb * 1024 * 1024),
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
        "--include-log-monitor",
        "false",
    ]


def start_head(
    extra_env: Mapping[str, str] | None = None,
    num_cpus: int = 2,
    object_store_mb: int = 256,
    start_timeout_s: float = 60.0,
) -> RayHead:
    """Start `ray start --head --block` (own session / process group) and return once its dashboard answers;
    `stop_head` ends it (by PID: the head may outlive the process that started it, see
    tests/support/shared.py)."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    (gcs, dash, client, nm, om, agent_http, agent_grpc, rt_agent, metrics) = _distinct_free_ports(9)
    env = head_env(extra_env)
    log_path = os.path.join(temp_dir, "head.log")
    cmd = [
        RAY_BIN,
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(client),
        *_node_args(nm, om, agent_http, agent_grpc, rt_agent, metrics, num_cpus, object_store_mb, temp_dir),
    ]
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd, env=env, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = RayHead(
        address=f"127.0.0.1:{gcs}",
        dashboard_url=f"http://127.0.0.1:{dash}",
        env=env,
        temp_dir=temp_dir,
        pid=proc.pid,
        log_path=log_path,
    )
    try:
        _wait_for_dashboard(head, proc, start_timeout_s)
    except BaseException:
        stop_head(head)
        raise
    return head


def stop_head(head: RayHead) -> None:
    """Kill the head's process group by PID and remove its private temp dir."""
    stop_process_group(head.pid)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_head(
    extra_env: Mapping[str, str] | None = None,
    num_cpus: int = 2,
    object_store_mb: int = 256,
    start_timeout_s: float = 60.0,
) -> Iterator[RayHead]:
    """A head for one block: `start_head`, yield it, `stop_head`."""
    head = start_head(extra_env, num_cpus, object_store_mb, start_timeout_s)
    try:
        yield head
    finally:
        stop_head(head)


def _wait_for_dashboard(head: RayHead, proc: subprocess.Popen, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"ray start exited with {proc.returncode}:\n{Path(head.log_path).read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray head not ready after {timeout_s}s:\n{Path(head.log_path).read_text()[-4000:]}")


def stop_process_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by `pid` (a process started with start_new_session=True), wait for its
    leader to exit, then SIGKILL whatever of the group is left; the leader need not be this process's
    child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our child: reap it
            if not process_alive(pid):
                break
            time.sleep(0.1)


def process_alive(pid: int) -> bool:
    """Whether `pid` is a running process (not gone, not a zombie), read from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def job_client(head: RayHead):
    from ray.job_submission import JobSubmissionClient

    os.environ["RAY_AUTH_MODE"] = AUTH_MODE
    return JobSubmissionClient(head.dashboard_url)


def submit_job(
    head: RayHead,
    command: Sequence[str],
    timeout_s: float = 300.0,
    submission_id: str | None = None,
    wait: bool = True,
    submit_flags: Sequence[str] = (),
) -> JobResult:
    """`ray job submit --no-wait --submission-id ID [submit_flags...] -- command...` (`submit_flags` are
    `ray job submit`'s own, e.g. `--runtime-env FILE`); then (if `wait`) poll until the job is terminal or
    `timeout_s` passes (then the job is stopped and status is "TIMEOUT")."""
    sid = submission_id or f"test-{uuid.uuid4().hex[:10]}"
    submit = ["job", "submit", "--address", head.dashboard_url, "--submission-id", sid, "--no-wait"]
    cmd = [RAY_BIN, *submit, *submit_flags, "--", *command]
    out = subprocess.run(cmd, env=head.env, cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"ray job submit failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    if not wait:
        return JobResult(submission_id=sid, status="PENDING", logs="")
    return wait_job(head, sid, timeout_s)


def wait_job(
    head: RayHead, submission_id: str, timeout_s: float = 300.0, until: Sequence[str] = tuple(TERMINAL)
) -> JobResult:
    """Poll a job until its status is in `until` (default: terminal) or the bound passes."""
    client = job_client(head)
    deadline = time.monotonic() + timeout_s
    status = "PENDING"
    while time.monotonic() < deadline:
        status = str(client.get_job_status(submission_id).value)
        if status in until:
            break
        time.sleep(0.5)
    else:
        if status not in TERMINAL:
            with contextlib.suppress(Exception):
                client.stop_job(submission_id)
            status = "TIMEOUT"
    return job_result(head, submission_id, status)


def job_result(head: RayHead, submission_id: str, status: str | None = None) -> JobResult:
    client = job_client(head)
    info = client.get_job_info(submission_id)
    logs = client.get_job_logs(submission_id)
    return JobResult(
        submission_id=submission_id,
        status=status or str(info.status.value),
        logs=logs,
        driver_exit_code=getattr(info, "driver_exit_code", None),
        message=info.message,
        info={k: v for k, v in info.__dict__.items() if isinstance(v, str | int | float | type(None))},
    )


def stop_job(head: RayHead, submission_id: str, timeout_s: float = 60.0) -> JobResult:
    client = job_client(head)
    client.stop_job(submission_id)
    return wait_job(head, submission_id, timeout_s)


@dataclass
class RayWorkerNode:
    node_id: str  # the Ray node id (hex) the head reports for it
    pid: int  # `ray start --block` process = its process-group id
    temp_dir: str
    log_path: str
    proc: subprocess.Popen = field(repr=False)

    def kill(self) -> None:
        """Lose the node abruptly: SIGKILL its whole process group (raylet, object store, workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def alive_nodes(head: RayHead) -> list[dict]:
    """The head's view of its ALIVE nodes (Ray state API over the dashboard's HTTP)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{head.dashboard_url}/api/v0/nodes?limit=100&detail=true", timeout=5) as r:
        data = json.loads(r.read())
    return [n for n in data["data"]["result"]["result"] if n.get("state") == "ALIVE"]


@contextlib.contextmanager
def ray_worker_node(
    head: RayHead,
    num_cpus: int = 1,
    resources: Mapping[str, float] | None = None,
    object_store_mb: int = 128,
    start_timeout_s: float = 60.0,
) -> Iterator[RayWorkerNode]:
    """A second Ray node joining `head` on this machine (`ray start --address ... --block`, own process group,
    own short temp dir, free ports, the head's environment). Yields once the head reports it ALIVE; teardown
    kills its process group by PID (a test may `kill()` it earlier to simulate losing the node)."""
    import json

    temp_dir = tempfile.mkdtemp(prefix="rw", dir="/tmp")
    (nm, om, agent_http, agent_grpc, rt_agent, metrics) = _distinct_free_ports(6)
    log_path = os.path.join(temp_dir, "worker.log")
    # the node is recognised by a resource only it has: a listing taken just before it starts can miss a node
    # that joined a moment ago, so "the node that was not there before" may name another one
    tag = f"genscan_node_{uuid.uuid4().hex[:12]}"
    cmd = [
        RAY_BIN,
        "start",
        "--block",
        "--address",
        head.address,
        "--node-ip-address",
        "127.0.0.1",
        "--resources",
        json.dumps({**dict(resources or {}), tag: 1}),
        *_node_args(nm, om, agent_http, agent_grpc, rt_agent, metrics, num_cpus, object_store_mb, temp_dir),
    ]
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        cmd, env=head.env, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        node_id = None
        while node_id is None:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ray start (worker) exited with {proc.returncode}:\n{Path(log_path).read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker node not ALIVE after {start_timeout_s}s:\n{Path(log_path).read_text()[-4000:]}"
                )
            new = [n["node_id"] for n in alive_nodes(head) if (n.get("resources_total") or {}).get(tag)]
            node_id = new[0] if new else None
            if node_id is None:
                time.sleep(0.5)
        yield RayWorkerNode(node_id=node_id, pid=proc.pid, temp_dir=temp_dir, log_path=log_path, proc=proc)
    finally:
        stop_process_group(proc.pid)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_actors(head: RayHead, *, driver_pid: int | None = None, submission_id: str | None = None) -> list:
    """Every actor (any state) of the job whose driver is the process `driver_pid`, or that `ray job submit`
    started as `submission_id` (Ray's state API: the job, then its actors): other jobs on a shared head are
    left out."""
    from ray.util.state import list_actors, list_jobs

    job_ids = [
        j.job_id
        for j in list_jobs(address=head.dashboard_url, limit=1000)
        if j.job_id
        and (
            (submission_id is not None and j.submission_id == submission_id)
            or (
                driver_pid is not None
                and j.driver_info is not None
                and str(j.driver_info.pid) == str(driver_pid)
            )
        )
    ]
    return [
        a
        for job_id in job_ids
        for a in list_actors(
            address=head.dashboard_url, filters=[("job_id", "=", job_id)], detail=True, limit=1000
        )
    ]


def job_actor_pids(head: RayHead, driver_pid: int, class_names: Sequence[str]) -> list[int]:
    """PIDs of the live actors of `class_names` of the job whose driver is the process `driver_pid`."""
    return [
        int(a.pid)
        for a in job_actors(head, driver_pid=driver_pid)
        if a.class_name in class_names and a.state != "DEAD" and a.pid
    ]
