"""Ray Train wrapper: streams the labelled images through Ray Data into `pipeline.train.loop.train_worker`
running under a `TorchTrainer`, with per-epoch checkpoints and worker-failure recovery.

The driver lists the source and makes the split (`pipeline.train.feed.make_plan`: no image decoded), puts the
two listing tables in the object store once, and hands Ray Train lazily planned datasets:

- `train` (split across the workers with `streaming_split(equal=True)`, so every rank gets a disjoint,
  equal-sized part of each epoch and takes the same number of DDP steps), iterated once per epoch: chunk ids
  -> the epoch's seeded permutation of the listing -> read + decode + UnivFD augmentation (`feed.DecodeStage`,
  per-sample randomness from seed, epoch and key) in CPU Ray Data tasks. The tasks read the epoch from a tiny
  `EpochClock` actor that rank 0 sets before it starts the epoch; Ray Data's split coordinator starts an epoch
  only when every rank has asked for it, so no task of epoch e runs before the clock says e. (One dataset, one
  coordinator for the whole run: a dataset per epoch would keep an ~800 MB coordinator process per epoch.)
- `val` and `train_plain` (not split; rank 0 streams them for validation, the linear probe and calibration).

Workers consume uint8 batches (`ray.train.get_dataset_shard`) and normalise them on their device. Each epoch,
rank 0 hands the training state (`pipeline.train.state`) to `ray.train.report(checkpoint=...)`, stored under
`<out>/_checkpoints/<run>/` (local or s3://); `FailureConfig(max_failures)` replaces a dead worker group and
the loop resumes after the last reported epoch; `resume=True` (`--resume`) reopens the newest run under
`<out>/_checkpoints/` so a killed job continues from its last epoch.

Scaling is `ScalingConfig(num_workers, use_gpu)` from the TrainConfig (never from the driver's `torch.cuda`).
Cluster: through `pipeline.engine.cluster.session` (the one attach/start place): attaches to `RAY_ADDRESS`
when set or uses an initialised Ray; otherwise starts a private local Ray and shuts it down afterwards. A
local Ray gets at least workers x cpus_per_worker + 1 CPUs, so the read tasks always have one. Non-secret
AWS_*/GENSCAN_* settings reach the workers through the job's runtime_env
(`pipeline.engine.cluster.runtime_env`, never secrets).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipeline import storage
from pipeline.engine import cluster
from pipeline.engine.train_data import EpochClock, stream_dataset
from pipeline.logs import get_logger
from pipeline.train.config import TrainConfig
from pipeline.train.feed import DecodeSpec, TrainPlan, train_spec
from pipeline.train.hooks import CHECKPOINTS_DIR, EVAL_BATCH, OnEpoch, TrainHooks
from pipeline.train.loop import per_rank_batch, read_summary, train_worker

log = get_logger(__name__)

# thread cap for the training workers and read tasks of a Ray this job starts (a driver value wins)
WORKER_ENV_DEFAULTS = {"OMP_NUM_THREADS": "1"}


# ---- datasets (the read side: pipeline.engine.train_data) -------------------------------------------------
def build_datasets(cfg: TrainConfig, plan: TrainPlan, clock: Any) -> dict[str, ray.data.Dataset]:
    from pipeline.models import DetectorConfig

    ray.data.DataContext.get_current().enable_progress_bars = False  # structured logs instead
    det_cfg = DetectorConfig.load(cfg.config).model_copy(update={"generators": plan.generators})
    train_ref, val_ref = ray.put(plan.train), ray.put(plan.val)
    aug = train_spec(cfg, det_cfg)
    plain = DecodeSpec(det_cfg=det_cfg, seed=cfg.seed)
    opts = {"chunk_rows": cfg.read_chunk, "read_tasks": cfg.read_tasks}
    datasets = {
        "val": stream_dataset(val_ref, plan.n_val, plain, epoch=-1, **opts),
        "train_plain": stream_dataset(train_ref, plan.n_train, plain, epoch=-1, **opts),
    }
    if cfg.method == "mole":
        datasets["train"] = stream_dataset(train_ref, plan.n_train, aug, epoch=0, clock=clock, **opts)
    return datasets


# ---- worker side -------------------------------------------------------------------------------------------
class RayTrainHooks(TrainHooks):
    """The Ray Train side of the worker loop: rank/world from the train context, DDP via prepare_model, the
    streamed dataset shards, torch.distributed collectives, checkpoints through `ray.train.report`."""

    def __init__(self, cfg: TrainConfig, clock: Any) -> None:
        ctx = ray.train.get_context()
        self.cfg, self.clock = cfg, clock
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        log.info("train_worker_start", rank=self.world_rank, world=self.world_size, pid=os.getpid())

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model.to(self.device())
        return ray.train.torch.prepare_model(model)

    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        if self.world_rank == 0:  # before this rank asks for the epoch: its tasks cannot start earlier
            ray.get(self.clock.set.remote(epoch))
        shard = ray.train.get_dataset_shard("train")
        return shard.iter_batches(
            batch_size=per_rank_batch(self.cfg.batch_size, self.world_size),
            batch_format="numpy",
            prefetch_batches=2,
        )

    def eval_batches(self, split: str) -> Iterable[dict[str, np.ndarray]]:
        shard = ray.train.get_dataset_shard("val" if split == "val" else "train_plain")
        return shard.iter_batches(batch_size=EVAL_BATCH, batch_format="numpy", prefetch_batches=2)

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device())
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def latest_state(self, into: Path) -> Path | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        return Path(ckpt.to_directory(str(into)))

    def report(self, metrics: dict[str, Any], state_dir: Path | None = None) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
        ray.train.report(clean, checkpoint=Checkpoint.from_directory(str(state_dir)) if state_dir else None)


def _ray_worker(config: dict[str, Any]) -> None:
    cfg = TrainConfig.parse(config["cfg"], source="train config")
    train_worker(cfg, config["plan"], RayTrainHooks(cfg, config["clock"]))


# ---- driver side -------------------------------------------------------------------------------------------
def checkpoint_storage(out: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train under `<out>/_checkpoints` (fsspec for s3://, so a
    custom endpoint from AWS_ENDPOINT_URL works as everywhere else)."""
    root = storage.join(out, CHECKPOINTS_DIR)
    if not storage.is_remote(root):
        return root, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(root)
    return path, PyFileSystem(FSSpecHandler(fs))


