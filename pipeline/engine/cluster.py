"""Ray cluster attach / local start [ours]. The only place (with the other engine modules) that imports ray.

Credentials: the S3 client settings (`AWS_*`: endpoint, region, profile) are passed through to every Ray
worker via `runtime_env.env_vars`, BY NAME from the driver's environment; only the names are ever logged. The
secrets themselves (SECRET_NAMES) are never passed that way (see below).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import ray

from pipeline.console import verbose
from pipeline.logs import get_logger

log = get_logger("pipeline.engine.cluster")

PASS_THROUGH_PREFIXES = ("AWS_", "GENSCAN_")
PASS_THROUGH_NAMES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "HF_HUB_OFFLINE",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)


# Secrets are NEVER put in a runtime_env: Ray writes runtime_envs into its logs (runtime_env_agent.log) and
# shows them through the dashboard / state API (tests/test_security.py plants a canary secret and greps Ray's
# logs). Workers still get them: a local Ray's workers inherit the driver's environment, a cluster's workers
# that of `ray start` (PLATFORM.md: set AWS_* before `ray start`) or an IAM role.
SECRET_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")


def runtime_env(environ: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """`runtime_env` carrying the pass-through variables (values from the environment, never logged)."""
    env = os.environ if environ is None else environ
    passed = (k for k in env if k.startswith(PASS_THROUGH_PREFIXES) or k in PASS_THROUGH_NAMES)
    return {"env_vars": {k: env[k] for k in sorted(passed) if k not in SECRET_NAMES}}


@contextlib.contextmanager
def session(
    address: str | None = None, num_cpus: int | None = None, *, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """THE place a job gets its Ray: yields how, "attached" | "local" | "existing".

    "existing": this process was already connected (e.g. a test's session-wide head or a caller's own
    `ray.init`). Otherwise it attaches to `address`, or when None to `RAY_ADDRESS` (the case under `ray job
    submit`); without either a NEW local Ray starts (`address="local"`: never auto-attach to some other `ray
    start` registered on this machine) with `num_cpus` (default: all cores) in a private temp dir (short,
    under /tmp: unix socket paths must stay < 108 chars). `extra_env` adds defaults for the workers'
    environment (the driver's own values win).

    On exit it shuts down only what it started: a local Ray it started is stopped and its temp dir removed; a
    cluster it attached to is never shut down (the driver disconnects from it, the cluster and its other jobs
    keep running); an existing connection is left as it was.

    Quiet unless the job runs verbose (`pipeline.console.verbose()`): workers' output is not forwarded to the
    driver (it stays in Ray's log folder; the shards' events reach the driver in their summaries) and Ray's
    own INFO lines are off. A local Ray keeps Ray's default token authentication, without its warning.

        with cluster.session(cfg.ray_address, cfg.ray_num_cpus):
            run_scan(cfg, executor=RayScanExecutor())
    """
    if ray.is_initialized():
        yield "existing"
        return
    renv = runtime_env()
    for k, v in (extra_env or {}).items():
        renv["env_vars"].setdefault(k, v)
    names = sorted(renv["env_vars"])
    target = address or os.environ.get("RAY_ADDRESS")
    loud = verbose()
    quiet = {"log_to_driver": loud, "logging_level": logging.INFO if loud else logging.WARNING}
    temp_dir = None if target else tempfile.mkdtemp(prefix="gsray", dir="/tmp")
    try:
        if target:
            log.info("ray_attach", address=target, passed_env=names)
            ray.init(address=target, runtime_env=renv, **quiet)
            how = "attached"
        else:
            log.info("ray_start_local", num_cpus=num_cpus, passed_env=names)
            # Ray turns token authentication on by default for a local Ray (and generates the token) and warns
            # about it each start: keep the protection, drop the warning (it asks the user to do nothing)
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
                logging.ERROR
            )
            ctx = ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                runtime_env=renv,
                _temp_dir=temp_dir,
                **quiet,
            )
            # a local Ray serves no dashboard or job API on any interface (include_dashboard=False); the run
            # log says so
            log.info("ray_started_local", dashboard=ctx.dashboard_url or None)
            how = "local"
        yield how
    finally:
        # for "local" this stops the Ray this call started; for "attached" it only disconnects this driver
        # (ray.shutdown() on a driver of a running cluster does not stop the cluster). Also runs when the
        # start itself failed (e.g. a timed-out raylet on an overloaded machine).
        if ray.is_initialized():
            ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
