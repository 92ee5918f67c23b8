"""Few-shot linear detector from the corpus' stored features [ours; seed-001's recipe on stored features]:
`train_detector.py --method linear --features-from SCAN --labels FILE` joins a labels file (shard, key, label,
optional generator: rows an analyst picked in the report, rows whose provenance declares a generator) with the
scan's stored features, fits the linear heads (`pipeline.train.linear`: scikit-learn, scaler folded into the
weights) and writes a checkpoint on the STORE's backbone, so jobs/rescore.py accepts it. No image is decoded,
no backbone pass runs.

The checkpoint's backbone: the store's open_clip tag or weights file (recorded, not copied), or, for a
backbone stored in the scanning detector's checkpoint, that checkpoint's frozen tensors (found through the
scan's `_run/<D>/detector.json`). Where the examples came from (scan, date, store spec, labels file and its
sha256, the examples themselves up to EXAMPLES_KEPT) is in the checkpoint meta's
`notes.trained_from_features`.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from pydantic import Field

from pipeline.feature_store import FeaturePartError, FeatureSpec, read_part
from pipeline.features.head import FeatureHead, spec_differences
from pipeline.logs import get_logger
from pipeline.models import DetectorConfig, DetectorMeta
from pipeline.models.checkpoint import read_checkpoint, write_checkpoint
from pipeline.models.constants import REAL_LABEL
from pipeline.models.detector import HEAD_PREFIXES, head_shapes
from pipeline.models.meta import BackboneMeta
from pipeline.output import RunPaths, ScanOutputError, feature_shards, read_json, resolve_scan_date
from pipeline.settings import ConfigError, StrictModel
from pipeline.storage import join, read_bytes, write_bytes_atomic
from pipeline.train.linear import fit_binary, fit_multiclass

log = get_logger("pipeline.features.train")

EXAMPLES_KEPT = 1000  # examples listed in the checkpoint's notes (beyond: their count and the file's sha256)
LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1, "false": 0, "true": 1}


class FeatureTrainConfig(StrictModel):
    """train_detector.py --features-from: saved as `train_config.json` in the checkpoint directory."""

    features_from: str = Field(description="scan output with stored features (_features/)")
    scan_date: str | None = Field(None, description="its scan date; default: the latest")
    labels: str = Field(
        description="CSV or Parquet with columns shard, key, label (0/1 or real/fake), [generator]"
    )
    config: str = Field(
        "tiny-linear", description="a linear detector config whose head reads the stored feature"
    )
    out: str = Field(description="checkpoint directory to write")
    linear_classifier: Literal["logistic", "svm"] = "logistic"
    linear_c: float = Field(1.0, gt=0)
    seed: int = 0


# shard and key are names, never numbers: a key such as "00000012" (webdataset's usual zero-padded keys) must
# not be read as the integer 12
_CSV_TYPES = pacsv.ConvertOptions(
    column_types={"shard": pa.string(), "key": pa.string(), "generator": pa.string()}
)


def read_labels(uri: str) -> list[dict[str, Any]]:
    """The labels file's rows as {shard, key, label (0 | 1), generator or None}; ConfigError naming what is
    wrong."""
    try:
        data = read_bytes(uri)
    except FileNotFoundError as exc:
        raise ConfigError(f"labels: not found: {uri}") from exc
    try:
        table = (
            pq.read_table(io.BytesIO(data))
            if uri.endswith(".parquet")
            else pacsv.read_csv(io.BytesIO(data), convert_options=_CSV_TYPES)
        )
    except pa.ArrowException as exc:
        raise ConfigError(f"labels: {uri} is not a readable CSV / Parquet file ({exc})") from exc
    missing = [c for c in ("shard", "key", "label") if c not in table.column_names]
    if missing:
        raise ConfigError(f"labels: {uri} lacks column(s) {', '.join(missing)} (needs shard, key, label)")
    rows = table.to_pylist()
    raw = [str(r["label"]).strip().lower() for r in rows]
    bad = sorted({v for v in raw if v not in LABELS})
    if bad:
        raise ConfigError(f"labels: {uri} has label values {bad[:5]}; use 0/1 or real/fake")
    return [
        {
            "shard": str(r["shard"]),
            "key": str(r["key"]),
            "label": LABELS[v],
            "generator": None if r.get("generator") in (None, "") else str(r["generator"]),
        }
        for r, v in zip(rows, raw, strict=True)
    ]


def _backbone_tensors(paths: RunPaths, spec: FeatureSpec) -> dict[str, torch.Tensor]:
    """The frozen tensors of a backbone stored in the scanning detector's checkpoint
    (spec.source_detector)."""
    record = read_json(paths.run_file("detector.json")) or {}
    members = record.get("members") or [record]
    uri = next((m.get("uri") for m in members if m.get("detector_id") == spec.source_detector), None)
    if uri is None:
        raise ConfigError(
            f"features_from: the store's backbone is stored in checkpoint {spec.source_detector}, which "
            f"{paths.run_file('detector.json')} does not name"
        )
    _, tensors = read_checkpoint(uri)
    return {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIXES)}


def train_from_features(cfg: FeatureTrainConfig) -> dict[str, Any]:
    """Fit, check and write the checkpoint; returns the summary. ConfigError (exit 2) for a config that does
    not read the stored feature, a labels file that matches no stored feature or lacks real or fake
    examples."""
    date = resolve_scan_date(cfg.features_from, cfg.scan_date)
    paths = RunPaths(cfg.features_from, date)
    rows = read_labels(cfg.labels)
    stored = feature_shards(paths)
    if not stored:
        raise ScanOutputError(f"no stored features under {paths.features_dir} (scan with --features)")
    feats: dict[tuple[str, str], np.ndarray] = {}
    spec: FeatureSpec | None = None
    unreadable: dict[str, str] = {}
    for shard in sorted(stored.intersection(r["shard"] for r in rows)):
        try:
            part = read_part(paths.features(shard))
        except FeaturePartError as exc:
            unreadable[shard] = str(exc)
            continue
        if spec is not None and spec.differences(part.spec):
            raise ConfigError(
                f"features_from: parts of different features: {'; '.join(spec.differences(part.spec))}"
            )
        spec = spec or part.spec
        feats.update({(shard, k): v for k, v in zip(part.keys, part.features(), strict=True)})
    used = [r for r in rows if (r["shard"], r["key"]) in feats]
    skipped = len(rows) - len(used)
    if spec is None or not used:
        raise ConfigError(
            f"labels: none of the {len(rows)} labelled (shard, key) of {cfg.labels} has a stored feature in "
            f"{paths.features_dir}" + (f" ({len(unreadable)} part(s) unreadable)" if unreadable else "")
        )
    y = np.array([r["label"] for r in used], np.int64)
    if set(y.tolist()) != {0, 1}:
        raise ConfigError(
            f"labels: the {len(used)} examples with a stored feature need both real (0) and fake (1)"
        )
    generators = sorted({r["generator"] for r in used if r["label"] == 1 and r["generator"]})
    det_cfg = DetectorConfig.load(cfg.config)
    det_cfg = DetectorConfig.parse(
        {**det_cfg.model_dump(), "generators": generators, "pretrained": spec.backbone.pretrained},
        source=f"config {det_cfg.name} on the store's backbone",
    )
    if det_cfg.method != "linear":
        raise ConfigError(
            f"config: {det_cfg.name} is method {det_cfg.method}; training from features is linear"
        )
    dim = int(head_shapes(det_cfg)["head_fake.weight"][1])
    if diff := spec_differences(det_cfg, dim, spec.backbone, spec):
        raise ConfigError(f"config {det_cfg.name} does not read the stored features: {'; '.join(diff)}")
    x = np.stack([feats[(r["shard"], r["key"])] for r in used])
    w, b = fit_binary(x, y, classifier=cfg.linear_classifier, c=cfg.linear_c, seed=cfg.seed)
    labels_all = [REAL_LABEL, *generators]
    cls = np.array(
        [0 if r["label"] == 0 else labels_all.index(r["generator"]) if r["generator"] else 0 for r in used]
    )
    # binary (no generator): one class, so zero weights and bias, a constant head (softmax of one logit = 1)
    gw, gb = fit_multiclass(x, cls, len(labels_all), c=cfg.linear_c, seed=cfg.seed)
    tensors = {
        "head_fake.weight": torch.from_numpy(np.asarray(w, np.float32).reshape(1, -1)),
        "head_fake.bias": torch.tensor([b], dtype=torch.float32),
        "head_gen.weight": torch.from_numpy(np.asarray(gw, np.float32)),
        "head_gen.bias": torch.from_numpy(np.asarray(gb, np.float32)),
    }
    bb = spec.backbone
    stored_in = bb.kind == "none"
    if stored_in:
        tensors.update(_backbone_tensors(paths, spec))
    data = read_bytes(cfg.labels)
    notes = {
        "trained_by": "pipeline.features.train",
        "method": "linear",
        "trained_from_features": {
            "scan": cfg.features_from,
            "scan_date": date,
            "features_dir": paths.features_dir,
            "spec": spec.model_dump(mode="json"),
            "labels": cfg.labels,
            "labels_sha256": hashlib.sha256(data).hexdigest(),
            "labelled": len(rows),
            "examples": len(used),
            "skipped_without_feature": skipped,
            "unreadable_parts": unreadable,
            "counts": {"real": int((y == 0).sum()), "fake": int((y == 1).sum())},
            "example_keys": [[r["shard"], r["key"], int(r["label"])] for r in used[:EXAMPLES_KEPT]],
        },
        "calibration": {"threshold": 0.5, "skipped": True, "reason": "few-shot: no held-out split"},
    }
    meta = DetectorMeta(threshold=0.5, notes=notes)
    backbone = BackboneMeta(
        arch=bb.arch, pretrained=bb.pretrained, kind=bb.kind, sha256=bb.sha256, stored_in_checkpoint=stored_in
    )
    meta = write_checkpoint(tensors, det_cfg, backbone, cfg.out, meta)
    write_bytes_atomic(join(cfg.out, "train_config.json"), cfg.to_json().encode())
    FeatureHead(cfg.out).check(spec, paths.features_dir)  # the checkpoint re-scores this store: or fail now
    log.info("trained_from_features", examples=len(used), skipped=skipped, detector_id=meta.detector_id)
    return {
        "method": "linear",
        "detector_id": meta.detector_id,
        "checkpoint": cfg.out,
        "examples": len(used),
        "skipped_without_feature": skipped,
        "counts": notes["trained_from_features"]["counts"],
        "generators": generators,
    }
