"""Turning read/decode/score results into output rows [ours].

`ShardCollector` gathers scored batches in the shard writer (`pipeline.scan.write`; rows of many shards arrive
interleaved, in any order), drops duplicates (by the row's position `_idx` in its shard — a retried task may
deliver rows twice) and hands back a shard as soon as all its `_expected` rows are there. `to_table` builds
the shard's Arrow table in the versioned schema (sentinels -> nulls, generator scores -> map). `shard_stats`
summarises a shard for its marker.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.output import SCHEMA, SCHEMA_VERSION, SHARD_ERROR, STATUSES, map_column
from pipeline.scan.prepare import EMPTY_STATUS, Batch
from pipeline.scan.provenance_columns import LIST_COLS, OUTPUT, PROVENANCE_INT_COLS, SEP


@dataclass(frozen=True)
class RunContext:
    run_id: str
    source: str
    detector_id: str  # the driver's reading: the marker's detector_id of an empty shard (no row says)
    labels: Sequence[str]  # ["real", *generators]: the keys of generator_scores
    fusion: str | None = None  # None: one detector
    provenance_policy: str = "report"  # pipeline.scan.provenance_policy.POLICIES (the run's: ScanConfig's)


@dataclass
class _Pending:
    expected: int
    seen: set[int] = field(default_factory=set)
    parts: list[Batch] = field(default_factory=list)
    duplicates: int = 0


def _take(batch: Batch, idx: np.ndarray) -> Batch:
    return {k: v[idx] for k, v in batch.items()}


def concat(parts: Sequence[Batch]) -> Batch:
    keys = parts[0].keys()
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


class ShardCollector:
    """Collect rows per shard; `add` returns the shards completed by this batch as (shard, rows sorted by
    _idx). Rows with status `_empty` (the placeholder of an empty shard) complete it with zero rows."""

    def __init__(self) -> None:
        self.pending: dict[str, _Pending] = {}
        self.done: set[str] = set()
        self.duplicates = 0

    def add(self, batch: Batch) -> list[tuple[str, Batch]]:
        shards = np.asarray(batch["shard"], dtype=object)
        completed: list[tuple[str, Batch]] = []
        for shard in dict.fromkeys(shards.tolist()):
            if shard in self.done:
                self.duplicates += int((shards == shard).sum())
                continue
            rows = np.flatnonzero(shards == shard)
            expected = int(batch["_expected"][rows[0]])
            p = self.pending.setdefault(shard, _Pending(expected=expected))
            keep = []
            for r in rows:
                i = int(batch["_idx"][r])
                if batch["status"][r] == EMPTY_STATUS:
                    continue
                if i in p.seen:
                    p.duplicates += 1
                    continue
                p.seen.add(i)
                keep.append(r)
            if keep:
                p.parts.append(_take(batch, np.asarray(keep)))
            if len(p.seen) >= p.expected:
                del self.pending[shard]
                self.done.add(shard)
                self.duplicates += p.duplicates
                if p.parts:
                    merged = concat(p.parts)
                    merged = _take(merged, np.argsort(merged["_idx"], kind="stable"))
                else:
                    merged = {}
                completed.append((shard, merged))
        return completed


def _nullable_str(values: np.ndarray) -> pa.Array:
    return pa.array([None if (v is None or v == "") else str(v) for v in values.tolist()], pa.string())


def _nullable_int(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    arr = np.asarray(values, np.int64)
    return pa.array(arr, typ, mask=arr < 0)


def _member_map(rows: Batch, name: str, not_ok: np.ndarray) -> pa.Array:
    """A detector_* map column: {member detector_id: value} per row, null unless ok. The keys are the members
    the scoring actor loaded (`_members`)."""
    n = len(not_ok)
    members = [str(m).split(",") for m in rows["_members"].tolist()]
    k = np.asarray([len(m) for m in members], np.int32)
    values = np.asarray(rows[f"_det_{name}"]).reshape(n, -1)
    if (k != values.shape[1]).any():
        raise ValueError(
            f"{name}: {values.shape[1]} scores per row, detectors per row {sorted(set(k.tolist()))}"
        )
    return map_column(f"detector_{name}", members, values, not_ok)


def _provenance(rows: Batch) -> dict[str, pa.Array]:
    """The `provenance_*` output columns (null where the read stage's sentinel says none: reading off, no
    image)."""
    out: dict[str, pa.Array] = {}
    for col, name in OUTPUT.items():
        typ = SCHEMA.field(name).type
        if col in PROVENANCE_INT_COLS:
            out[name] = _nullable_int(rows[col], typ)
        elif col in LIST_COLS:  # null where the row has no verdict (no evidence read), else the list
            pairs = zip(rows[col].tolist(), rows["prov_verdict"], strict=True)
            out[name] = pa.array([(str(v).split(SEP) if v else []) if ok else None for v, ok in pairs], typ)
        else:
            out[name] = _nullable_str(rows[col])
    return out


def to_table(rows: Batch, ctx: RunContext) -> pa.Table:
    """Arrow table in SCHEMA for one shard's rows (as collected by ShardCollector: tagged by the scorer,
    `pipeline.scan.score.tag_scored_by`, and decided by `apply_policy`). An empty shard's `{}` gives an empty
    table with the schema."""
    if not rows:
        return SCHEMA.empty_table()
    n = len(rows["status"])
    status = np.asarray(rows["status"], dtype=object)
    not_ok = status != "ok"
    labels = list(ctx.labels)
    scores = np.asarray(rows["generator_scores"], np.float32).reshape(n, -1)
    if scores.shape[1] != len(labels):
        raise ValueError(f"generator_scores has {scores.shape[1]} columns, labels {len(labels)}")
    columns: dict[str, pa.Array] = {
        "schema_version": pa.array(np.full(n, SCHEMA_VERSION, np.int16), pa.int16()),
        "run_id": pa.array([ctx.run_id] * n, pa.string()),
        "source": pa.array([ctx.source] * n, pa.string()),
        "shard": pa.array([str(s) for s in rows["shard"].tolist()], pa.string()),
        "shard_url": pa.array([str(s) for s in rows["shard_url"].tolist()], pa.string()),
        "key": _nullable_str(np.where(status == SHARD_ERROR, "", rows["key"])),
        "status": pa.array([str(s) for s in status.tolist()], pa.string()),
        "error": _nullable_str(rows["error"]),
        "p_fake": pa.array(np.asarray(rows["p_fake"], np.float32), pa.float32(), mask=not_ok),
        "logit": pa.array(np.asarray(rows["logit"], np.float32), pa.float32(), mask=not_ok),
        "is_fake": pa.array(np.asarray(rows["is_fake"], bool), pa.bool_(), mask=not_ok),
        "threshold": pa.array(np.asarray(rows["_threshold"], np.float32), pa.float32()),
        "top_generator": _nullable_str(np.where(not_ok, "", rows["top_generator"])),
        "generator_scores": map_column("generator_scores", [labels] * n, scores, not_ok),
        "width": _nullable_int(rows["width"], pa.int32()),
        "height": _nullable_int(rows["height"], pa.int32()),
        "format": _nullable_str(rows["format"]),
        "n_bytes": _nullable_int(rows["n_bytes"], pa.int64()),
        "sha256": _nullable_str(rows["sha256"]),
        "detector_id": pa.array([str(d) for d in rows["_detector_id"].tolist()], pa.string()),
        "scanned_at": pa.array([dt.datetime.now(dt.UTC)] * n, pa.timestamp("ms", tz="UTC")),
        "detector_p_fake": _member_map(rows, "p_fake", not_ok),
        "detector_logit": _member_map(rows, "logit", not_ok),
        "detector_is_fake": _member_map(rows, "is_fake", not_ok),
        "fusion": pa.array([ctx.fusion] * n, pa.string()),
        **_provenance(rows),
        "decided_by": _nullable_str(rows["_decided_by"]),
    }
    return pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)


def shard_stats(shard: str, shard_url: str, rows: Batch) -> dict[str, Any]:
    """Counts by status and phase timings (seconds, summed over the shard's rows) for the shard's marker."""
    status = rows["status"].tolist() if rows else []
    counts = Counter(str(s) for s in status)
    n_bytes = np.asarray(rows["n_bytes"], np.int64) if rows else np.zeros(0, np.int64)
    ok = np.asarray(rows["status"], dtype=object) == "ok" if rows else np.zeros(0, bool)
    return {
        "shard": shard,
        "shard_url": shard_url,
        "rows": len(status),
        "samples": len(status) - counts.get(SHARD_ERROR, 0),
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "n_fake": int(np.asarray(rows["is_fake"], bool)[ok].sum()) if rows else 0,
        "bytes": int(n_bytes[n_bytes > 0].sum()),
        "read_s": float(np.sum(rows["_read_s"])) if rows else 0.0,
        "decode_s": float(np.sum(rows["_decode_s"])) if rows else 0.0,
        "infer_s": float(np.sum(rows["_infer_s"])) if rows else 0.0,
        # Ray node(s) whose read task produced the rows (set by pipeline.engine.scan; several after a retry)
        "node_id": ",".join(sorted({str(n) for n in rows["_node"]})) if "_node" in rows else None,
    }
