"""The training worker loop (no Ray): a plain function taking a TrainConfig dict.

`pipeline.engine.train` runs it under Ray Train's TorchTrainer and passes `TrainHooks` for rank, DDP and
progress reports; `train_worker(config)` without hooks runs it in-process (one worker).

Methods:
- `mole` [paper + ours]: frozen backbone; MoLE adapters, routers and heads trained with AdamW on
  BCE-with-logits (real/fake) + cross-entropy attribution over ["real", *generators] (+ the router
  load-balancing loss when the detector provides one); UnivFD train augmentations; lr /= 10 when validation
  accuracy has not improved for `plateau_patience` epochs (UnivFD uses patience 5 over many more epochs);
  optional texture-aware masking of the top-ρ textured patches (training only, both classes).
- `linear` [code + ours]: frozen features -> scikit-learn classifier -> weights copied into the linear heads.
Both end with calibration on the validation split (threshold at the target FPR on validation reals, unknown-
generator threshold on validation fakes) and `save_detector` (safetensors + JSON) plus train_config.json,
metrics.jsonl, calibration.json and train_summary.json in the checkpoint directory.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import storage
from pipeline.logs import get_logger
from pipeline.train.calibrate import calibrate_from_scores
from pipeline.train.config import TrainConfig
from pipeline.train.data import TrainData, load_train_data
from pipeline.train.masking import mask_textured

log = get_logger(__name__)

SUMMARY_FILE = "train_summary.json"


class TrainHooks:
    """What the worker loop needs from its runner. The default is a single in-process worker."""

    world_rank: int = 0
    world_size: int = 1

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device())

    def report(self, metrics: dict[str, Any]) -> None:
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def predict_arrays(
    det: torch.nn.Module, pixels: torch.Tensor, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Unmasked, unaugmented forward over normalised pixels -> logit, p_fake, generator softmax, features."""
    det.eval()
    logits, gens, feats = [], [], []
    for i in range(0, pixels.shape[0], batch_size):
        out = det(pixels[i : i + batch_size].to(device))
        logits.append(out.logit.float().cpu())
        gens.append(torch.softmax(out.gen_logits.float(), dim=1).cpu())
        feats.append(out.features.float().cpu())
    logit = torch.cat(logits).numpy() if logits else np.zeros(0, np.float32)
    return {
        "logit": logit,
        "p_fake": torch.sigmoid(torch.from_numpy(logit)).numpy(),
        "generator_scores": torch.cat(gens).numpy() if gens else np.zeros((0, 1), np.float32),
        "features": torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32),
    }


def _val_metrics(labels: np.ndarray, classes: np.ndarray, pred: dict[str, np.ndarray]) -> dict[str, float]:
    from pipeline.eval.metrics import average_precision, class_accuracies

    if labels.size == 0:
        return {}
    acc = class_accuracies(labels, pred["logit"], 0.0)
    out = {
        "val_acc": acc["acc"],
        "val_real_acc": acc["real_acc"],
        "val_fake_acc": acc["fake_acc"],
        "val_ap": average_precision(labels, pred["logit"]),
        "val_attr_acc": float(np.mean(np.argmax(pred["generator_scores"], 1) == classes)),
    }
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


