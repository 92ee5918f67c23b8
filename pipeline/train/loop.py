"""The training worker loop (no Ray): a plain function over a TrainConfig, the driver's plan and `TrainHooks`
(`pipeline.train.hooks`). Its parts: the worker's view of the run (`train.run`), the MoLE fine-tuning epochs
(`train.fine_tune`), validation (`train.validate`); the in-process runner is `train.local`.

Images arrive as uint8 batches of the streaming feed (`pipeline.train.feed`, whichever runner runs its stages)
and are normalised on the training device. No worker holds the data set: memory does not grow with the number
of images (the linear probe keeps one feature vector per training image).

Methods:
- `mole` [paper + ours]: the MoLE fine-tuning epochs of `train.fine_tune`, with UnivFD train augmentations.
  Data parallel: each rank trains on a disjoint part of every epoch with a per-rank batch of
  ceil(batch_size / world) (effective batch ≈ batch_size), gradients averaged by DDP.
- `linear` [code + ours]: frozen features (a streamed inference pass) -> scikit-learn classifier
  (`train.linear`) -> weights copied into the linear heads.

Every epoch ends with a training state (`pipeline.train.state`) handed to the runner (Ray Train checkpoint); a
restarted worker or a `--resume`d job continues after the last completed epoch. Both methods end with
calibration on the validation split and `save_detector` plus train_config.json, metrics.jsonl (one line per
completed epoch, from the state's history), calibration.json and train_summary.json in the checkpoint
directory."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import storage
from pipeline.logs import get_logger
from pipeline.train.calibrate import calibrate_from_scores
from pipeline.train.config import TrainConfig
from pipeline.train.fine_tune import train_mole
from pipeline.train.hooks import TrainHooks
from pipeline.train.run import WorkerRun
from pipeline.train.state import TrainState, read_state
from pipeline.train.validate import predict_stream

log = get_logger(__name__)

SUMMARY_FILE = "train_summary.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _train_linear(run: WorkerRun, det: torch.nn.Module) -> dict[str, Any]:
    det = det.to(run.device)
    t0 = time.perf_counter()
    run.fit_linear_heads(det, masked=False, c=run.cfg.linear_c)
    val = run.validate(det)
    row = {"epoch": 1, "n_train": run.plan["n_train"], "seconds": round(time.perf_counter() - t0, 3), **val}
    log.info("linear_trained", **row)
    run.hooks.report(row)
    return row


def train_worker(cfg: TrainConfig, plan: dict[str, Any], hooks: TrainHooks) -> dict[str, Any] | None:
    """Train one detector as described by `cfg` on the driver's `plan` (TrainPlan.meta()) and write the
    checkpoint directory `cfg.out`. Returns the summary on rank 0 (None on other ranks)."""
    from pipeline.models import DetectorMeta, create_detector, save_detector

    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    t_start = time.perf_counter()
    run = WorkerRun(cfg, plan, hooks)
    rank0 = hooks.world_rank == 0
    det = create_detector(run.det_cfg, pretrained=cfg.backbone(run.det_cfg.pretrained))

    state: TrainState | None = None
    if cfg.method == "mole":
        with tempfile.TemporaryDirectory(prefix="genscan-resume-", ignore_cleanup_errors=True) as tmp:
            resume_dir = hooks.latest_state(Path(tmp))
            resumed = read_state(resume_dir) if resume_dir is not None else None
        if resumed is not None and resumed.split != plan["split"]:
            raise ValueError(
                f"cannot resume: the checkpoint's train/validation split ({resumed.split.get('n_train')} + "
                f"{resumed.split.get('n_val')} images) differs from this run's listing of {cfg.data}; "
                "the data or the seed / val_fraction changed"
            )
        state = train_mole(run, det, resumed)
        history = state.history
    else:
        if not rank0:  # one fit is enough; report once like rank 0 does
            hooks.report({"epoch": 1, "idle_rank": hooks.world_rank})
            return None
        history = [_train_linear(run, det)]
    if not rank0:
        return None

    pred = predict_stream(det, hooks.eval_batches("val"), run.device, run.eval_skips)
    if np.any(pred["label"] == 0):
        calib = calibrate_from_scores(
            pred["label"],
            pred["p_fake"],
            pred["generator_scores"],
            target_fpr=cfg.target_fpr,
            unknown_quantile=cfg.unknown_quantile,
            n_generators=len(run.generators),
        )
    else:
        log.warning(
            "calibration_skipped", reason="no real images in the validation split; threshold stays 0.5"
        )
        calib = {"threshold": 0.5, "unknown_threshold": 0.0, "skipped": True}
    notes = {
        "trained_by": "pipeline.train",
        "method": cfg.method,
        "mask": cfg.mask if cfg.mask == "none" else f"{cfg.mask}@{cfg.mask_ratio}",
        "train_generators": run.generators,
        "train_data": cfg.data,
        "calibration": calib,
        "split": plan["split"],
    }
    meta = DetectorMeta(
        generators=list(run.generators),
        threshold=calib["threshold"],
        unknown_threshold=calib["unknown_threshold"],
        notes=notes,
    )
    det.cpu()
    with tempfile.TemporaryDirectory(prefix="genscan-ckpt-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        meta = save_detector(det, str(work), meta)
        (work / "train_config.json").write_text(cfg.to_json())
        (work / "calibration.json").write_text(json.dumps(calib, indent=2))
        (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        skipped = {"train": run.train_skips.record(), "eval": run.eval_skips.record()}
        summary = {
            "method": cfg.method,
            "mask": cfg.mask,
            "config": cfg.config,
            "generators": run.generators,
            "n_train": plan["n_train"],
            "n_val": plan["n_val"],
            "train_counts": plan["counts"]["train"],
            "val_counts": plan["counts"]["val"],
            "split": plan["split"],
            "epochs": len(history),
            "best_epoch": history[-1].get("best_epoch"),
            "final": history[-1],
            "calibration": calib,
            "skipped": skipped,
            "resumes": state.resumes if state is not None else [],
            "world_size": hooks.world_size,
            "effective_batch": per_rank_batch(cfg.batch_size, hooks.world_size) * hooks.world_size,
            "seconds": round(time.perf_counter() - t_start, 2),
            "checkpoint": cfg.out,
            "detector_id": meta.detector_id,
        }
        if skipped["train"]["n"] or skipped["eval"]["n"]:
            log.warning(
                "unreadable_images_summary",
                train=skipped["train"]["n"],
                eval=skipped["eval"]["n"],
                examples=(skipped["train"]["examples"] + skipped["eval"]["examples"])[:5],
            )
        (work / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float))
        storage.publish_dir(work, cfg.out)
    log.info("checkpoint_written", out=cfg.out, seconds=summary["seconds"], threshold=calib["threshold"])
    return summary


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """`batch_size` is the effective (global) batch: each of `world_size` ranks takes ceil(batch / world)."""
    return -(-batch_size // world_size)


def read_summary(out: str) -> dict[str, Any]:
    uri = storage.join(out, SUMMARY_FILE)
    if not storage.exists(uri):
        raise RuntimeError(f"training finished without writing {uri}")
    return json.loads(storage.read_bytes(uri))
