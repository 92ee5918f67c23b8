"""The JSON half of a detector checkpoint (``detector.json``: DetectorMeta) and the checkpoint rules that need
no weights: reading the meta, refusing pickles. No torch here: the scan's driver reads a detector's meta
before any Ray work and never loads torch or open_clip (seconds of start-up); ``pipeline.models.checkpoint``
loads weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline import storage
from pipeline.models.config import DetectorConfig
from pipeline.models.constants import META_FILE, PICKLE_SUFFIXES, REAL_LABEL, WEIGHTS_FILE
from pipeline.settings import StrictModel


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used (missing/unexpected keys, wrong shapes, a pickle)."""


def refuse_pickle(path: str) -> None:
    if str(path).lower().endswith(PICKLE_SUFFIXES):
        raise CheckpointError(
            f"refusing to load {path}: '{Path(str(path)).suffix}' files are Python pickles and are never "
            "unpickled here (arbitrary code execution); convert the weights to .safetensors "
            "(safetensors.torch.save_file(state_dict, 'weights.safetensors')) and pass that file"
        )


class BackboneMeta(StrictModel):
    """Where a detector's frozen backbone weights came from (``Detector.backbone``, saved in the meta)."""

    arch: str
    pretrained: str | None = None  # open_clip tag | weights file path/URI | None (random init)
    kind: str = "none"  # "none" | "tag" | "file"
    sha256: str | None = None  # of the pretrained weights file (kind == "file")
    stored_in_checkpoint: bool = False  # the frozen backbone is inside detector.safetensors (set on save)


class ImportedFrom(StrictModel):
    """Provenance of a detector imported from a peer's released weights file (jobs/import_detector.py)."""

    kind: str  # "univfd" | "clipbased" | "rine"
    variant: str | None = None  # RINE: 1class | 2class | 4class | ldm
    file: str  # the path given on the command line
    sha256: str  # of that file's bytes
    bytes: int
    # where the state dict sat: "raw" | "model" | "model (module. stripped)" | "state_dict" | "net"
    nesting: str
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
        return [REAL_LABEL, *self.generators]


# The safetensors format: an 8-byte little-endian header length, then a JSON header naming every tensor's
# dtype, shape and byte range. safetensors itself refuses headers over 100 MB.
_MAX_HEADER_BYTES = 100_000_000


def read_weights_header(uri: str) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (tensor name -> dtype, shape, data_offsets), read with two
    small reads and no torch: lets the scan's driver refuse a file that is not safetensors (a renamed pickle,
    a truncated download) before any Ray work. Raises CheckpointError naming the file and what is wrong."""
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        size = fs.size(path)
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{uri} is not a safetensors file: {size} bytes, shorter than its 8-byte header"
            )
        n = int.from_bytes(head, "little")
        if n > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{uri} is not a safetensors file: its first 8 bytes give a header of {n} bytes in a file of "
                f"{size} bytes (a pickle or another format renamed .safetensors?)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{uri} is not a safetensors file: its header is not JSON ({exc})") from exc
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else None
    fields = {"dtype", "shape", "data_offsets"}
    if not tensors or not all(isinstance(v, dict) and fields <= set(v) for v in tensors.values()):
        raise CheckpointError(
            f"{uri} is not a safetensors file: its header lists no tensors with {sorted(fields)}"
        )
    end = max(int(v["data_offsets"][1]) for v in tensors.values())
    if 8 + n + end > size:
        raise CheckpointError(
            f"{uri}: truncated safetensors file ({size} bytes, its header needs {8 + n + end})"
        )
    return tensors


def read_meta(uri: str | Path) -> DetectorMeta:
    """Only the meta of a checkpoint (no weights)."""
    data = json.loads(storage.read_bytes(storage.join(str(uri), META_FILE)))
    return DetectorMeta.parse(data, source=f"{uri}/{META_FILE}")


def check_detector_files(local: Path) -> str | None:
    """The content check of a fetched detector checkpoint: the sha256 prefix named in its meta's `detector_id`
    ("<config>@<sha256[:12]>") must be the hash of its weights file. None when it holds (or is not a
    checkpoint), else what differs."""
    meta, weights = local / META_FILE, local / WEIGHTS_FILE
    if not (local.is_dir() and meta.is_file() and weights.is_file()):
        return None
    try:
        detector_id = str(json.loads(meta.read_text()).get("detector_id") or "")
    except (ValueError, UnicodeDecodeError):
        return f"{META_FILE} is not valid JSON"
    if "@" not in detector_id:
        return None
    expected = detector_id.rsplit("@", 1)[1]
    digest = storage.sha256_file(weights)
    if digest.startswith(expected):
        return None
    return f"{WEIGHTS_FILE} has sha256 {digest[:12]}, {detector_id} says {expected}"
