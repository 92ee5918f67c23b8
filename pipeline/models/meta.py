"""The JSON half of a detector checkpoint (``detector.json``: DetectorMeta) and the checkpoint rules that need no
weights: reading the meta, refusing pickles. No torch here: the scan's driver reads a detector's meta before any
Ray work and never loads torch or open_clip (seconds of start-up); ``pipeline.models.checkpoint`` loads weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline import storage
from pipeline.models.config import DetectorConfig
from pipeline.models.constants import META_FILE, PICKLE_SUFFIXES
from pipeline.settings import StrictModel


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used (missing/unexpected keys, wrong shapes, a pickle)."""


def refuse_pickle(path: str) -> None:
    if any(str(path).lower().endswith(s) for s in PICKLE_SUFFIXES):
        raise CheckpointError(
            f"refusing to load {path}: '{Path(str(path)).suffix}' files are Python pickles and are never "
            "unpickled here (arbitrary code execution); convert the weights to .safetensors "
            "(safetensors.torch.save_file(state_dict, 'weights.safetensors')) and pass that file"
        )


class BackboneMeta(StrictModel):
    arch: str
    pretrained: str | None = None  # open_clip tag | weights file path/URI | None (random init)
    kind: str = "none"  # "none" | "tag" | "file"
    sha256: str | None = None  # of the pretrained weights file (kind == "file")
    stored_in_checkpoint: bool = False  # the frozen backbone is inside detector.safetensors


class ImportedFrom(StrictModel):
    """Provenance of a detector imported from a peer's released weights file (jobs/import_detector.py)."""

    kind: str  # "univfd" | "clipbased" | "rine"
    variant: str | None = None  # RINE: 1class | 2class | 4class | ldm
    file: str  # the path given on the command line
    sha256: str  # of that file's bytes
    bytes: int
    nesting: (
        str  # where the state dict sat: "raw" | "model" | "model (module. stripped)" | "state_dict" | "net"
    )
    keys: dict[str, str] = Field(default_factory=dict, description="source key -> genscan parameter name")
    origin: str  # repository / download address
    licence: str
    paper: str


class DetectorMeta(StrictModel):
    """Everything needed to rebuild and use a detector. The trainer fills the thresholds / notes;
    ``save_detector`` fills config, backbone, project_version, created_at and detector_id."""

    format_version: int = 1
    config: DetectorConfig | None = None
    generators: list[str] = Field(default_factory=list)
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="calibrated p_fake threshold")
    unknown_threshold: float = Field(
        0.0, ge=0.0, le=1.0, description="max attribution probability below this -> 'unknown'"
    )
    backbone: BackboneMeta | None = None
    project_version: str = ""
    created_at: str = ""
    detector_id: str = ""
    notes: dict[str, Any] = Field(default_factory=dict, description="free-form training/calibration notes")
    imported_from: ImportedFrom | None = Field(
        None, description="set when the weights came from a peer's file"
    )

    @property
    def labels(self) -> list[str]:
        return ["real", *self.generators]


def read_meta(uri: str | Path) -> DetectorMeta:
    """Only the meta of a checkpoint (no weights)."""
    data = json.loads(storage.read_bytes(storage.join(str(uri), META_FILE)))
    return DetectorMeta.parse(data, source=f"{uri}/{META_FILE}")
