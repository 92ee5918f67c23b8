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

import datetime as dt
import importlib.metadata
import platform
import uuid
from dataclasses import dataclass
from typing import Any

import pipeline
from pipeline.logs import get_logger
from pipeline.output import (  # noqa: F401 - re-exported for the scan's callers
    RunPaths,
    completed_shards,
    has_output,
    list_runs,
    parquet_bytes,
    read_json,
    write_json,
    write_shard,
)
from pipeline.scan.config import ScanConfig, today_utc
from pipeline.settings import ConfigError
from pipeline.storage import write_bytes_atomic  # noqa: F401 - re-exported

log = get_logger("pipeline.scan.completion")


class RunRefused(ConfigError):
    """The requested run would overwrite existing output (or cannot be resumed)."""


@dataclass
class RunPlan:
    paths: RunPaths
    run_id: str
    resumed: bool
    previous: dict[str, Any] | None  # the run.json being continued


def _same_uris(value: object) -> list[str]:
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
    if not cfg.resume:
        if has_output(paths):
            raise RunRefused(
                f"scan_date: the run {scan_date} already has output in {cfg.output} (run.json, markers or Parquet); "
                "pass --resume to continue it, or choose another --scan-date. Nothing was deleted."
            )
        run_id = cfg.run_id or f"{scan_date}-{uuid.uuid4().hex[:8]}"
        return RunPlan(paths, run_id, resumed=False, previous=None)
    if previous is not None:
        prev_cfg = previous.get("config", {})
        for name in ("input", "detector"):
            before = prev_cfg.get(name)
            if before is not None and _same_uris(before) != _same_uris(getattr(cfg, name)):  # p == p/
                raise RunRefused(
                    f"{name}: --resume of run {scan_date} with a different {name} "
                    f"({getattr(cfg, name)!r} != {prev_cfg.get(name)!r})"
                )
        before_fusion = prev_cfg.get("fusion")
        if len(cfg.detectors) > 1 and before_fusion is not None and before_fusion != cfg.fusion:
            raise RunRefused(
                f"fusion: --resume of run {scan_date} with a different fusion "
                f"({cfg.fusion!r} != {before_fusion!r})"
            )
        for name in ("features", "features_precision"):  # a store's parts must all be the same features
            if name in prev_cfg and prev_cfg[name] != getattr(cfg, name):
                raise RunRefused(
                    f"{name}: --resume of run {scan_date} with a different {name} "
                    f"({getattr(cfg, name)!r} != {prev_cfg[name]!r})"
                )
        if cfg.run_id and previous.get("run_id") not in (None, cfg.run_id):
            raise RunRefused(
                f"run_id: run {scan_date} has run_id {previous.get('run_id')!r}, not {cfg.run_id!r}"
            )
        run_id = previous.get("run_id") or cfg.run_id or f"{scan_date}-{uuid.uuid4().hex[:8]}"
    else:
        run_id = cfg.run_id or f"{scan_date}-{uuid.uuid4().hex[:8]}"
    return RunPlan(paths, run_id, resumed=True, previous=previous)


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


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def aggregate(
    paths: RunPaths, shards: list[str] | None = None, known: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Sum the markers of `shards` (default: all markers of the run); `known` holds stats already in memory
    (the shards this attempt wrote), so only the markers of earlier attempts are read back."""
    names = shards if shards is not None else sorted(completed_shards(paths))
    known = known or {}
    done = completed_shards(paths) if len(known) < len(names) else set()
    totals: dict[str, Any] = {
        "shards_done": 0,
        "rows": 0,
        "samples": 0,
        "n_fake": 0,
        "bytes": 0,
        "counts": {},
        "read_s": 0.0,
        "decode_s": 0.0,
        "infer_s": 0.0,
        "write_s": 0.0,
    }
    for shard in names:
        m = known.get(shard) or (read_json(paths.marker(shard)) if shard in done else None)
        if m is None:
            continue
        totals["shards_done"] += 1
        for k in ("rows", "samples", "n_fake", "bytes"):
            totals[k] += int(m.get(k, 0))
        for k in ("read_s", "decode_s", "infer_s", "write_s"):
            totals[k] += float(m.get(k, 0.0))
        for s, c in m.get("counts", {}).items():
            totals["counts"][s] = totals["counts"].get(s, 0) + int(c)
    return totals
