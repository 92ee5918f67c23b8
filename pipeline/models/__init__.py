"""Detector core (issue 2): open_clip CLIP-ViT + MoLE adapters / frozen-feature linear head. No Ray here.

See docs/architecture.md ("Detector API") for the contract other packages rely on. Exports are resolved
lazily (PEP 562) so ``python -m pipeline.models list`` and config-only users do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {  # module -> the names it exports here
    "pipeline.models.checkpoint": ("load_detector", "save_detector"),
    "pipeline.models.config": ("DetectorConfig", "HeadConfig", "MoLEConfig", "list_configs"),
    "pipeline.models.detector": ("Detector", "DetectorOutput", "create_detector"),
    "pipeline.models.ensemble": ("DetectorSet", "load_detector_set"),
    "pipeline.models.fusion": ("FUSIONS", "fuse"),
    "pipeline.models.meta": ("CheckpointError", "DetectorMeta", "read_meta"),
    "pipeline.models.predictor": ("Predictor",),
}

__all__ = [
    "FUSIONS",
    "CheckpointError",
    "Detector",
    "DetectorConfig",
    "DetectorMeta",
    "DetectorOutput",
    "DetectorSet",
    "HeadConfig",
    "MoLEConfig",
    "Predictor",
    "create_detector",
    "fuse",
    "list_configs",
    "load_detector",
    "load_detector_set",
    "read_meta",
    "save_detector",
]

if TYPE_CHECKING:
    from pipeline.models.checkpoint import load_detector, save_detector
    from pipeline.models.config import DetectorConfig, HeadConfig, MoLEConfig, list_configs
    from pipeline.models.detector import Detector, DetectorOutput, create_detector
    from pipeline.models.ensemble import DetectorSet, load_detector_set
    from pipeline.models.fusion import FUSIONS, fuse
    from pipeline.models.meta import CheckpointError, DetectorMeta, read_meta
    from pipeline.models.predictor import Predictor


def __getattr__(name: str) -> Any:
    for module, names in _EXPORTS.items():
        if name in names:
            value = getattr(importlib.import_module(module), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
