"""The training worker loop (no Ray): a plain function over a TrainConfig, the driver's plan and `TrainHooks`.

Images arrive as uint8 batches from the streaming feed (`pipeline.train.feed`): the runner supplies them
through `TrainHooks` — `pipeline.engine.train` from `ray.train.get_dataset_shard(...)` (read + decode +
augmentation in CPU Ray Data tasks), `LocalHooks` from the same stage functions run in-process (`--engine
local`). They are normalised on the training device. No worker holds the data set: memory does not grow with
the number of images (the linear probe keeps one feature vector per training image).

Methods:
- `mole` [paper + ours]: frozen backbone; MoLE adapters, routers and heads trained with AdamW on
  BCE-with-logits (real/fake) + cross-entropy attribution over ["real", *generators] (+ the router
  load-balancing loss when the detector provides one); UnivFD train augmentations; lr /= 10 when validation
  accuracy has not improved for `plateau_patience` epochs; optional texture-aware masking of the top-ρ
  textured patches (training only, both classes). Data parallel: each rank trains on a disjoint part of every
  epoch with a per-rank batch of ceil(batch_size / world) (effective batch ≈ batch_size), gradients averaged
  by DDP.
- `linear` [code + ours]: frozen features (a streamed inference pass) -> scikit-learn classifier -> weights
  copied into the linear heads.
Every epoch ends with a training state (`pipeline.train.state`) handed to the runner (Ray Train checkpoint);
a restarted worker or a `--resume`d job continues after the last completed epoch. Both methods end with
calibration on the validation split and `save_detector` plus train_config.json, metrics.jsonl (one line per
completed epoch, from the state's history), calibration.json and train_summary.json in the checkpoint
directory.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import storage
from pipeline.logs import get_logger
from pipeline.models.decision import sigmoid
from pipeline.models.predictor import autocast
from pipeline.train.calibrate import calibrate_from_scores
from pipeline.train.config import TrainConfig
from pipeline.train.feed import DecodeSpec, SkipCounter, TrainPlan, iter_local, to_device, train_spec
from pipeline.train.masking import mask_textured
from pipeline.train.state import TrainState, read_state, write_state

log = get_logger(__name__)

SUMMARY_FILE = "train_summary.json"
CHECKPOINTS_DIR = "_checkpoints"  # under --out: per-epoch training states (Ray Train's storage)


class TrainHooks:
    """What the worker loop needs from its runner: rank, device, DDP, the data feed, collectives,
    checkpoints."""

    world_rank: int = 0
    world_size: int = 1

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device())

    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        """This rank's disjoint part of epoch `epoch` (0-based), augmented when the config says so."""
        raise NotImplementedError

    def eval_batches(self, split: str) -> Iterable[dict[str, np.ndarray]]:
        """The whole `split` ("val" | "train"), unaugmented, listing order (rank 0 only)."""
        raise NotImplementedError

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_sum(self, values: list[float]) -> list[float]:
        return values

    def latest_state(self) -> Path | None:
        """A local directory holding the last epoch's training state to resume from, or None."""
        return None

    def report(self, metrics: dict[str, Any], state_dir: Path | None = None) -> None:
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _autocast(device: torch.device) -> Any:
    """Training's precision through the one autocast rule (pipeline.models.predictor.autocast): bf16 on CUDA
    (fp16 would need a gradient scaler), fp32 elsewhere (bf16 is far slower than fp32 on these CPUs)."""
    return autocast(device, "bfloat16" if device.type == "cuda" else "float32")


