"""Detector checkpoints: ``detector.safetensors`` + ``detector.json`` (DetectorMeta). Never unpickles.

The safetensors file always holds the adapters, routers and heads; it also holds the frozen backbone when
that was random-init (pretrained None), so tiny/demo checkpoints are self-contained. Otherwise the backbone is
rebuilt from its recorded source (open_clip tag, or a weights file whose sha256 is checked).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import pipeline
from pipeline import storage
from pipeline.logs import get_logger
from pipeline.models.config import DetectorConfig
from pipeline.models.constants import META_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE
from pipeline.models.detector import Detector, check_state_dict, create_detector
from pipeline.models.meta import (
    BackboneMeta,
    CheckpointError,
    DetectorMeta,
    check_detector_files,
    refuse_pickle,
)
from pipeline.output import now_iso
from pipeline.settings import ConfigError

log = get_logger("pipeline.models.checkpoint")


def checkpoint_keys(det: Detector, *, with_backbone: bool) -> list[str]:
    keys = det.adapter_param_names() + det.head_param_names()
    if with_backbone:
        keys += det.backbone_param_names()
    return keys


def save_detector(det: Detector, ckpt_dir: str | Path, meta: DetectorMeta | None = None) -> DetectorMeta:
    """Write ``ckpt_dir/detector.safetensors`` then ``ckpt_dir/detector.json`` (written last: a checkpoint
    with a json is complete). ``ckpt_dir`` may be local or any fsspec URI (s3://). Returns the final meta."""
    stored = det.backbone.kind == "none"
    state = det.state_dict()
    tensors = {k: state[k] for k in checkpoint_keys(det, with_backbone=stored)}
    backbone = det.backbone.model_copy(update={"stored_in_checkpoint": stored})
    return write_checkpoint(tensors, det.config, backbone, ckpt_dir, meta)


def canonical_header(blob: bytes) -> bytes:
    """The safetensors file with its JSON header's keys sorted. safetensors writes `__metadata__` from a hash
    map whose order changes from one save to the next, so the same tensors gave different bytes, and so a
    different `detector_id` (the file's sha256), about every other save; sorted, the id names the weights.
    The header keeps its length (reordering a JSON object changes no byte count), so the data offsets hold."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if len(text) > n:  # never expected: keep what safetensors wrote rather than break the offsets
        return blob
    return blob[:8] + text.ljust(n, b" ") + blob[8 + n :]


def write_checkpoint(
    tensors: dict[str, torch.Tensor],
    cfg: DetectorConfig,
    backbone: BackboneMeta,
    ckpt_dir: str | Path,
    meta: DetectorMeta | None = None,
) -> DetectorMeta:
    """The one checkpoint writer (save_detector and the importer): safetensors first, the json last.
    ``load_detector`` checks the tensors' names and shapes against the detector built from ``cfg``."""
    from safetensors.torch import save

    meta = meta or DetectorMeta()
    if meta.generators and meta.generators != cfg.generators:
        raise ValueError(
            f"meta.generators {meta.generators} differ from the detector's head labels {cfg.generators}"
        )
    blob = canonical_header(
        save(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            metadata={"format": "pt", "detector": cfg.name},
        )
    )
    digest = hashlib.sha256(blob).hexdigest()
    meta = meta.model_copy(
        update={
            "config": cfg,
            "generators": list(cfg.generators),
            "backbone": backbone,
            "project_version": pipeline.__version__,
            "created_at": now_iso(),
            "detector_id": f"{cfg.name}@{digest[:12]}",
        }
    )
    root = str(ckpt_dir)
    storage.write_bytes_atomic(storage.join(root, WEIGHTS_FILE), blob)
    storage.write_bytes_atomic(storage.join(root, META_FILE), meta.to_json().encode())
    log.info("detector_saved", dir=root, detector_id=meta.detector_id, tensors=len(tensors), bytes=len(blob))
    return meta


def _local_checkpoint_dir(uri: str) -> Path:
    refuse_pickle(uri)
    if uri.rstrip("/").endswith((WEIGHTS_FILE, META_FILE)):
        uri = uri.rstrip("/").rsplit("/", 1)[0]
    try:
        local = storage.fetch_to_cache(uri, verify=check_detector_files)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {uri}") from exc
    if not local.is_dir():
        raise CheckpointError(f"checkpoint not found: {uri} (expected a directory with {WEIGHTS_FILE})")
    if not (local / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in local.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            refuse_pickle(str(local / pickles[0]))
        raise CheckpointError(f"no {WEIGHTS_FILE} in checkpoint {uri}")
    if not (local / META_FILE).is_file():
        raise CheckpointError(f"no {META_FILE} in checkpoint {uri} (incomplete save?)")
    return local


def read_checkpoint(uri: str | Path) -> tuple[DetectorMeta, dict[str, torch.Tensor]]:
    """A checkpoint's meta and tensors (local or s3:// via fetch_to_cache), the file hash checked against the
    detector id; no model is built (`load_detector` builds one; a feature-store re-score needs only the
    heads)."""
    from safetensors.torch import load_file

    uri = str(uri)
    local = _local_checkpoint_dir(uri)
    try:
        meta = DetectorMeta.from_file(local / META_FILE, field="checkpoint")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    if meta.config is None or meta.backbone is None:
        raise CheckpointError(f"{uri}/{META_FILE}: config and backbone are required")
    digest = storage.sha256_file(local / WEIGHTS_FILE)
    if meta.detector_id and not meta.detector_id.endswith("@" + digest[:12]):
        raise CheckpointError(
            f"{uri}: {WEIGHTS_FILE} (sha256 {digest[:12]}) does not match detector_id {meta.detector_id} "
            f"(overwritten or corrupt; a stale cached copy lives in {local})"
        )
    if meta.generators != meta.config.generators:
        raise CheckpointError(f"{uri}: meta.generators {meta.generators} != config.generators")
    return meta, load_file(str(local / WEIGHTS_FILE), device="cpu")


def load_detector(uri: str | Path) -> tuple[Detector, DetectorMeta]:
    """Load a checkpoint directory (local or s3:// via fetch_to_cache). Checks the file hash against the
    detector id, then every key and shape; never unpickles."""
    uri = str(uri)
    meta, tensors = read_checkpoint(uri)
    assert meta.config is not None and meta.backbone is not None  # read_checkpoint checked them
    bb = meta.backbone
    # a stored backbone is built random-init and filled right below
    det = create_detector(meta.config, pretrained=None if bb.stored_in_checkpoint else bb.pretrained)
    if bb.kind == "file" and not bb.stored_in_checkpoint and det.backbone.sha256 != bb.sha256:
        raise CheckpointError(
            f"{uri}: backbone weights {bb.pretrained} have sha256 {det.backbone.sha256}, "
            f"the checkpoint was trained on {bb.sha256}"
        )
    state = det.state_dict()
    expected = {k: state[k].shape for k in checkpoint_keys(det, with_backbone=bb.stored_in_checkpoint)}
    check_state_dict(expected, tensors, what=f"checkpoint {uri}")
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v)
    log.info("detector_loaded", uri=uri, detector_id=meta.detector_id, tensors=len(tensors))
    return det, meta
