from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_cluster import RUN_DIR_ENV
from tests.support.s3 import moto_s3_server, s3_env

# Keep numerics single-threaded-ish and deterministic on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# No Ray usage telemetry from the test processes (as in infra/ and ray_cluster.yaml). Besides phoning home,
# its collector threads in a driver log failed Prometheus queries with tracebacks, and formatting a traceback
# runs ast.parse (caret anchors); CPython 3.11 keeps ast.parse's recursion depth per interpreter, not per
# thread, so that races a test's own ast.parse ("AST constructor recursion depth mismatch", gh-106905).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Tests write only in temp dirs: every cache the code or its libraries would put under $HOME goes to one
# folder of the run instead. Set before any Ray head starts, so heads (and their workers) inherit it too. The
# process that owns the run (the xdist controller, or a plain pytest) creates the folder; its xdist workers
# inherit the variable and use the same folder, which also holds the run's shared cluster state
# (tests/support/shared.py).
_OWNER = not os.environ.get(RUN_DIR_ENV)
if _OWNER:
    os.environ[RUN_DIR_ENV] = tempfile.mkdtemp(prefix="genscan-tests-")
    atexit.register(shutil.rmtree, os.environ[RUN_DIR_ENV], True)
_SESSION_TMP = Path(os.environ[RUN_DIR_ENV])
CACHE_ENV = {
    "GENSCAN_CACHE": "genscan",
    "XDG_CACHE_HOME": "xdg",
    "MPLCONFIGDIR": "matplotlib",
    "TORCH_HOME": "torch",
    "HF_HOME": "huggingface",
}
for _name, _sub in CACHE_ENV.items():
    os.environ[_name] = str(_SESSION_TMP / _sub)

_HOME_CACHE = Path.home() / ".cache" / "genscan"


def _home_cache_entries() -> set[str]:
    return {str(p) for p in _HOME_CACHE.rglob("*")} if _HOME_CACHE.exists() else set()


_HOME_BEFORE = _home_cache_entries()


# `make test` runs the modules on two pytest-xdist workers (`-n 2 --dist loadfile`: a module stays on one
# worker, so its module fixtures are set up once). Most of the suite's time is a few modules that start Ray
# jobs; they are collected first, longest first, so the two workers end together instead of one running a long
# module alone (module times under the two workers, 2026-12-07: test_reliability_faults ~200 s,
# test_train_faults ~200 s, test_train_ray ~120 s, test_multinode ~115 s, test_scan_job ~85 s, then 30-70 s
# each). `--no-loadscope-reorder` keeps this order: by default xdist hands out the modules with the MOST TESTS
# first, which put these few-test modules last and made the run's last minutes three Ray-heavy modules at once
# (measured: 17 min instead of 14).
HEAVY_FIRST = (
    "test_train_faults",
    "test_reliability_faults",
    "test_train_ray",
    "test_multinode",
    "test_docs_readme",  # ~175 s: the demo (data, Ray Train, Ray scan), then the README's, hygiene's blocks
    "test_docs_training",  # the training walkthrough: three Ray Train runs, calibrate, evaluate
    "test_scan_job",
    "test_train_e2e",
    "test_filter_ray",
    "test_preflight",
    "test_console",
    "test_gpu_bench",
    "test_reliability_inputs",
    "test_demo_data",
    "test_scan_multi",
    "test_models_api",
    "test_report_gallery",
    "test_security",
    "test_filter",
    "test_docs_guides",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order within a module


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """End the run's shared cluster (in the run's owner, after every worker finished); fail the run if any
    test wrote into the user's genscan cache (~/.cache/genscan)."""
    if _OWNER:
        from tests.support.shared import stop_shared_cluster

        stop_shared_cluster(_SESSION_TMP)
    new = sorted(_home_cache_entries() - _HOME_BEFORE)
    if new:
        session.exitstatus = 1
        print(f"\nFAILED: tests wrote into {_HOME_CACHE}: {new[:5]}")


@pytest.fixture()
def s3_server() -> Iterator[dict[str, str]]:
    """A fresh moto S3 server on 127.0.0.1 (HTTP) for one test; env vars set while it runs."""
    with moto_s3_server() as env:
        yield env


@pytest.fixture()
def s3fs_client(s3_server: dict[str, str]):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]})


@pytest.fixture(scope="session")
def _shared_s3_ray() -> dict:
    from tests.support.shared import shared_cluster

    return shared_cluster(_SESSION_TMP)


@pytest.fixture(scope="module")
def shared_s3_ray(_shared_s3_ray: dict) -> Iterator[dict]:
    """The run's ONE moto S3 server and ONE real Ray head (tests/support/shared.py; workers with that S3
    endpoint), for every module that needs a plain head: started once for the whole run (both xdist workers),
    shared. Each module writes its own buckets (names unique in the suite); AWS_* point at the shared server
    while the module runs. Heads with special environments (fault proxy, canary secret, several nodes) start
    their own."""
    with s3_env(_shared_s3_ray["env"]):
        yield _shared_s3_ray