@torch.no_grad()
def predict_stream(
    det: torch.nn.Module,
    batches: Iterable[dict[str, np.ndarray]],
    det_cfg: Any,
    device: torch.device,
    skips: SkipCounter,
    *,
    features: bool = False,
    mask: tuple[int, float] | None = None,
) -> dict[str, np.ndarray]:
    """Unaugmented forward over a stream of uint8 batches (unreadable rows dropped and counted) -> label, cls,
    logit, p_fake, generator softmax (and features)."""
    det.eval()
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "cls", "row", "logit", "gen", "feat")}
    for b in batches:
        ok = skips.add(b)
        if not ok.any():
            continue
        x = to_device(b["image"][ok], det_cfg, device)
        if mask is not None:
            x = mask_textured(x, mask[0], mask[1])
        with _autocast(device):
            o = det(x)
        out["logit"].append(o.logit.float().cpu().numpy())
        out["gen"].append(torch.softmax(o.gen_logits.float(), dim=1).cpu().numpy())
        if features:
            out["feat"].append(o.features.float().cpu().numpy())
        for k in ("label", "cls", "row"):
            out[k].append(np.asarray(b[k])[ok])
    logit = np.concatenate(out["logit"]) if out["logit"] else np.zeros(0, np.float32)
    return {
        "label": np.concatenate(out["label"]).astype(np.int64) if out["label"] else np.zeros(0, np.int64),
        "cls": np.concatenate(out["cls"]).astype(np.int64) if out["cls"] else np.zeros(0, np.int64),
        "row": np.concatenate(out["row"]).astype(np.int64) if out["row"] else np.zeros(0, np.int64),
        "logit": logit,
        "p_fake": sigmoid(logit),  # the p_fake rule of every model call (pipeline.models.decision)
        "generator_scores": np.concatenate(out["gen"]) if out["gen"] else np.zeros((0, 1), np.float32),
        "features": np.concatenate(out["feat"]) if out["feat"] else np.zeros((0, 0), np.float32),
    }


def _val_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    from pipeline.metrics import average_precision, class_accuracies

    labels = pred["label"]
    if labels.size == 0:
        return {}
    acc = class_accuracies(labels, pred["logit"], 0.0)
    out = {
        "val_acc": acc["acc"],
        "val_real_acc": acc["real_acc"],
        "val_fake_acc": acc["fake_acc"],
        "val_ap": average_precision(labels, pred["logit"]),
        "val_attr_acc": float(np.mean(np.argmax(pred["generator_scores"], 1) == pred["cls"])),
    }
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


def _val_key(val: dict[str, float]) -> tuple[float, float]:
    ap, acc = val.get("val_ap", float("nan")), val.get("val_acc", float("nan"))
    return (ap if math.isfinite(ap) else -1.0, acc if math.isfinite(acc) else -1.0)


class _Run:
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

    @property
    def n_classes(self) -> int:
        return 1 + len(self.generators)

    def validate(self, det: torch.nn.Module) -> dict[str, float]:
        """Validation metrics computed on rank 0 over the whole streamed validation split, shared with all."""
        val: dict[str, float] = {}
        if self.hooks.world_rank == 0 and self.plan["n_val"]:
            val = _val_metrics(
                predict_stream(
                    det, self.hooks.eval_batches("val"), self.det_cfg, self.device, self.eval_skips
                )
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
            self.det_cfg,
            self.device,
            self.eval_skips,
            features=True,
            mask=mask,
        )
        feats, labels = pred["features"], pred["label"]
        w, b = fit_binary(feats, labels, classifier=self.cfg.linear_classifier, c=c, seed=self.cfg.seed)
        det.set_linear_head(w, b)
        if self.generators:
            gw, gb = fit_multiclass(feats, pred["cls"], self.n_classes, c=c, seed=self.cfg.seed)
            det.set_generator_head(gw, gb)


