"""Validation during training [ours]: a streamed inference pass of the model being trained (the precision
rule of `pipeline.models.predictor.autocast`, p_fake by `pipeline.models.decision`, as the scan computes them)
and the metrics that pick the best epoch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from pipeline.metrics import average_precision, class_accuracies
from pipeline.models.decision import sigmoid
from pipeline.models.predictor import autocast
from pipeline.train.feed import SkipCounter, to_device
from pipeline.train.masking import mask_textured


def train_autocast(device: torch.device) -> Any:
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
        with train_autocast(device):
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


def val_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
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


def val_key(val: dict[str, float]) -> tuple[float, float]:
    ap, acc = val.get("val_ap", float("nan")), val.get("val_acc", float("nan"))
    return (ap if math.isfinite(ap) else -1.0, acc if math.isfinite(acc) else -1.0)
