"""Self-checks behind the CLI: parameter counts (``describe``) and fused-vs-unfused equality
(``check-fused``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.models.config import DetectorConfig
from pipeline.models.detector import Detector, create_detector
from pipeline.settings import ConfigError


def describe(cfg: DetectorConfig) -> dict[str, Any]:
    """Parameter counts of `cfg`'s architecture (no download; built on the meta device: shapes without
    weights, so a ViT-L/14 is counted without allocating its 1.7 GB). total = whole CLIP (text tower included)
    + adapters + heads; visual = vision tower + adapters + heads."""
    with torch.device("meta"):
        det = create_detector(cfg, pretrained=None, device="meta")
    out = det.param_counts()
    out["pretrained_default"] = cfg.pretrained
    out["preprocess"] = cfg.preprocess
    if cfg.mole is not None:
        out["mole"] = cfg.mole.model_dump()
    return out


@torch.no_grad()
def randomize_adapters(det: Detector, seed: int = 0, router_scale: float = 3.0) -> None:
    """Random NON-ZERO adapter weights (B included) and a router with spread-out gates, for tests/checks."""
    g = torch.Generator().manual_seed(seed)
    for m in det.mole_modules():
        d = m.router.in_features
        for lora in m.loras:
            lora.up.weight.copy_(torch.randn(lora.up.weight.shape, generator=g) * 0.05)
            lora.down.weight.copy_(torch.randn(lora.down.weight.shape, generator=g) / math.sqrt(d))
        m.router.weight.copy_(torch.randn(m.router.weight.shape, generator=g) * router_scale / math.sqrt(d))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


@torch.no_grad()
def check_fused(cfg: DetectorConfig, *, batch: int, seed: int, top_k: int | None) -> dict[str, Any]:
    """max relative error (inf-norm) between fused and unfused outputs on fresh random inputs, random
    non-zero adapter and router weights."""
    if cfg.method != "mole" or cfg.mole is None:
        raise ConfigError(f"{cfg.name}: check-fused needs a MoLE config (method mole; this is {cfg.method})")
    if top_k is not None:
        cfg = DetectorConfig.parse(
            {**cfg.model_dump(), "mole": {**cfg.mole.model_dump(), "top_k": top_k}}, source="check-fused"
        )
    torch.manual_seed(seed)
    det = create_detector(cfg, pretrained=None)
    randomize_adapters(det, seed=seed)
    x = torch.randn(
        batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(seed + 1)
    )
    det.set_fused(False)
    ref = det(x)
    det.set_fused(True)
    fused = det(x)
    errs = {
        name: rel_err(getattr(fused, name), getattr(ref, name))
        for name in ("features", "logit", "gen_logits")
    }
    # the adapters must actually change the output (otherwise the check proves nothing)
    det.set_mole_mode("disabled")
    frozen = det(x)
    return {
        "config": cfg.name,
        "batch": batch,
        "top_k": cfg.mole.top_k,
        "max_rel_err": max(errs.values()),
        "rel_err": errs,
        "adapter_effect_rel": rel_err(ref.features, frozen.features),
    }
