"""The scan's shard writer [ours; img2dataset's worker-side writer]: collects a shard's scored rows, and when
all have arrived writes its Parquet and then its marker (`pipeline.runner.commit_shard`: marker LAST).

It runs where the rows are — in a writer actor on a worker node (`pipeline.engine.scan`) or in-process for a
local scan — so the driver never holds rows: it receives each shard's summary (= its marker). No Ray here.
Rows of a shard may arrive in any order and more than once (task retries): `ShardCollector` drops duplicates.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np

from pipeline.logs import get_logger
from pipeline.output import RunPaths, now_iso, parquet_bytes
from pipeline.runner import commit_shard
from pipeline.scan.provenance_policy import apply_policy
from pipeline.scan.rows import RunContext, ShardCollector, shard_stats, to_table

log = get_logger("pipeline.scan.write")

# the batch column that carries the scanned shard's stored identity (`pipeline.storage.object_identity`, from
# the driver's listing) from the read stage to the writer, which records it in the shard's marker
IDENTITY_COL = "_identity"
# a marker's `writer_node` when no Ray node id is given: this host (an in-process scan or carry)
LOCAL_WRITER = f"host:{socket.gethostname()}"


def tag_identity(batch: dict[str, np.ndarray], identity: str | None) -> None:
    """Add the shard's identity to each row of a prepared batch (the placeholder row of an empty shard
    too)."""
    batch[IDENTITY_COL] = np.full(len(batch["shard"]), identity or "", dtype=object)


def features_part(shard: str, rows: dict[str, np.ndarray]) -> tuple[bytes, dict[str, Any]] | None:
    """The shard's features part (`pipeline.feature_store`) from the scorer's `_feature` / `_feature_spec`
    columns: one row per scored image (status ok), none for rows with no image; None when the run keeps
    none."""
    if not rows or "_feature_spec" not in rows:
        return None
    from pipeline.feature_store import FeatureSpec, encode_part

    specs = {str(x) for x in rows["_feature_spec"].tolist()}
    if len(specs) != 1:  # two scorers with different checkpoints wrote this shard's rows: never mix features
        raise ValueError(f"shard {shard}: rows carry {len(specs)} different feature specs")
    spec = FeatureSpec.model_validate_json(specs.pop())
    feats = np.asarray(rows["_feature"], np.float32).reshape(len(rows["status"]), -1)
    ok = (np.asarray(rows["status"], dtype=object) == "ok") & np.isfinite(feats).all(axis=1)
    keys = [str(k) for k in np.asarray(rows["key"], dtype=object)[ok].tolist()]
    data = encode_part(shard, keys, feats[ok], spec)
    return data, {"rows": len(keys), "bytes": len(data), "kind": spec.kind, "precision": spec.precision}


class ShardSink:
    """`add(batch)` -> the summaries of the shards this batch completed (their Parquet + marker are written).

    writer_node: recorded in each marker as `writer_node` (the Ray node id of the writer actor; the host name
    for an in-process sink)."""

    def __init__(self, ctx: RunContext, output: str, scan_date: str, writer_node: str | None = None) -> None:
        self.ctx = ctx
        self.paths = RunPaths(output, scan_date)
        self.writer_node = writer_node or LOCAL_WRITER
        self.collector = ShardCollector()
        self.identity: dict[str, str] = {}  # pending shard -> its identity (from the rows' IDENTITY_COL)

    def add(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        if IDENTITY_COL in batch and len(batch[IDENTITY_COL]):
            shards = np.asarray(batch["shard"], dtype=object)
            for shard in dict.fromkeys(shards.tolist()):
                if shard not in self.identity and shard not in self.collector.done:
                    self.identity[shard] = str(batch[IDENTITY_COL][int(np.argmax(shards == shard))])
        return [self.write(shard, rows) for shard, rows in self.collector.add(batch)]

    def write(self, shard: str, rows: dict[str, np.ndarray]) -> dict[str, Any]:
        t0 = time.perf_counter()
        url = str(rows["shard_url"][0]) if rows else ""
        rows = apply_policy(rows, self.ctx.labels, self.ctx.provenance_policy)
        table = to_table(rows, self.ctx)
        stats = shard_stats(shard, url, rows)
        data = parquet_bytes(table)
        detectors = sorted({str(d) for d in rows["_detector_id"]}) if "_detector_id" in rows else []
        stats.update(
            run_id=self.ctx.run_id,
            detector_id=",".join(detectors) or self.ctx.detector_id,
            identity=self.identity.pop(shard, "") or None,  # what the next night compares (None: unknown)
            writer_node=self.writer_node,
            finished_at=now_iso(),
            write_s=round(time.perf_counter() - t0, 6),
        )
        if not url:  # an empty shard: its url is not in any row
            stats.pop("shard_url", None)
        outputs = [(self.paths.parquet(shard), data)]
        part = features_part(shard, rows)
        if part is not None:  # the shard's stored features: written with its Parquet, before its marker
            outputs.append((self.paths.features(shard), part[0]))
            stats["features"] = part[1]
        commit_shard(outputs, self.paths.marker(shard), stats)
        log.info("shard_written", shard=shard, rows=stats["rows"], writer_node=self.writer_node)
        return stats

    def pending(self) -> dict[str, tuple[int, int]]:
        """Shards with rows still missing: shard -> (rows seen, rows expected)."""
        return {s: (len(p.seen), p.expected) for s, p in self.collector.pending.items()}

    def duplicates(self) -> int:
        return self.collector.duplicates
