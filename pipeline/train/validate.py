"""Validation during training [ours]: a streamed inference pass of the model being trained through the
scan's engine (`pipeline.models.ensemble.DetectorSet`: its precision rule, its fused path, p_fake by
`pipeline.models.decision`) and the metrics that pick the best epoch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import numpy as np
import torch

from pipeline.metrics import average_precision, class_accuracies
from pipeline.models.decision import sigmoid
from pipeline.models.detector import Detector
from pipeline.models.ensemble import DetectorSet, autocast
from pipeline.models.meta import DetectorMeta
from pipeline.train.feed import SkipCounter
from pipeline.train.masking import mask_textured


def train_dtype(device: torch.device) -> str:
    """Training's precision: bf16 on CUDA (fp16 would need a gradient scaler), fp32 elsewhere (bf16 is far
    slower than fp32 on these CPUs)."""
    return "bfloat16" if device.type == "cuda" else "float32"


def train_autocast(device: torch.device) -> Any:
    """Training's precision through the one autocast rule (pipeline.models.ensemble.autocast)."""
    return autocast(device, train_dtype(device))


def predict_stream(
    det: Detector,
    batches: Iterable[dict[str, np.ndarray]],
    device: torch.device,
    skips: SkipCounter,
    *,
    features: bool = False,
    mask: tuple[int, float] | None = None,
) -> dict[str, np.ndarray]:
    """Unaugmented inference of the model being trained over a stream of uint8 batches (unreadable rows
    dropped and counted) -> label, cls, row, logit, p_fake, generator softmax (and the heads' input features),
    through THE engine: a one-member `DetectorSet` in training's precision, the texture mask (`mask`: patch,
    ratio) as its input transform.

    The engine runs the fused MoLE path in inference mode, as the scan will. That is sound on a model under
    training: the fused weights are rebuilt from the current parameters (their cache is keyed on every source
    tensor's version, so each optimizer step is seen), they agree with the unfused training forward to fp32
    rounding (`python -m pipeline.models check-fused`), and the model's MoLE mode is restored afterwards (the
    training loop sets `train()` again at each epoch)."""
    was_fused = det.fused
    engine = DetectorSet(
        [(det, DetectorMeta(generators=list(det.config.generators)))],
        device=device,
        dtype=train_dtype(device),
        transform=None if mask is None else partial(mask_textured, patch=mask[0], ratio=mask[1]),
        head_features=features,
    )
    did = engine.detector_ids[0]
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "cls", "row", "logit", "gen", "feat")}
    try:
        for b in batches:
            ok = skips.add(b)
            if not ok.any():
                continue
            res = engine.predict({engine.inputs[0]: np.ascontiguousarray(b["image"][ok])})
            out["logit"].append(res["logit"][:, 0])
            out["gen"].append(res["generator_scores"][did])
            if features:
                out["feat"].append(res["head_features"][did])
            for k in ("label", "cls", "row"):
                out[k].append(np.asarray(b[k])[ok])
    finally:
        det.set_fused(was_fused)

    def cat(k: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(out[k]) if out[k] else empty

    logit = cat("logit", np.zeros(0, np.float32))
    return {
        **{k: cat(k, np.zeros(0)).astype(np.int64) for k in ("label", "cls", "row")},
        "logit": logit,
        "p_fake": sigmoid(logit),  # the p_fake rule of every model call (pipeline.models.decision)
        "generator_scores": cat("gen", np.zeros((0, 1), np.float32)),
        "features": cat("feat", np.zeros((0, 0), np.float32)),
    }


def val_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    labels = pred["label"]
    if labels.size == 0:
        return {}
    acc = class_accuracies(labels, pred["logit"], 0.0)
    return {
        "val_acc": acc["acc"],
        "val_real_acc": acc["real_acc"],
        "val_fake_acc": acc["fake_acc"],
        "val_ap": average_precision(labels, pred["logit"]),
        "val_attr_acc": float(np.mean(np.argmax(pred["generator_scores"], 1) == pred["cls"])),
    }


def val_key(val: dict[str, float]) -> tuple[float, float]:
    ap, acc = val.get("val_ap", float("nan")), val.get("val_acc", float("nan"))
    return (ap if math.isfinite(ap) else -1.0, acc if math.isfinite(acc) else -1.0)
