"""Storage preflight of the three jobs against a real moto S3 server: a missing input or output bucket, wrong
credentials, no credentials and a wrong endpoint each end in ONE stderr line naming the URI, with the exit
code of its kind (README, "Exit codes"), before any work: nothing is written anywhere.

One subprocess per case where the CLI itself is what is tested (exit status, one stderr line, no traceback;
each job at least once, the cheapest to start where the job does not matter); every job x failure combination
also calls each job's `main` in-process (same code path, no interpreter start). No Ray is started: every case
fails in the preflight, before the job would connect to Ray."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline import preflight
from pipeline.preflight import (
    EXIT_CODES,
    Location,
    StorageError,
    check_readable,
    check_storage,
    check_writable,
    classify,
)
from tests.support.s3 import free_port
from tests.support.shards import good_samples, tar_bytes
from tests.support.subproc import run_python

REPO = Path(__file__).resolve().parents[1]
SCAN = "s3://bkt/scan"
INPUT = "s3://bkt/in/"


@pytest.fixture()
def store(s3_server, s3fs_client):
    """bkt/in/ with one shard, bkt/scan/ with one object (the preflight lists, it does not parse)."""
    fs = s3fs_client
    fs.mkdir("bkt")
    fs.pipe("bkt/in/shard-000000.tar", tar_bytes(good_samples(2)))
    fs.pipe("bkt/scan/scan_date=2026-11-23/shard-000000.parquet", b"PAR1")
    return {"env": s3_server, "fs": fs}


def _objects(fs) -> set[str]:
    fs.invalidate_cache()
    return {p for b in ("bkt",) for p in fs.find(b)} | set(fs.ls("", detail=False))


@contextmanager
def moto_auth(endpoint: str) -> Iterator[None]:
    """Make moto check credentials (its test keys are then unknown: every request is 403), restore after."""

    def post(value: str) -> None:
        req = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    post("0")
    try:
        yield
    finally:
        post("inf")


def no_credentials_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    }
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def run_job(job: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_python(str(REPO / "jobs" / job), *args, env=env)


def assert_one_line(stderr: str, code: int, rc: int, *needles: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert rc == code, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    line = lines[0]
    assert line.startswith("storage error: ") and "; check " in line, line
    for n in needles:
        assert n in line, (n, line)
    return line


def job_args(
    job: str, tmp_path: Path, *, scan: str = SCAN, inp: str = INPUT, out: str = "s3://bkt/out"
) -> list[str]:
    if job == "scan_bucket.py":
        return ["--input", inp, "--output", out, "--detector", str(tmp_path / "detector")]
    if job == "filter_shards.py":
        return ["--scan", scan, "--input", inp, "--output", out]
    return ["--scan", scan, "--output", out]


# ------------------------------------------------------------------ the CLI: one subprocess per case


def test_cli_missing_input_bucket(store, tmp_path) -> None:
    res = run_job("scan_bucket.py", job_args("scan_bucket.py", tmp_path, inp="s3://no-such-bucket/shards/"))
    line = assert_one_line(
        res.stderr,
        3,
        res.returncode,
        "input not found",
        "s3://no-such-bucket/shards/",
        "NoSuchBucket",
        "AWS_ENDPOINT_URL=",
    )
    assert "'no-such-bucket'" in line
    assert not any("out" in p for p in _objects(store["fs"]))


def test_cli_missing_output_bucket(store, tmp_path) -> None:
    res = run_job("filter_shards.py", job_args("filter_shards.py", tmp_path, out="s3://no-such-bucket/clean"))
    assert_one_line(
        res.stderr,
        3,
        res.returncode,
        "output not found",
        "s3://no-such-bucket/clean",
        "writing a probe object",
        "NoSuchBucket",
    )


def test_cli_wrong_credentials(store, tmp_path) -> None:
    before = _objects(store["fs"])
    with moto_auth(store["env"]["AWS_ENDPOINT_URL"]):
        res = run_job("report.py", job_args("report.py", tmp_path, out="s3://bkt/report"))
    assert_one_line(
        res.stderr,
        5,
        res.returncode,
        "scan output access denied",
        SCAN,
        "InvalidAccessKeyId",
        "AWS_ACCESS_KEY_ID",
    )
    assert _objects(store["fs"]) == before


def test_cli_no_credentials(store, tmp_path) -> None:
    res = run_job("report.py", job_args("report.py", tmp_path), env=no_credentials_env(tmp_path))
    assert_one_line(
        res.stderr,
        6,
        res.returncode,
        "scan output not accessible without credentials",
        SCAN,
        "NoCredentialsError",
        "AWS_SECRET_ACCESS_KEY",
    )


def test_cli_wrong_endpoint(store, tmp_path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    res = run_job(
        "report.py", job_args("report.py", tmp_path), env={**os.environ, "AWS_ENDPOINT_URL": closed}
    )
    assert_one_line(
        res.stderr,
        7,
        res.returncode,
        "scan output unreachable (cannot connect)",
        SCAN,
        f"AWS_ENDPOINT_URL={closed}",
    )


# ------------------------------------------------------------------ every job x every kind, in-process


def _main(job: str):
    if job == "scan_bucket.py":
        from pipeline.cli.scan_bucket import main
    elif job == "filter_shards.py":
        from pipeline.cli.filter_shards import main
    else:
        from pipeline.cli.report import main
    return main


JOBS = ["scan_bucket.py", "filter_shards.py", "report.py"]
FIRST_READ = {"scan_bucket.py": INPUT, "filter_shards.py": SCAN, "report.py": SCAN}


@pytest.mark.parametrize("job", JOBS)
def test_every_job_classifies_every_failure(store, tmp_path, capsys, monkeypatch, job) -> None:
    main = _main(job)
    fs = store["fs"]
    before = _objects(fs)

    def check(args: list[str], kind: str, uri: str) -> None:
        rc = main(args)
        err = capsys.readouterr().err
        line = assert_one_line(err, EXIT_CODES[kind], rc, uri)
        assert f": {uri} (" in line

    check(
        job_args(job, tmp_path, scan="s3://no-such-bucket/scan", inp="s3://no-such-bucket/in/"),
        "not_found",
        FIRST_READ[job].replace("bkt", "no-such-bucket"),
    )
    check(job_args(job, tmp_path, out="s3://no-such-bucket/out"), "not_found", "s3://no-such-bucket/out")
    with moto_auth(store["env"]["AWS_ENDPOINT_URL"]):
        check(job_args(job, tmp_path), "access_denied", FIRST_READ[job])
    with monkeypatch.context() as m:
        for k, v in no_credentials_env(tmp_path).items():
            m.setenv(k, v)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            m.delenv(k, raising=False)
        check(job_args(job, tmp_path), "no_credentials", FIRST_READ[job])
    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        check(job_args(job, tmp_path), "cannot_connect", FIRST_READ[job])
    # a local input that does not exist: the same kind, the same code
    check(
        job_args(job, tmp_path, scan=str(tmp_path / "nope"), inp=str(tmp_path / "nope")),
        "not_found",
        str(tmp_path / "nope"),
    )
    assert _objects(fs) == before  # no probe left behind, nothing written
    assert not (tmp_path / "detector").exists()


# ------------------------------------------------------------------ the probe itself


def test_probe_passes_and_leaves_nothing(store, tmp_path) -> None:
    fs = store["fs"]
    before = _objects(fs)
    check_readable(Location("input", INPUT))
    check_readable(Location("input", "s3://bkt/in/shard-{000000..000001}.tar"))  # the first shard is there
    check_readable(Location("input", "s3://bkt/in/shard-000000.tar"))
    check_writable(Location("output", "s3://bkt/out"))
    check_writable(Location("output", "s3://bkt"))
    assert _objects(fs) == before
    local = tmp_path / "a" / "b"
    check_writable(Location("output", str(local)))
    assert list(tmp_path.iterdir()) == []  # the output folder is not created by the probe


def test_empty_prefix_and_missing_shard_are_not_found(store) -> None:
    with pytest.raises(StorageError, match=r"input not found: s3://bkt/empty/ \(listing it: nothing stored"):
        check_readable(Location("input", "s3://bkt/empty/"))
    with pytest.raises(StorageError, match=r"reading s3://bkt/in/shard-000007.tar") as info:
        check_readable(Location("input", "s3://bkt/in/shard-{000007..000009}.tar"))
    assert info.value.kind == "not_found"


@contextmanager
def counting_server() -> Iterator[dict[str, int]]:
    """A TCP endpoint that accepts and at once closes every connection (a store that is up but broken),
    counting the connections: shows how many attempts a client makes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    stats = {"port": srv.getsockname()[1], "connections": 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            stats["connections"] += 1
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield stats
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_probe_retries_are_few_and_a_refused_connection_none(monkeypatch) -> None:
    """The jobs' own clients retry (botocore x s3fs: 30 connections and ~26 s against a server that drops
    every connection, measured once by hand). The probe sends each request at most PROBE_ATTEMPTS times
    (aiohttp itself re-sends an idempotent request once when the server drops the connection), and a refused
    connection (a wrong endpoint) not even once more."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    pauses: list[float] = []
    # `preflight.time` is the time module: the patch is process-wide, so count (and skip) only this thread's
    # pauses; other threads of the test process (a Ray client's, left by an earlier test) keep sleeping for
    # real
    real_sleep, this_thread = time.sleep, threading.current_thread()

    def pause(seconds: float) -> None:
        if threading.current_thread() is this_thread:
            pauses.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(preflight.time, "sleep", pause)
    with counting_server() as stats:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{stats['port']}")
        with pytest.raises(StorageError) as info:
            check_readable(Location("input", "s3://bkt/in/"))
        assert info.value.kind == "cannot_connect" and info.value.exit_code == 7
        assert preflight.PROBE_ATTEMPTS <= stats["connections"] <= 2 * preflight.PROBE_ATTEMPTS
    assert len(pauses) == preflight.PROBE_ATTEMPTS - 1
    pauses.clear()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: refused
    with pytest.raises(StorageError, match="unreachable"):
        check_readable(Location("input", "s3://bkt/in/"))
    assert pauses == []


def test_probe_survives_transient_faults(store) -> None:
    """Half of the probe's requests answered 503 Slow Down or reset (tests/support/faultproxy.py): the
    preflight still passes (a night with a flaky store must not fail before it starts) and leaves nothing."""
    from tests.support.faultproxy import FaultPlan, fault_proxy

    before = _objects(store["fs"])
    plan = FaultPlan(every=2, kinds=("503", "reset"), max_faults=20, methods=("GET", "HEAD", "PUT", "DELETE"))
    with fault_proxy(store["env"]["AWS_ENDPOINT_URL"], plan) as proxy:
        saved = os.environ["AWS_ENDPOINT_URL"]
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        try:
            check_storage(
                [Location("scan output", SCAN), Location("input", INPUT)],
                [Location("output", "s3://bkt/out")],
            )
        finally:
            os.environ["AWS_ENDPOINT_URL"] = saved
        assert proxy.stats.faults["503"] >= 1 and proxy.stats.faults["reset"] >= 1, proxy.stats
    assert _objects(store["fs"]) == before


def test_classify_os_errors() -> None:
    assert classify(FileNotFoundError(2, "x")) == "not_found"
    assert classify(PermissionError(13, "x")) == "access_denied"
    assert classify(ConnectionRefusedError(111, "x")) == "cannot_connect"
    assert classify(OSError(5, "I/O error")) == "unusable"
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise OSError("wrapped") from inner
    except OSError as outer:
        assert classify(outer) == "cannot_connect"


# ------------------------------------------------------------------ the one table


def readme_exit_codes() -> dict[int, tuple[str, set[str]]]:
    text = (REPO / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    header = next(ln for ln in text.splitlines() if ln.startswith("| code |"))
    jobs = [c.strip() for c in header.strip("|").split("|")][2:]
    out = {}
    for ln in text.splitlines():
        m = re.match(r"^\| (\d) \| (.*)$", ln)
        if m:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            out[int(cells[0])] = (cells[1], {j for j, c in zip(jobs, cells[2:], strict=True) if c == "yes"})
    return out


def test_readme_exit_code_table_is_the_code_and_the_jobs_docs() -> None:
    table = readme_exit_codes()
    assert sorted(table) == list(range(8))
    words = {
        "not_found": "not found",
        "access_denied": "access denied",
        "no_credentials": "no credentials",
        "cannot_connect": "cannot connect",
    }
    for kind, code in EXIT_CODES.items():
        if kind in words:
            assert words[kind] in table[code][0], (kind, code)
            assert table[code][1] == {"scan_bucket", "filter_shards", "report", "rescore"}
    # THE table in code: every README row is the enum's code, and each job's column is its JOB_CODES, which
    # its --help lists
    from pipeline.exitcodes import JOB_CODES, ExitCode, help_epilog

    assert sorted(table) == [int(c) for c in ExitCode]
    for job in ("scan_bucket", "filter_shards", "report", "rescore"):
        assert {c for c, (_, jobs) in table.items() if job in jobs} == {int(c) for c in JOB_CODES[job]}, job
        epilog = help_epilog(job)
        assert {int(m) for m in re.findall(r"^  (\d)  ", epilog, flags=re.M)} == {
            int(c) for c in JOB_CODES[job]
        }
        out = subprocess.run(
            [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert epilog.splitlines()[0] in out and epilog.splitlines()[-1] in out, job


def test_a_store_that_keeps_answering_503_is_unreachable_after_a_few_attempts(store, monkeypatch) -> None:
    from tests.support.faultproxy import FaultPlan, fault_proxy

    monkeypatch.setattr(preflight.time, "sleep", lambda s: None)
    plan = FaultPlan(every=1, kinds=("503",), max_faults=10**6, methods=("GET", "HEAD", "PUT", "DELETE"))
    with fault_proxy(store["env"]["AWS_ENDPOINT_URL"], plan) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(StorageError) as info:
            check_readable(Location("input", INPUT))
        assert info.value.kind == "cannot_connect" and "SlowDown" in str(info.value)
        assert proxy.stats.requests["GET"] == preflight.PROBE_ATTEMPTS