def _train_mole(run: _Run, det: torch.nn.Module, resumed: TrainState | None) -> TrainState:
    cfg, hooks, device = run.cfg, run.hooks, run.device
    rank0 = hooks.world_rank == 0
    det.to(device)
    trainable_names = [n for n, p in det.named_parameters() if p.requires_grad]
    if not trainable_names:
        raise RuntimeError("the detector has no trainable parameters (MoLE adapters/heads missing?)")
    if resumed is not None:
        with torch.no_grad():
            named = dict(det.named_parameters())
            for n in trainable_names:
                named[n].copy_(resumed.params[n].to(device))
    elif cfg.head_init == "linear_probe" and rank0:
        # LP-FT [ours, after Kumar et al. 2022]: start the heads from the linear probe of the frozen features
        # (on masked inputs when masking); DDP's start-up broadcast hands rank 0's heads to the other ranks
        run.fit_linear_heads(det, masked=cfg.mask == "texture", c=cfg.probe_c)
    model = hooks.prepare_model(det)
    core = _unwrap(model)
    trainable = {n: p for n, p in core.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(trainable.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=0.1, patience=cfg.plateau_patience, min_lr=cfg.lr * cfg.min_lr_factor
    )
    state = TrainState(
        epoch=0, history=[], params={}, best=None, optimizer={}, scheduler={}, split=run.plan["split"]
    )
    if resumed is not None:
        opt.load_state_dict(resumed.optimizer)
        sched.load_state_dict(resumed.scheduler)
        state = resumed
        state.resumes = [*resumed.resumes, {"after_epoch": resumed.epoch, "world_size": hooks.world_size}]
        run.train_skips.n = int(resumed.skipped.get("n", 0))
        run.train_skips.examples = list(resumed.skipped.get("examples", []))
        log.info("training_resumed", after_epoch=resumed.epoch, rank=hooks.world_rank)
    elif cfg.keep_best and run.plan["n_val"]:
        v0 = run.validate(core)
        if rank0:
            state.best = (_val_key(v0), 0, {n: p.detach().clone() for n, p in trainable.items()})
        log.info("epoch0", **v0)
    for epoch in range(state.epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        tot = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # loss, bce, ce, aux (all sample-weighted), samples, steps
        for b in hooks.train_batches(epoch):
            ok = run.train_skips.add(b)
            x = to_device(b["image"], run.det_cfg, device)
            if cfg.mask == "texture":
                x = mask_textured(x, run.patch, cfg.mask_ratio)
            w = torch.as_tensor(ok, dtype=torch.float32, device=device)
            n_ok = w.sum().clamp_min(1.0)
            y = torch.as_tensor(np.array(b["label"]), dtype=torch.float32, device=device)
            c = torch.as_tensor(np.array(b["cls"]), dtype=torch.long, device=device)
            with _autocast(device):
                out = model(x)
            # unreadable rows (ok=False, zero pixels) weigh 0: every rank still takes the same number of steps
            bce = (
                F.binary_cross_entropy_with_logits(out.logit.float(), y, reduction="none") * w
            ).sum() / n_ok
            loss = bce
            ce = torch.zeros((), device=device)
            if cfg.attribution_weight > 0 and run.generators:
                ce = (F.cross_entropy(out.gen_logits.float(), c, reduction="none") * w).sum() / n_ok
                loss = loss + cfg.attribution_weight * ce
            aux = core.aux_loss() if hasattr(core, "aux_loss") else None
            if aux is not None and cfg.aux_loss_weight > 0:
                loss = loss + cfg.aux_loss_weight * aux.to(device).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = float(ok.sum())
            tot[0] += loss.item() * n
            tot[1] += bce.item() * n
            tot[2] += ce.item() * n
            tot[3] += aux.item() * n if aux is not None else 0.0
            tot[4] += n
            tot[5] += 1
        train_s = time.perf_counter() - t0
        tot = hooks.all_sum(tot)
        seen = max(tot[4], 1.0)
        val = run.validate(core)
        score = val.get("val_acc", -tot[0] / seen)
        sched.step(score if math.isfinite(score) else -tot[0] / seen)
        row = {
            "epoch": epoch + 1,
            "loss": tot[0] / seen,
            "bce": tot[1] / seen,
            "attr_ce": tot[2] / seen,
            "aux": tot[3] / seen,
            "lr": opt.param_groups[0]["lr"],
            "n_train": int(tot[4]),
            "steps_per_rank": int(tot[5] / hooks.world_size),
            "train_seconds": round(train_s, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            **val,
        }
        if rank0 and state.best is not None and _val_key(val) > state.best[0]:
            state.best = (_val_key(val), epoch + 1, {n: p.detach().clone() for n, p in trainable.items()})
        state.history.append(row)
        state.epoch = epoch + 1
        log.info("epoch", rank=hooks.world_rank, **row)
        _checkpoint(run, state, trainable, opt, sched, row)
    if state.best is not None and rank0:
        # keep the epoch with the best validation (AP, accuracy); epoch 0 = the linear-probe start
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state.best[2][n].to(p.device))
        log.info(
            "best_epoch_restored", epoch=state.best[1], val_ap=state.best[0][0], val_acc=state.best[0][1]
        )
        if state.history:
            state.history[-1] = {**state.history[-1], "best_epoch": state.best[1]}
    core.eval()
    return state


def _checkpoint(
    run: _Run,
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
    tmp = Path(tempfile.mkdtemp(prefix="genscan-state-"))
    try:
        write_state(tmp, state)
        run.hooks.report(row, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _train_linear(run: _Run, det: torch.nn.Module) -> dict[str, Any]:
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
    run = _Run(cfg, plan, hooks)
    rank0 = hooks.world_rank == 0
    if cfg.pretrained is None:  # the detector config's own default source
        det = create_detector(run.det_cfg)
    else:
        det = create_detector(run.det_cfg, pretrained=None if cfg.pretrained == "none" else cfg.pretrained)

    state: TrainState | None = None
    if cfg.method == "mole":
        resume_dir = hooks.latest_state()
        resumed = read_state(resume_dir) if resume_dir is not None else None
        if resumed is not None and resumed.split != plan["split"]:
            raise ValueError(
                f"cannot resume: the checkpoint's train/validation split ({resumed.split.get('n_train')} + "
                f"{resumed.split.get('n_val')} images) differs from this run's listing of {cfg.data}; "
                "the data or the seed / val_fraction changed"
            )
        state = _train_mole(run, det, resumed)
        history = state.history
    else:
        if cfg.num_workers > 1 and not rank0:  # one fit is enough; report once like rank 0 does
            hooks.report({"epoch": 1, "idle_rank": hooks.world_rank})
            return None
        history = [_train_linear(run, det)]
    if not rank0:
        return None

    pred = predict_stream(det, hooks.eval_batches("val"), run.det_cfg, run.device, run.eval_skips)
    if pred["label"].size and np.any(pred["label"] == 0):
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
    work = Path(tempfile.mkdtemp(prefix="genscan-ckpt-"))
    try:
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
            "best_epoch": history[-1].get("best_epoch") if history else None,
            "final": history[-1] if history else {},
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
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


# ---- in-process runner (--engine local) --------------------------------------------------------------------
class LocalHooks(TrainHooks):
    """One in-process worker: the feed's stage functions run in a small thread pool (`feed.iter_local`); the
    per-epoch training state goes to `<out>/_checkpoints/local/epoch_NNNN/` (the last one is resumed from)."""

    def __init__(
        self,
        cfg: TrainConfig,
        plan: TrainPlan,
        *,
        resume: bool = False,
        on_epoch: Callable[[int], None] | None = None,
    ) -> None:
        from pipeline.models import DetectorConfig
        from pipeline.train.data import patch_size

        self.cfg, self.plan, self.resume, self.on_epoch = cfg, plan, resume, on_epoch
        det_cfg = DetectorConfig.load(cfg.config).model_copy(update={"generators": plan.generators})
        self.train_stage = train_spec(cfg, det_cfg, patch_size(det_cfg))
        self.plain_stage = DecodeSpec(det_cfg=det_cfg)
        self.root = storage.join(cfg.out, CHECKPOINTS_DIR, "local")
        self._tmp: Path | None = None

    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        from pipeline.train.feed import DecodeStage

        if self.on_epoch is not None:  # `epoch` (0-based) is starting: that many are done
            self.on_epoch(epoch)
        return iter_local(
            self.plan.train,
            DecodeStage(self.train_stage),
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
        )

    def eval_batches(self, split: str) -> Iterable[dict[str, np.ndarray]]:
        from pipeline.train.feed import DecodeStage

        table = self.plan.val if split == "val" else self.plan.train
        return iter_local(table, DecodeStage(self.plain_stage), batch_size=64)

    def report(self, metrics: dict[str, Any], state_dir: Path | None = None) -> None:
        if state_dir is not None:
            storage.publish_dir(state_dir, storage.join(self.root, f"epoch_{int(metrics['epoch']):04d}"))

    def latest_state(self) -> Path | None:
        if not self.resume:
            return None
        fs, root = storage.filesystem(self.root)
        if not fs.exists(root):
            return None
        done = sorted(p for p in fs.ls(root, detail=False) if fs.exists(f"{p}/state.json"))
        if not done:
            return None
        self._tmp = Path(tempfile.mkdtemp(prefix="genscan-resume-"))
        for name in ("state.json", "state.safetensors"):
            (self._tmp / name).write_bytes(fs.cat_file(f"{done[-1]}/{name}"))
        return self._tmp


def train_local(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    plan: TrainPlan | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """In-process training without Ray (one worker), through the same streaming stages; same outputs.
    `on_epoch(done)` is called as each epoch starts and once more when training ends (progress line)."""
    from pipeline.train.feed import make_plan

    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.torch_threads))
    plan = plan or make_plan(cfg)
    hooks = LocalHooks(cfg, plan, resume=resume, on_epoch=on_epoch)
    try:
        summary = train_worker(cfg, plan.meta(), hooks)
    finally:
        if hooks._tmp is not None:
            shutil.rmtree(hooks._tmp, ignore_errors=True)
    assert summary is not None  # rank 0 always returns
    if on_epoch is not None:
        on_epoch(cfg.passes)
    return summary
