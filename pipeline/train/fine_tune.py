"""The MoLE fine-tuning loop [paper + ours]: frozen backbone; adapters, routers and heads trained with AdamW
on BCE-with-logits (real/fake) + cross-entropy attribution over ["real", *generators] (+ the router
load-balancing loss when the detector has one); lr /= 10 when validation accuracy has not improved for
`plateau_patience` epochs; optional texture-aware masking of the top-ρ textured patches (training only, both
classes); every epoch's state handed to the runner."""

from __future__ import annotations

import math
import time
from dataclasses import astuple, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.logs import get_logger
from pipeline.train.feed import SkipCounter, to_device
from pipeline.train.masking import mask_textured
from pipeline.train.run import WorkerRun, hand_off_epoch
from pipeline.train.state import TrainState
from pipeline.train.validate import train_autocast, val_key

log = get_logger("pipeline.train.loop")


@dataclass
class EpochTotals:
    """One epoch's sample-weighted loss sums on this rank (summed over ranks before they are read)."""

    loss: float = 0.0
    bce: float = 0.0
    attr_ce: float = 0.0
    aux: float = 0.0
    samples: float = 0.0
    steps: float = 0.0


def train_mole(run: WorkerRun, det: torch.nn.Module, resumed: TrainState | None) -> TrainState:
    cfg, hooks, device = run.cfg, run.hooks, run.device
    rank0 = hooks.world_rank == 0
    det.to(device)
    trainable = {n: p for n, p in det.named_parameters() if p.requires_grad}
    if not trainable:
        raise RuntimeError("the detector has no trainable parameters (MoLE adapters/heads missing?)")
    if resumed is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(resumed.params[n].to(device))
    elif cfg.head_init == "linear_probe" and rank0:
        # LP-FT [ours, after Kumar et al. 2022]: start the heads from the linear probe of the frozen features
        # (on masked inputs when masking); DDP's start-up broadcast hands rank 0's heads to the other ranks
        run.fit_linear_heads(det, masked=cfg.mask == "texture", c=cfg.probe_c)
    model = hooks.prepare_model(det)
    # under DDP, the detector it wraps (DDP keeps the module's parameter objects: `trainable` stays valid)
    core = model.module if hasattr(model, "module") else model
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
        run.train_skips = SkipCounter(**resumed.skipped)
        log.info("training_resumed", after_epoch=resumed.epoch, rank=hooks.world_rank)
    elif cfg.keep_best and run.plan["n_val"]:
        v0 = run.validate(core)
        if rank0:
            state.best = (val_key(v0), 0, {n: p.detach().clone() for n, p in trainable.items()})
        log.info("epoch0", **v0)
    for epoch in range(state.epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        tot = EpochTotals()
        for b in hooks.train_batches(epoch):
            ok = run.train_skips.add(b)
            x = to_device(b["image"], run.det_cfg, device)
            if cfg.mask == "texture":
                x = mask_textured(x, run.patch, cfg.mask_ratio)
            w = torch.as_tensor(ok, dtype=torch.float32, device=device)
            n_ok = w.sum().clamp_min(1.0)
            y = torch.as_tensor(np.array(b["label"]), dtype=torch.float32, device=device)
            c = torch.as_tensor(np.array(b["cls"]), dtype=torch.long, device=device)
            with train_autocast(device):
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
            aux = core.aux_loss()  # 0 when the detector has no router load-balancing loss
            if cfg.aux_loss_weight > 0:
                loss = loss + cfg.aux_loss_weight * aux.to(device).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = float(ok.sum())
            tot.loss += loss.item() * n
            tot.bce += bce.item() * n
            tot.attr_ce += ce.item() * n
            tot.aux += aux.item() * n
            tot.samples += n
            tot.steps += 1
        train_s = time.perf_counter() - t0
        tot = EpochTotals(*hooks.all_sum(list(astuple(tot))))
        seen = max(tot.samples, 1.0)
        val = run.validate(core)
        score = val.get("val_acc", -tot.loss / seen)
        sched.step(score if math.isfinite(score) else -tot.loss / seen)
        row = {
            "epoch": epoch + 1,
            "loss": tot.loss / seen,
            "bce": tot.bce / seen,
            "attr_ce": tot.attr_ce / seen,
            "aux": tot.aux / seen,
            "lr": opt.param_groups[0]["lr"],
            "n_train": int(tot.samples),
            "steps_per_rank": int(tot.steps / hooks.world_size),
            "train_seconds": round(train_s, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            **val,
        }
        if rank0 and state.best is not None and val_key(val) > state.best[0]:
            state.best = (val_key(val), epoch + 1, {n: p.detach().clone() for n, p in trainable.items()})
        state.history.append(row)
        state.epoch = epoch + 1
        log.info("epoch", rank=hooks.world_rank, **row)
        hand_off_epoch(run, state, trainable, opt, sched, row)
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
