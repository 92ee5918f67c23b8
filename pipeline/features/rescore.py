"""Re-score a scan from its stored features [ours]: a detector whose heads read one frozen feature (genscan
linear, imported UnivFD / ClipBased-SID) applied to `<scan>/_features/scan_date=D/`, written as a normal scan
partition `<output>/scan_date=D/` (same schema, markers, run files) that the filter, the report and the
queries read unchanged. No backbone pass, no image decode.

Per shard (`rescore_shard`, a plain function: run in process or as a Ray task by `pipeline.engine`): the
source scan's rows of the shard are copied (every sample accounted for: rows with no image keep their status
rows), the ok rows get the new detector's scores from the shard's features part, then Parquet and marker are
written (`pipeline.runner.commit_shard`: marker LAST). A shard whose features part is missing, unreadable
(truncated), of another backbone / kind / preprocessing, or lacks a scored key becomes ONE `shard_error` row
naming the problem (counted by the error budget, never scored from wrong features). A store whose features the
detector does not read is refused before any work (ConfigError, exit 2).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.feature_store import FeaturePartError, FeatureSpec, read_part, read_part_spec
from pipeline.features.config import RescoreConfig
from pipeline.features.head import FeatureHead
from pipeline.logs import RunLog, get_logger
from pipeline.output import (
    SCHEMA,
    SCHEMA_VERSION,
    SHARD_ERROR,
    STATUSES,
    RunPaths,
    ScanOutputError,
    check_new_run,
    completed_shards,
    feature_shards,
    map_column,
    now_iso,
    parquet_bytes,
    read_json,
    resolve_scan_date,
    resume_mismatch,
    write_json,
)
from pipeline.runner import (
    ErrorBudgetExceeded,
    IncompleteRun,
    MapFn,
    RunFile,
    commit_shard,
    local_map,
    map_shards,
    run_shards,
)
from pipeline.storage import filesystem

log = get_logger("pipeline.features.rescore")


class RescoreFailed(RuntimeError):
    """The re-score ran but failed (error budget, shards that never completed): exit 1."""


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard's re-score needs (picklable: it travels to a Ray task)."""

    shard: str
    source: RunPaths
    target: RunPaths
    detector: str
    run_id: str
    detector_id: str  # the checkpoint the driver checked: a changed one at the same URI is refused


_heads: dict[str, FeatureHead] = {}


def _head(uri: str, detector_id: str) -> FeatureHead:
    """One FeatureHead per process (a Ray worker re-scoring several shards loads the checkpoint once); the
    checkpoint must still be the one the driver checked against the store."""
    if uri not in _heads or _heads[uri].detector_id != detector_id:
        _heads[uri] = FeatureHead(uri)
    if _heads[uri].detector_id != detector_id:
        raise RuntimeError(
            f"detector {uri} changed during the run ({_heads[uri].detector_id} != {detector_id})"
        )
    return _heads[uri]


def _source_rows(paths: RunPaths, shard: str) -> pa.Table:
    """The source scan's rows of one shard in the CURRENT schema (columns an older file lacks read as
    null)."""
    fs, path = filesystem(paths.parquet(shard))
    return pads.dataset(path, filesystem=fs, format="parquet", schema=SCHEMA.remove_metadata()).to_table()


def _shard_error_table(task: ShardTask, head: FeatureHead, url: str, source: str, message: str) -> pa.Table:
    row = {name: None for name in SCHEMA.names}
    row.update(
        schema_version=SCHEMA_VERSION,
        run_id=task.run_id,
        source=source,
        shard=task.shard,
        shard_url=url,
        status=SHARD_ERROR,
        error=message,
        threshold=float(head.meta.threshold),
        detector_id=head.detector_id,
        scanned_at=dt.datetime.now(dt.UTC),
    )
    return pa.Table.from_pylist([row], schema=SCHEMA)


