"""Durable per-shard completion, resume and run provenance [ours; img2dataset/datatrove pattern].

The layout, markers and run files are the scan-output contract (`pipeline.output`); this module decides which
run a scan writes into and sums its markers.

A run is identified by its scan date D (the output partition). Without `resume`, a run whose folder or
partition already holds anything is refused (never deleted). With `resume`, the run named by `scan_date` —
or, if none is given, the latest run whose run.json is not "succeeded" — is continued: shards that have a
marker are skipped, the others are (re)scanned and their Parquet overwritten, so each sample ends up in
exactly one row.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pipeline
from pipeline.logs import get_logger
from pipeline.output import (
    RunPaths,
    RunRefused,
    check_new_run,
    has_output,
    list_runs,
    read_json,
    resume_mismatch,
)
from pipeline.scan.config import ScanConfig, today_utc
from pipeline.storage import read_many

log = get_logger("pipeline.scan.completion")


@dataclass
class RunPlan:
    paths: RunPaths
    run_id: str
    resumed: bool
    previous: dict[str, Any] | None  # the run.json being continued


def same_uris(value: object) -> list[str]:
    """A URI or comma-separated list of URIs, compared without trailing slashes (p == p/)."""
    return [u.strip().rstrip("/") for u in str(value).split(",")]


def plan_run(cfg: ScanConfig) -> RunPlan:
    """Decide the scan date / run id; refuse to write into a run that already has output unless resuming."""
    scan_date = cfg.scan_date
    if cfg.resume and scan_date is None:
        unfinished = [
            d
            for d in list_runs(cfg.output)
            if (read_json(RunPaths(cfg.output, d).run_file("run.json")) or {}).get("status") != "succeeded"
        ]
        scan_date = unfinished[-1] if unfinished else today_utc()
    scan_date = scan_date or today_utc()
    paths = RunPaths(cfg.output, scan_date)
    previous = read_json(paths.run_file("run.json"))
    new_id = cfg.run_id or f"{scan_date}-{uuid.uuid4().hex[:8]}"
    check_new_run(paths, cfg.resume)
    if not cfg.resume:
        return RunPlan(paths, new_id, resumed=False, previous=None)
    if previous is None:
        # markers or Parquet of an attempt that never wrote its run.json: continue them; nothing at all: a
        # fresh run, recorded as such (run.json "resumed": false)
        return RunPlan(paths, new_id, resumed=has_output(paths), previous=None)
    prev_cfg = previous.get("config", {})

    def refuse(name: str, before: Any) -> RunRefused:
        return resume_mismatch(paths, name, getattr(cfg, name), before)

    for name in ("input", "detector"):
        before = prev_cfg.get(name)
        if before is not None and same_uris(before) != same_uris(getattr(cfg, name)):  # p == p/
            raise refuse(name, before)
    before_fusion = prev_cfg.get("fusion")
    if len(cfg.detectors) > 1 and before_fusion is not None and before_fusion != cfg.fusion:
        raise refuse("fusion", before_fusion)
    for name in ("features", "features_precision"):  # a store's parts must all be the same features
        if name in prev_cfg and prev_cfg[name] != getattr(cfg, name):
            raise refuse(name, prev_cfg[name])
    if cfg.run_id and previous.get("run_id") not in (None, cfg.run_id):
        raise RunRefused(f"run_id: run {scan_date} has run_id {previous.get('run_id')!r}, not {cfg.run_id!r}")
    return RunPlan(paths, previous.get("run_id") or new_id, resumed=True, previous=previous)


def versions() -> dict[str, str]:
    """The versions of the run's main packages, from their installed metadata: nothing is imported (torch and
    open_clip would cost the driver seconds of start-up, and the driver never needs them)."""
    out = {"python": platform.python_version(), "genscan": pipeline.__version__}
    for name, dist in (
        ("torch", "torch"),
        ("open_clip", "open_clip_torch"),
        ("pyarrow", "pyarrow"),
        ("ray", "ray"),
    ):
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
            out[name] = "not installed"
    return out


_SUMS = ("rows", "samples", "n_fake", "bytes")
# a marker's seconds per phase of the shard's work (summed over the run; not carried with a shard)
PHASE_SECONDS = ("read_s", "decode_s", "infer_s", "write_s")


class Totals:
    """A run's running totals over shard markers (summaries): `add` one marker at a time, constant work and
    memory per shard; `as_dict()` is run.json's `totals`. Carried shards (their marker has `carried_from`) are
    counted as well under `shards_carried` / `rows_carried` (the rest were scanned by this run)."""

    def __init__(self) -> None:
        self.t: dict[str, Any] = {
            "shards_done": 0,
            **{k: 0 for k in _SUMS},
            "counts": Counter(),  # update() keeps the statuses counted 0 (every marker lists them all)
            **{k: 0.0 for k in PHASE_SECONDS},
            "shards_carried": 0,
            "rows_carried": 0,
        }

    def add(self, m: dict[str, Any]) -> None:
        t = self.t
        t["shards_done"] += 1
        for k in _SUMS:
            t[k] += int(m.get(k, 0))
        for k in PHASE_SECONDS:
            t[k] += float(m.get(k, 0.0))
        t["counts"].update({s: int(c) for s, c in m.get("counts", {}).items()})
        if m.get("carried_from"):
            t["shards_carried"] += 1
            t["rows_carried"] += int(m.get("rows", 0))

    def merge(self, other: Totals) -> Totals:
        out = Totals()
        for src in (self.t, other.t):
            for k, v in src.items():
                if k == "counts":
                    out.t["counts"].update(v)
                else:
                    out.t[k] += v
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**self.t, "counts": dict(self.t["counts"])}


def read_markers(
    paths: RunPaths, shards: list[str], *, strict: bool = True
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(shard, marker) for each of `shards` that has one, read in batched concurrent requests
    (`storage.read_many`), not one request per shard. A marker that is not a JSON object raises ValueError, or
    (strict=False) reads as {} (a caller that must not trust it: an incremental scan rescans that shard)."""
    uris = [paths.marker(s) for s in shards]
    for shard, (_, data) in zip(shards, read_many(uris), strict=True):
        if data is None:
            continue
        try:
            marker = json.loads(data)
            if not isinstance(marker, dict):
                raise ValueError(f"{paths.marker(shard)} is not a JSON object")
        except ValueError:
            if strict:
                raise
            marker = {}
        yield shard, marker


def aggregate(paths: RunPaths, shards: list[str]) -> Totals:
    """The totals of the markers of `shards`, read in one batched pass."""
    totals = Totals()
    for _, m in read_markers(paths, shards):
        totals.add(m)
    return totals
