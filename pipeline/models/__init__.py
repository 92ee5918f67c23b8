"""Detector core (issue 2): open_clip CLIP-ViT + MoLE adapters / frozen-feature linear head. No Ray here.

See docs/architecture.md ("Detector API") for the contract other packages rely on. Exports are resolved
lazily (PEP 562) so ``python -m pipeline.models list`` and config-only users do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DetectorMeta": "pipeline.models.meta",
    "load_detector": "pipeline.models.checkpoint",
    "read_meta": "pipeline.models.meta",
    "save_detector": "pipeline.models.checkpoint",
    "DetectorConfig": "pipeline.models.config",
    "HeadConfig": "pipeline.models.config",
    "MoLEConfig": "pipeline.models.config",
    "list_configs": "pipeline.models.config",
    "CheckpointError": "pipeline.models.meta",
    "Detector": "pipeline.models.detector",
    "DetectorOutput": "pipeline.models.detector",
    "create_detector": "pipeline.models.detector",
    "Predictor": "pipeline.models.predictor",
    "DetectorSet": "pipeline.models.ensemble",
    "load_detector_set": "pipeline.models.ensemble",
    "FUSIONS": "pipeline.models.fusion",
    "fuse": "pipeline.models.fusion",
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
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
