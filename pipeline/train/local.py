"""The in-process training runner (`--engine local`) [ours]: the feed's stage functions in a small thread pool
(`feed.iter_local`), one worker, the same loop and outputs as the Ray Train runner."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.train.config import TrainConfig
from pipeline.train.feed import DecodeSpec, DecodeStage, TrainPlan, iter_local, train_spec
from pipeline.train.hooks import CHECKPOINTS_DIR, EVAL_BATCH, OnEpoch, TrainHooks
from pipeline.train.loop import train_worker


class LocalHooks(TrainHooks):
    """One in-process worker; `--resume` continues from the last `<out>/_checkpoints/local/epoch_NNNN/`."""

    def __init__(self, cfg: TrainConfig, plan: TrainPlan, *, resume: bool, on_epoch: OnEpoch) -> None:
        from pipeline.models import DetectorConfig

        self.cfg, self.plan, self.resume, self.on_epoch = cfg, plan, resume, on_epoch
        det_cfg = DetectorConfig.load(cfg.config).model_copy(update={"generators": plan.generators})
        self.train_stage = DecodeStage(train_spec(cfg, det_cfg))
        self.plain_stage = DecodeStage(DecodeSpec(det_cfg=det_cfg))
        self.root = storage.join(cfg.out, CHECKPOINTS_DIR, "local")

    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        self.on_epoch(epoch)  # `epoch` (0-based) is starting: that many are done
        return iter_local(
            self.plan.train,
            self.train_stage,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
        )

    def eval_batches(self, split: str) -> Iterable[dict[str, np.ndarray]]:
        table = self.plan.val if split == "val" else self.plan.train
        return iter_local(table, self.plain_stage, batch_size=EVAL_BATCH)

    def report(self, metrics: dict[str, Any], state_dir: Path | None = None) -> None:
        if state_dir is not None:
            storage.publish_dir(state_dir, storage.join(self.root, f"epoch_{int(metrics['epoch']):04d}"))

    def latest_state(self, into: Path) -> Path | None:
        if not self.resume:
            return None
        fs, root = storage.filesystem(self.root)
        done = [n for n in storage.list_names(self.root) if fs.exists(f"{root}/{n}/state.json")]
        if not done:
            return None
        for name in ("state.json", "state.safetensors"):
            (into / name).write_bytes(fs.cat_file(f"{root}/{done[-1]}/{name}"))
        return into


def train_local(cfg: TrainConfig, *, resume: bool, plan: TrainPlan, on_epoch: OnEpoch) -> dict[str, Any]:
    """In-process training without Ray (one worker) of the driver's `plan`, through the same streaming stages;
    same outputs. `on_epoch(done)` is called as each epoch starts and once more when training ends (progress
    line)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.torch_threads))
    summary = train_worker(cfg, plan.meta(), LocalHooks(cfg, plan, resume=resume, on_epoch=on_epoch))
    assert summary is not None  # rank 0 always returns
    on_epoch(cfg.passes)
    return summary
