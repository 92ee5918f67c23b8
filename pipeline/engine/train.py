"""Ray Train wrapper: runs `pipeline.train.loop.train_worker` under a `TorchTrainer`.

The worker loop is a plain function in `pipeline/train` (no Ray); this module only supplies the Ray pieces to it
through `TrainHooks` (rank, world size, DDP wrapping, progress reports). Scaling is `ScalingConfig(num_workers,
use_gpu)` from the TrainConfig (never from the driver's `torch.cuda`), so the same job runs one CPU worker here
and N GPU workers on a cluster. With more than one worker the checkpoint directory must be shared storage
(s3://...): rank 0 writes it.

Cluster: attaches to `RAY_ADDRESS` when set (e.g. under `ray job submit`, via `pipeline.engine.cluster.connect`)
or uses an already initialised Ray; otherwise starts a private local Ray (short private temp dir, dashboard off,
`num_cpus` from the machine) and shuts it down afterwards. Non-secret AWS_*/GENSCAN_* settings reach the workers
through the job's runtime_env (`pipeline.engine.cluster.runtime_env`, which never carries secrets); credentials
are inherited from the driver (local Ray) or from `ray start` / an IAM role (cluster), PLATFORM.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipeline.engine.cluster import connect, runtime_env
from pipeline.logs import get_logger
from pipeline.train.config import TrainConfig
from pipeline.train.loop import TrainHooks, read_summary, train_worker

log = get_logger(__name__)


def worker_env() -> dict[str, str]:
    """Driver environment the training workers need (S3 endpoint/region, our settings, thread caps), by the
    pass-through rules of `pipeline.engine.cluster` (secrets excluded); values are never logged."""
    env = dict(runtime_env()["env_vars"])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray we are attached to, or start a private one for the duration of the block."""
    if ray.is_initialized():
        yield
        return
    if os.environ.get("RAY_ADDRESS"):  # e.g. under `ray job submit`: attach, passing the AWS_* env along
        connect()
        try:
            yield
        finally:
            ray.shutdown()
        return
    env = {"env_vars": worker_env()}
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: unix socket paths < 108 chars
    try:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 2,
            include_dashboard=False,
            _temp_dir=temp_dir,
            runtime_env=env,
            log_to_driver=True,
        )
        yield
    finally:  # also when the start itself failed (e.g. a timed-out raylet on an overloaded machine)
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


class RayTrainHooks(TrainHooks):
    """The Ray Train side of the worker loop: rank/world from the train context, DDP via prepare_model,
    per-epoch metrics through `ray.train.report`."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model.to(self.device())
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any]) -> None:
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)})


def _ray_worker(config: dict[str, Any]) -> None:
    train_worker(config, RayTrainHooks())


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train with Ray Train and return the run summary (also in `<out>/train_summary.json`).

    Raises the worker's error (wrapped by Ray as TrainingFailedError) when training fails."""
    storage = tempfile.mkdtemp(prefix="genscan-train-")
    try:
        with ray_session():
            trainer = TorchTrainer(
                _ray_worker,
                train_loop_config=cfg.model_dump(mode="json"),
                scaling_config=ScalingConfig(
                    num_workers=cfg.num_workers,
                    use_gpu=cfg.use_gpu,
                    resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
                ),
                # the workers' env comes from the job's runtime_env (ray.init / connect()) + inheritance
                run_config=RunConfig(storage_path=storage, name="train_detector"),
            )
            log.info("ray_train_start", num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, out=cfg.out)
            trainer.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    summary = read_summary(cfg.out)
    log.info("ray_train_done", out=cfg.out, **{k: v for k, v in summary.items() if not isinstance(v, dict | list)})
    return summary