def score_table(src: pa.Table, feats: dict[str, np.ndarray], head: FeatureHead, run_id: str) -> pa.Table:
    """`src` (one shard's rows) with the score columns replaced: the ok rows scored by `head` from `feats`
    (key -> feature), every other row unscored (its status row copied)."""
    n = src.num_rows
    status = np.asarray(src.column("status").to_pylist(), dtype=object)
    keys = src.column("key").to_pylist()
    ok = status == "ok"
    idx = np.flatnonzero(ok)
    x = np.stack([feats[keys[i]] for i in idx]) if len(idx) else np.zeros((0, head.dim), np.float32)
    res = head.predict(x)
    labels = head.meta.labels
    p_fake = np.zeros(n, np.float32)
    logit = np.zeros(n, np.float32)
    is_fake = np.zeros(n, bool)
    top = np.full(n, None, dtype=object)
    scores = np.zeros((n, len(labels)), np.float32)
    p_fake[idx] = res["p_fake"]
    logit[idx] = res["logit"]
    is_fake[idx] = res["is_fake"]
    scores[idx] = res["generator_scores"]
    top[idx] = res["top_generator"]
    per_detector = {"detector_p_fake": p_fake, "detector_logit": logit, "detector_is_fake": is_fake}
    # the scan columns a re-score replaces; every other column (the image's facts) is copied from `src`
    cols = {
        "schema_version": pa.array(np.full(n, SCHEMA_VERSION, np.int16), pa.int16()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "p_fake": pa.array(p_fake, pa.float32(), mask=~ok),
        "logit": pa.array(logit, pa.float32(), mask=~ok),
        "is_fake": pa.array(is_fake, pa.bool_(), mask=~ok),
        "threshold": pa.array(np.full(n, head.meta.threshold, np.float32), pa.float32()),
        "top_generator": pa.array(top.tolist(), pa.string()),
        "generator_scores": map_column("generator_scores", [labels] * n, scores, ~ok),
        "detector_id": pa.array([head.detector_id] * n, pa.string()),
        "scanned_at": pa.array([dt.datetime.now(dt.UTC)] * n, pa.timestamp("ms", tz="UTC")),
        **{c: map_column(c, [[head.detector_id]] * n, v, ~ok) for c, v in per_detector.items()},
        "fusion": pa.nulls(n, pa.string()),
    }
    arrays = [cols[f.name] if f.name in cols else src.column(f.name).combine_chunks() for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _features(task: ShardTask, src: pa.Table, head: FeatureHead) -> tuple[dict[str, np.ndarray], str | None]:
    """The shard's features by key, or the reason it has none usable (the shard's error row says it)."""
    scored = src.filter(pc.equal(src.column("status"), "ok")).column("key").to_pylist()
    if not scored:
        return {}, None
    uri = task.source.features(task.shard)
    try:
        part = read_part(uri)
    except FeaturePartError as exc:
        hint = " (scan the shard again with --features)" if "missing" in str(exc) else ""
        return {}, f"{exc}{hint}"
    diff = head.differences(part.spec)
    if diff:  # a part of another scan copied in, or a store mixed across backbones: never scored
        return {}, f"features part {uri} is not what detector {head.detector_id} reads: {'; '.join(diff)}"
    if part.shards - {task.shard}:
        return {}, f"features part {uri} holds rows of shard(s) {sorted(part.shards - {task.shard})}"
    have = dict(zip(part.keys, part.features(), strict=True))
    missing = [k for k in scored if k not in have]
    if missing:
        return (
            {},
            f"features part {uri} lacks {len(missing)} of the shard's {len(scored)} scored keys (e.g. "
            f"{missing[0]!r})",
        )
    return have, None


def rescore_shard(task: ShardTask) -> dict[str, Any]:
    """Re-score one shard: write its Parquet, then its marker; returns the marker (the shard's summary)."""
    t0 = time.perf_counter()
    head = _head(task.detector, task.detector_id)
    src = _source_rows(task.source, task.shard)
    url = src.column("shard_url")[0].as_py() if src.num_rows else ""
    source = src.column("source")[0].as_py() if src.num_rows else ""
    feats, problem = _features(task, src, head)
    if problem is None:
        table = score_table(src, feats, head, task.run_id)
    else:
        log.warning("shard_features_unusable", shard=task.shard, error=problem)
        table = _shard_error_table(task, head, url, source, problem)
    status = table.column("status").to_pylist()
    counts = {s: status.count(s) for s in STATUSES}
    ok_fake = pc.and_(pc.equal(table.column("status"), "ok"), pc.fill_null(table.column("is_fake"), False))
    data = parquet_bytes(table)
    stats = {
        "shard": task.shard,
        "shard_url": url,
        "rows": table.num_rows,
        "samples": table.num_rows - counts[SHARD_ERROR],
        "counts": counts,
        "n_fake": int(pc.sum(ok_fake).as_py() or 0),
        "bytes": int(pc.sum(pc.fill_null(table.column("n_bytes"), 0)).as_py() or 0),
        "run_id": task.run_id,
        "detector_id": head.detector_id,
        "features_rows": len(feats),
        "finished_at": now_iso(),
        "infer_s": round(time.perf_counter() - t0, 6),
    }
    commit_shard([(task.target.parquet(task.shard), data)], task.target.marker(task.shard), stats)
    return stats


def store_spec(paths: RunPaths, have: list[str]) -> FeatureSpec:
    """The store's spec, from the footer of the first readable part of the shards `have` (those to re-score
    that have a part, sorted): what the detector is checked against before any work. Each shard's task checks
    its own part again (a truncated or foreign part becomes that shard's error row)."""
    if not have:
        raise ScanOutputError(
            f"no stored features under {paths.features_dir}: the scan of {paths.scan_date} ran without "
            "--features (scan again with --features embedding|pre_proj)"
        )
    problems = []
    for shard in have:
        try:
            return read_part_spec(paths.features(shard))
        except FeaturePartError as exc:
            problems.append(str(exc))
    raise ScanOutputError(f"no readable features part under {paths.features_dir} ({problems[0]})")


def run_rescore(
    cfg: RescoreConfig,
    map_fn: MapFn = local_map,
    *,
    on_shard: Callable[[str, dict[str, Any], Any], None] | None = None,
) -> dict[str, Any]:
    """Re-score one scan date; returns run.json's record. ScanOutputError (exit 3): no scan / partition /
    stored features; ConfigError (exit 2): a detector that does not read these features, or output already
    there; RescoreFailed (exit 1): the error budget or shards that never completed."""
    from pipeline.scan.completion import aggregate, versions
    from pipeline.scan.detectors import RunDetectors, detector_info

    date = resolve_scan_date(cfg.scan, cfg.scan_date)
    source = RunPaths(cfg.scan, date)
    shards = sorted(completed_shards(source))
    if not shards:
        raise ScanOutputError(f"no completed shards (markers) in {source.marker_dir}")
    head = FeatureHead(cfg.detector)
    stored = feature_shards(source)
    spec = store_spec(source, sorted(stored.intersection(shards)))
    head.check(spec, f"{cfg.scan}/_features (scan_date={date})")
    target = RunPaths(cfg.output, date)
    previous = read_json(target.run_file("run.json"))
    check_new_run(target, cfg.resume)
    if cfg.resume and previous is not None:
        before = previous.get("config") or {}
        for name in ("scan", "detector"):
            if before.get(name) not in (None, getattr(cfg, name)):
                raise resume_mismatch(target, name, getattr(cfg, name), before.get(name))
    run_id = cfg.run_id or (previous or {}).get("run_id") or f"{date}-rescore-{uuid.uuid4().hex[:8]}"
    done = completed_shards(target) if cfg.resume else set()
    info = detector_info(cfg.detector)
    dets = RunDetectors([cfg.detector], [info], None, [(info.image_size, info.resize_mode)])
    resolved = cfg.model_copy(update={"scan_date": date, "run_id": run_id})
    provenance = {
        "scan": cfg.scan,
        "scan_date": date,
        "features_dir": source.features_dir,
        "spec": spec.model_dump(mode="json"),
        "shards_with_features": len(stored),
    }
    run = RunFile(
        target.run_file("run.json"),
        {
            "status": "running",
            "kind": "rescore",
            "run_id": run_id,
            "scan_date": date,
            "source": cfg.scan,
            "output": cfg.output,
            "detector_id": head.detector_id,
            "shards_total": len(shards),
            "config": resolved.model_dump(mode="json"),
            "features": provenance,
            "started_at": now_iso(),
        },
    )
    write_json(target.run_file("config.json"), resolved.model_dump(mode="json"))
    write_json(target.run_file("versions.json"), versions())
    write_json(target.run_file("detector.json"), dets.record())
    write_json(target.run_file("features.json"), provenance)
    run.write()
    RunLog.set_destination(target.run_file("log.jsonl"))  # this process's JSON log, when a job keeps one
    tasks = {s: ShardTask(s, source, target, cfg.detector, run_id, head.detector_id) for s in shards}
    budget = cfg.error_budget()
    t0 = time.perf_counter()
    try:
        from pipeline.scan.job import run_errors  # the scan's error tally: the same budget rule

        progress = run_shards(
            shards,
            done=done,
            execute=map_shards(map_fn, rescore_shard, tasks, lambda st: st),
            on_shard=on_shard,
        )
        totals = aggregate(target, shards).as_dict()
        record = budget.check(run_errors(totals, len(shards)))
    except (ErrorBudgetExceeded, IncompleteRun) as exc:
        budget_record = {"error_budget": exc.record} if isinstance(exc, ErrorBudgetExceeded) else {}
        run.write(
            status="failed", error=str(exc), **budget_record, totals=aggregate(target, shards).as_dict()
        )
        raise RescoreFailed(str(exc)) from exc
    except Exception as exc:
        run.write(
            status="failed", error=f"{type(exc).__name__}: {exc}", totals=aggregate(target, shards).as_dict()
        )
        raise
    wall = time.perf_counter() - t0
    rows = int(totals["rows"])
    run.write(
        status="succeeded",
        totals=totals,
        error_budget=record,
        finished_at=now_iso(),
        wall_s=round(wall, 3),
        shards_written=progress.done,
        rows_per_s=round(rows / wall, 1) if wall > 0 else None,
    )
    log.info("rescore_done", run_id=run_id, shards=len(shards), rows=rows, wall_s=round(wall, 2))
    return run.record