def _train_mole(
    cfg: TrainConfig, data: TrainData, det: torch.nn.Module, hooks: TrainHooks, metrics_path: Path
) -> list[dict[str, Any]]:
    device = hooks.device()
    if cfg.head_init == "linear_probe":
        # LP-FT [ours, after Kumar et al. 2022]: start the heads from the linear probe of the frozen features
        # (on masked inputs when masking), then fine-tune adapters + heads together
        det.to(device)
        _fit_linear_heads(cfg, data, det, device, masked=cfg.mask == "texture", c=cfg.probe_c)
    model = hooks.prepare_model(det)
    core = _unwrap(model)
    params = [p for p in core.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the detector has no trainable parameters (MoLE adapters/heads missing?)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=0.1, patience=cfg.plateau_patience, min_lr=cfg.lr * cfg.min_lr_factor
    )
    n_train = data.n_train
    rank_idx = np.arange(n_train)[hooks.world_rank :: hooks.world_size]
    patch = data.patch_size
    val_pixels = data.val_pixels()
    history: list[dict[str, Any]] = []
    rng = np.random.default_rng(cfg.seed + 1000 * hooks.world_rank)
    trainable = {n: p for n, p in core.named_parameters() if p.requires_grad}
    best: tuple[tuple[float, float], int, dict[str, torch.Tensor]] | None = None
    if cfg.keep_best and val_pixels.shape[0]:
        v0 = _val_metrics(data.val_labels, data.val_classes, predict_arrays(core, val_pixels, 64, device))
        best = (_val_key(v0), 0, {n: p.detach().clone() for n, p in trainable.items()})
        log.info("epoch0", **v0)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(rank_idx)
        tot, tot_bce, tot_ce, tot_aux, seen = 0.0, 0.0, 0.0, 0.0, 0
        for start in range(0, order.size, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = data.train_batch(idx, augment=cfg.augment, rng=rng).to(device)
            if cfg.mask == "texture":
                x = mask_textured(x, patch, cfg.mask_ratio)
            y = torch.as_tensor(data.train_labels[idx], dtype=torch.float32, device=device)
            c = torch.as_tensor(data.train_classes[idx], dtype=torch.long, device=device)
            out = model(x)
            bce = F.binary_cross_entropy_with_logits(out.logit.float(), y)
            loss = bce
            ce = torch.zeros((), device=device)
            if cfg.attribution_weight > 0 and data.has_generator_labels:
                ce = F.cross_entropy(out.gen_logits.float(), c)
                loss = loss + cfg.attribution_weight * ce
            aux = core.aux_loss() if hasattr(core, "aux_loss") else None
            if aux is not None and cfg.aux_loss_weight > 0:
                loss = loss + cfg.aux_loss_weight * aux.to(device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = int(idx.size)
            seen += n
            tot += loss.item() * n
            tot_bce += bce.item() * n
            tot_ce += ce.item() * n
            tot_aux += aux.item() * n if aux is not None else 0.0
        val = _val_metrics(data.val_labels, data.val_classes, predict_arrays(core, val_pixels, 64, device))
        score = val.get("val_acc", -tot / max(seen, 1))
        sched.step(score if math.isfinite(score) else -tot / max(seen, 1))
        row = {
            "epoch": epoch + 1,
            "loss": tot / max(seen, 1),
            "bce": tot_bce / max(seen, 1),
            "attr_ce": tot_ce / max(seen, 1),
            "aux": tot_aux / max(seen, 1),
            "lr": opt.param_groups[0]["lr"],
            "n_train": seen,
            "seconds": round(time.perf_counter() - t0, 3),
            **val,
        }
        if best is not None and _val_key(val) > best[0]:
            best = (_val_key(val), epoch + 1, {n: p.detach().clone() for n, p in trainable.items()})
        history.append(row)
        log.info("epoch", rank=hooks.world_rank, **row)
        if hooks.world_rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        hooks.report(row)
    if best is not None:
        # keep the epoch with the best validation (AP, accuracy); epoch 0 = the linear-probe start
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(best[2][n])
        log.info("best_epoch_restored", epoch=best[1], val_ap=best[0][0], val_acc=best[0][1])
        if history:
            history[-1] = {**history[-1], "best_epoch": best[1]}
    core.eval()
    return history


def _val_key(val: dict[str, float]) -> tuple[float, float]:
    ap, acc = val.get("val_ap", float("nan")), val.get("val_acc", float("nan"))
    return (ap if math.isfinite(ap) else -1.0, acc if math.isfinite(acc) else -1.0)


def _fit_linear_heads(
    cfg: TrainConfig,
    data: TrainData,
    det: torch.nn.Module,
    device: torch.device,
    *,
    masked: bool = False,
    c: float | None = None,
) -> None:
    """Fit both heads on frozen features of the unaugmented training images (scikit-learn, see linear.py)."""
    from pipeline.train.linear import fit_binary, fit_multiclass

    pixels = data.train_pixels()
    if masked:
        pixels = mask_textured(pixels, data.patch_size, cfg.mask_ratio)
    feats = predict_arrays(det, pixels, 64, device)["features"]
    c = cfg.linear_c if c is None else c
    w, b = fit_binary(feats, data.train_labels, classifier=cfg.linear_classifier, c=c, seed=cfg.seed)
    det.set_linear_head(w, b)
    if data.has_generator_labels:
        gw, gb = fit_multiclass(feats, data.train_classes, data.n_classes, c=c, seed=cfg.seed)
        det.set_generator_head(gw, gb)


def _train_linear(cfg: TrainConfig, data: TrainData, det: torch.nn.Module, hooks: TrainHooks) -> dict[str, Any]:
    device = hooks.device()
    det = det.to(device)
    t0 = time.perf_counter()
    _fit_linear_heads(cfg, data, det, device)
    val = _val_metrics(data.val_labels, data.val_classes, predict_arrays(det, data.val_pixels(), 64, device))
    row = {"epoch": 1, "n_train": data.n_train, "seconds": round(time.perf_counter() - t0, 3), **val}
    log.info("linear_trained", **row)
    hooks.report(row)
    return row


def train_worker(config: dict[str, Any] | TrainConfig, hooks: TrainHooks | None = None) -> dict[str, Any] | None:
    """Train one detector as described by `config` and write the checkpoint directory `config.out`.

    Returns the summary on rank 0 (None on other ranks)."""
    from pipeline.models import DetectorConfig, save_detector

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.parse(config, source="train config")
    hooks = hooks or TrainHooks()
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    t_start = time.perf_counter()
    det_cfg = DetectorConfig.load(cfg.config)
    data = load_train_data(cfg, det_cfg)
    det = data.build_detector(pretrained=cfg.pretrained)
    rank0 = hooks.world_rank == 0

    work = Path(tempfile.mkdtemp(prefix="genscan-ckpt-"))
    metrics_path = work / "metrics.jsonl"
    if cfg.method == "mole":
        history = _train_mole(cfg, data, det, hooks, metrics_path)
    else:
        if cfg.num_workers > 1 and not rank0:  # one fit is enough; report once like rank 0 does
            hooks.report({"epoch": 1, "idle_rank": hooks.world_rank})
            shutil.rmtree(work, ignore_errors=True)
            return None
        history = [_train_linear(cfg, data, det, hooks)]
        metrics_path.write_text(json.dumps(history[0]) + "\n")
    if not rank0:
        shutil.rmtree(work, ignore_errors=True)
        return None

    device = hooks.device()
    pred = predict_arrays(det, data.val_pixels(), 64, device)
    if data.val_labels.size and np.any(data.val_labels == 0):
        calib = calibrate_from_scores(
            data.val_labels,
            pred["p_fake"],
            pred["generator_scores"],
            target_fpr=cfg.target_fpr,
            unknown_quantile=cfg.unknown_quantile,
            n_generators=len(data.generators),
        )
    else:
        log.warning("calibration_skipped", reason="no real images in the validation split; threshold stays 0.5")
        calib = {"threshold": 0.5, "unknown_threshold": 0.0, "skipped": True}
    notes = {
        "trained_by": "pipeline.train",
        "method": cfg.method,
        "mask": cfg.mask if cfg.mask == "none" else f"{cfg.mask}@{cfg.mask_ratio}",
        "train_generators": data.generators,
        "train_data": cfg.data,
        "calibration": calib,
    }
    meta = data.make_meta(threshold=calib["threshold"], unknown_threshold=calib["unknown_threshold"], notes=notes)
    det.cpu()
    meta = save_detector(det, str(work), meta)
    (work / "train_config.json").write_text(cfg.to_json())
    (work / "calibration.json").write_text(json.dumps(calib, indent=2))
    summary = {
        "method": cfg.method,
        "mask": cfg.mask,
        "config": cfg.config,
        "generators": data.generators,
        "n_train": data.n_train,
        "n_val": int(data.val_labels.size),
        "train_counts": data.counts["train"],
        "val_counts": data.counts["val"],
        "epochs": len(history),
        "best_epoch": history[-1].get("best_epoch") if history else None,
        "final": history[-1] if history else {},
        "calibration": calib,
        "seconds": round(time.perf_counter() - t_start, 2),
        "checkpoint": cfg.out,
        "detector_id": meta.detector_id,
    }
    (work / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float))
    publish_dir(work, cfg.out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("checkpoint_written", out=cfg.out, seconds=summary["seconds"], threshold=calib["threshold"])
    return summary


def publish_dir(local: Path, dest: str) -> None:
    """Copy every file of `local` into `dest` (local dir or s3:// prefix), each written atomically."""
    for path in sorted(local.iterdir()):
        if path.is_file():
            storage.write_bytes_atomic(storage.join(dest, path.name), path.read_bytes())


def read_summary(out: str) -> dict[str, Any]:
    uri = storage.join(out, SUMMARY_FILE)
    if not storage.exists(uri):
        raise RuntimeError(f"training finished without writing {uri}")
    return json.loads(storage.read_bytes(uri))


def train_local(cfg: TrainConfig) -> dict[str, Any]:
    """In-process training without Ray (one worker); same outputs as the Ray path."""
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.torch_threads))
    summary = train_worker(cfg)
    assert summary is not None  # rank 0 always returns
    return summary
