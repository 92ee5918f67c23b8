"""Detector core (issue 2): open_clip CLIP-ViT + MoLE adapters / frozen-feature linear head. No Ray here.

See docs/architecture.md ("Detector API") for the contract other packages rely on.
"""

from pipeline.models.checkpoint import DetectorMeta, load_detector, read_meta, save_detector
from pipeline.models.config import DetectorConfig, HeadConfig, MoLEConfig, list_configs
from pipeline.models.detector import CheckpointError, Detector, DetectorOutput, create_detector
from pipeline.models.predictor import Predictor

__all__ = [
    "CheckpointError",
    "Detector",
    "DetectorConfig",
    "DetectorMeta",
    "DetectorOutput",
    "HeadConfig",
    "MoLEConfig",
    "Predictor",
    "create_detector",
    "list_configs",
    "load_detector",
    "read_meta",
    "save_detector",
]
