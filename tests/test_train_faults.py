"""Ray Train at small scale, the real thing, on the run's shared Ray head (tests/conftest.py): the dataset
that follows the epoch clock; the job's driver SIGKILLed mid-run (Ray ends its controller and workers), then
the same command with `--resume`, whose training worker is SIGKILLed mid-run (Ray Train replaces it and
continues from the last epoch checkpoint). Slow (Ray Train start-up). Two workers against one:
tests/test_train_ray.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.data.synthetic import DemoConfig, generate
from tests.support.ray_cluster import job_actor_pids, process_alive

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "jobs" / "train_detector.py")]
# The kill test kills the driver once the first epoch checkpoint is registered, and a worker of the resumed
# job once that job has registered one more; the job must still be running then. With 2 epochs only one ~0.5 s
# epoch was left, and on a loaded machine (two test workers, load ~16 on 2 cores) the job once finished before
# the test's kill: the epochs after those two are the margin.
KILL_EPOCHS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    generate(DemoConfig(out=str(root / "d"), families=["upconv"], n_per_class=50, seed=4))
    return root / "d"


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *TRAIN,
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        "tiny-mole",
        "--batch-size",
        "16",
        *extra,
    ]


def _attached(head) -> dict[str, str]:
    """The environment of a training job that attaches to `head` (the job's cluster.session reads
    RAY_ADDRESS)."""
    return {**head.env, "RAY_ADDRESS": head.address}


def _run(
    args: list[str], timeout: float = 400, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _epochs(out: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _registered_epochs(out: Path) -> list[int]:
    """Epochs whose checkpoint Ray Train has registered (its snapshot is written after the upload)."""
    epochs = []
    for snap in (out / "_checkpoints").glob("run-*/checkpoint_manager_snapshot.json"):
        try:
            epochs += [int(r["metrics"]["epoch"]) for r in json.loads(snap.read_text())["checkpoint_results"]]
        except (ValueError, KeyError):  # being rewritten
            continue
    return epochs


def _wait_gone(pids: list[int], timeout: float = 60) -> None:
    t0 = time.monotonic()
    while any(process_alive(pid) for pid in pids):
        assert time.monotonic() - t0 < timeout, "killed processes did not exit"
        time.sleep(0.1)


def test_train_dataset_follows_the_epoch_clock(
    data: Path, shared_s3_ray: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Ray dataset serves every epoch: its read tasks take the epoch (order + augmentation seed) from the
    clock rank 0 sets; each block is exactly one chunk of that epoch's permutation."""
    import numpy as np
    import ray

    from pipeline.engine.cluster import session
    from pipeline.engine.train_data import EpochClock, stream_dataset
    from pipeline.models import DetectorConfig
    from pipeline.train.config import TrainConfig
    from pipeline.train.feed import DecodeSpec, epoch_order, make_plan

    plan = make_plan(TrainConfig.parse({"data": str(data), "out": "unused", "seed": 7}))
    monkeypatch.setenv("RAY_AUTH_MODE", shared_s3_ray["head"].env["RAY_AUTH_MODE"])
    with session(shared_s3_ray["head"].address):
        clock = EpochClock.remote()
        ds = stream_dataset(
            ray.put(plan.train),
            plan.n_train,
            DecodeSpec(det_cfg=DetectorConfig.load("tiny-mole"), seed=7),
            epoch=0,
            chunk_rows=8,
            read_tasks=1,
            clock=clock,
        )
        for epoch in (0, 3):
            ray.get(clock.set.remote(epoch))
            got = {tuple(b["row"].tolist()) for b in ds.iter_batches(batch_size=None, batch_format="numpy")}
            order = epoch_order(plan.n_train, 7, epoch)
            assert got == {tuple(order[i : i + 8].tolist()) for i in range(0, plan.n_train, 8)}
        assert not np.array_equal(epoch_order(plan.n_train, 7, 0), epoch_order(plan.n_train, 7, 3))


def _wait_for(proc: subprocess.Popen[str], ready, what: str, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"training ended before {what}"
        assert time.monotonic() - t0 < timeout, f"no {what} within {timeout} s"
        time.sleep(0.2)


def test_killed_job_resumes_and_a_killed_worker_is_replaced(
    data: Path, tmp_path: Path, shared_s3_ray: dict
) -> None:
    """Two faults, one after the other (one Ray Train start-up fewer than a run per fault; the suite's time):
    1. the job's driver SIGKILLed after the first epoch checkpoint (its pod or machine lost): Ray ends the
       job's controller and workers with it;
    2. the same command with `--resume` continues after the last registered epoch; once it has registered one
       more, a training worker is SIGKILLed: Ray Train replaces the worker group, which continues from that
       checkpoint, and the resumed job succeeds.
    Every epoch is recorded once; the summary lists both restarts, in order."""
    out = tmp_path / "ck"
    head = shared_s3_ray["head"]
    args = _args(data, out, "--epochs", str(KILL_EPOCHS), "--augment")
    env = _attached(
        head
    )  # TMPDIR in the run's folder (head_env): the killed driver's log spool goes with the run
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        text=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(proc, lambda: _registered_epochs(out), "its first epoch checkpoint")
    finally:
        trainers = job_actor_pids(head, proc.pid, ("RayTrainWorker", "TrainController"))  # this job's only
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert trainers, "no Ray Train process of the job found on the head"
    _wait_gone(
        trainers, timeout=120
    )  # no dying worker may register one more epoch after `done` is read below
    assert not (out / "train_summary.json").exists()
    done = max(_registered_epochs(out))

    resumed = subprocess.Popen(
        [*args, "--resume"], cwd=REPO, text=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # default: Ray Train may be rewriting the snapshot just as it is read (_registered_epochs skips it
        # then)
        _wait_for(
            resumed, lambda: max(_registered_epochs(out), default=0) > done, "a checkpoint of the resumed job"
        )
        workers = job_actor_pids(head, resumed.pid, ("RayTrainWorker",))  # the shared head may run other jobs
        assert workers, "no Ray Train worker of the resumed job found"
        os.kill(workers[0], signal.SIGKILL)
        _, err = resumed.communicate(timeout=400)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0, err[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    first, second = summary["resumes"]  # the --resume, then the worker replacement inside the resumed job
    assert first["after_epoch"] == done and second["after_epoch"] > done
    assert _epochs(out) == list(range(1, KILL_EPOCHS + 1))  # each epoch recorded once, none missing
