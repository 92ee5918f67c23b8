"""One worker's view of a training run [ours]: its config, the driver's plan, the detector config, skip
counters, validation and the linear-probe fit, and the per-epoch state handed to the runner."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.train.config import TrainConfig
from pipeline.train.feed import SkipCounter
from pipeline.train.hooks import TrainHooks
from pipeline.train.state import TrainState, write_state
from pipeline.train.validate import predict_stream, val_metrics


class WorkerRun:
    """One worker's view of a training run (config, plan metadata, detector config, skip counters)."""

    def __init__(self, cfg: TrainConfig, plan: dict[str, Any], hooks: TrainHooks) -> None:
        from pipeline.models import DetectorConfig
        from pipeline.train.data import patch_size

        self.cfg, self.plan, self.hooks = cfg, plan, hooks
        self.generators: list[str] = list(plan["generators"])
        self.det_cfg = DetectorConfig.load(cfg.config).model_copy(update={"generators": self.generators})
        self.patch = patch_size(self.det_cfg)
        self.device = hooks.device()
        self.train_skips, self.eval_skips = SkipCounter(), SkipCounter()

    def validate(self, det: torch.nn.Module) -> dict[str, float]:
        """Validation metrics computed on rank 0 over the whole streamed validation split, shared with all."""
        val: dict[str, float] = {}
        if self.hooks.world_rank == 0 and self.plan["n_val"]:
            val = val_metrics(
                predict_stream(det, self.hooks.eval_batches("val"), self.device, self.eval_skips)
            )
        return self.hooks.broadcast(val)

    def fit_linear_heads(self, det: torch.nn.Module, *, masked: bool, c: float) -> None:
        """Both heads from frozen features of the unaugmented training images (a streamed inference pass, then
        scikit-learn, see linear.py)."""
        from pipeline.train.linear import fit_binary, fit_multiclass

        mask = (self.patch, self.cfg.mask_ratio) if masked else None
        pred = predict_stream(
            det,
            self.hooks.eval_batches("train"),
            self.device,
            self.eval_skips,
            features=True,
            mask=mask,
        )
        feats, labels = pred["features"], pred["label"]
        w, b = fit_binary(feats, labels, classifier=self.cfg.linear_classifier, c=c, seed=self.cfg.seed)
        det.set_linear_head(w, b)
        if self.generators:
            gw, gb = fit_multiclass(feats, pred["cls"], 1 + len(self.generators), c=c, seed=self.cfg.seed)
            det.set_generator_head(gw, gb)


def hand_off_epoch(
    run: WorkerRun,
    state: TrainState,
    trainable: dict[str, torch.Tensor],
    opt: Any,
    sched: Any,
    row: dict[str, Any],
) -> None:
    """Rank 0 writes the epoch's training state; every rank reports (Ray Train's report is collective)."""
    if run.hooks.world_rank != 0:
        run.hooks.report(row, None)
        return
    state.params = {n: p.detach() for n, p in trainable.items()}
    state.optimizer = opt.state_dict()
    state.scheduler = sched.state_dict()
    state.skipped = run.train_skips.record()
    with tempfile.TemporaryDirectory(prefix="genscan-state-", ignore_cleanup_errors=True) as tmp:
        write_state(Path(tmp), state)
        run.hooks.report(row, Path(tmp))