def run_name(out: str, resume: bool) -> str:
    """A fresh `run-<UTC time>` name, or with `resume` the newest existing run under `<out>/_checkpoints/`."""
    if resume:
        runs = [r for r in storage.list_names(storage.join(out, CHECKPOINTS_DIR)) if r.startswith("run-")]
        if runs:
            log.info("ray_train_resume", run=runs[-1], out=out)
            return runs[-1]
        log.warning(
            "resume_nothing_found", out=out, reason="no earlier run under _checkpoints; starting fresh"
        )
    return time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime())


@contextmanager
def _watch_epochs(clock: Any, on_epoch: OnEpoch, period_s: float = 1.0) -> Iterator[None]:
    """While the block runs, call `on_epoch(done)` whenever the epoch clock moves (rank 0 sets it to the
    0-based epoch it starts, i.e. the number of epochs done). A driver-side thread: the workers are
    untouched."""
    stop = threading.Event()

    def poll() -> None:
        last = None
        while not stop.wait(period_s):
            try:
                done = int(ray.get(clock.get.remote(), timeout=10))
            except Exception:  # noqa: BLE001 - a progress line never fails the run (e.g. a clock being restarted)
                continue
            if done != last:
                on_epoch(done)
                last = done

    thread = threading.Thread(target=poll, name="train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


def run_training(cfg: TrainConfig, *, resume: bool, plan: TrainPlan, on_epoch: OnEpoch) -> dict[str, Any]:
    """Train with Ray Train and return the run summary (also in `<out>/train_summary.json`). `plan`: the
    driver's listing + split. `on_epoch(done)`: progress, called from a driver thread as epochs start and once
    when training ends.

    Raises the worker's error (wrapped by Ray as TrainingFailedError) when training fails."""
    storage_path, storage_fs = checkpoint_storage(cfg.out)
    name = run_name(cfg.out, resume)
    need = cfg.num_workers * cfg.cpus_per_worker + 1  # at least one CPU left for the read/decode tasks
    with cluster.session(num_cpus=max(os.cpu_count() or 2, math.ceil(need)), extra_env=WORKER_ENV_DEFAULTS):
        clock = EpochClock.remote()
        datasets = build_datasets(cfg, plan, clock)
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "plan": plan.meta(), "clock": clock},
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
            ),
            datasets=datasets,
            dataset_config=DataConfig(datasets_to_split=["train"] if "train" in datasets else []),
            # the workers' env comes from the job's runtime_env (ray.init / connect()) + inheritance
            run_config=RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        run = {"out": cfg.out, "run": name, "n_train": plan.n_train, "n_val": plan.n_val}
        log.info("ray_train_start", num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, **run)
        with _watch_epochs(clock, on_epoch):
            trainer.fit()
    on_epoch(cfg.passes)
    summary = read_summary(cfg.out)
    log.info(
        "ray_train_done", out=cfg.out, **{k: v for k, v in summary.items() if not isinstance(v, dict | list)}
    )
    return summary
