"""The report's numbers [ours]: DuckDB over the scan's Arrow table (read with pyarrow through fsspec,
so local and s3:// scans work alike) — totals, status breakdown, attribution counts, per-shard and per-date
fake rates, the score histogram, the provenance evidence — and what the run's own files say (`_run/<date>/`:
detector, status, shards scanned and carried forward) and what the last filter run dropped and quarantined.

Everything here is plain data (the `summary` dict): `pipeline.report.render` turns it into the page,
`pipeline.report.plots` into the PNGs, and `summary.json` is the same dict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import output, storage
from pipeline.hygiene.plan import SCAN_COLUMNS, FilterPaths, PlanError

COLUMNS = [
    *SCAN_COLUMNS,  # what the filter decides from: the report shows the same rows
    "run_id",
    "source",
    "shard_url",
    "detector_id",
    # scan schema v3 (null in older scans): the provenance section and the declared gallery
    "provenance_verdict",
    "provenance_generator",
    "provenance_model",
    "provenance_signature",
    "decided_by",
]
MAX_FILTER_ROWS = 50
N_BINS = 10
TREND_COLUMNS = ["status", "is_fake"]  # all the day-over-day trend needs from the other dates


def connect(day: pa.Table, every: pa.Table) -> duckdb.DuckDBPyConnection:
    """DuckDB with `scan` (the report's date, all report columns) and `scan_all` (every date, at least
    TREND_COLUMNS) over Arrow tables."""
    con = duckdb.connect()
    con.register("scan_all", every)
    con.register("scan", day)
    return con


def query_rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    rel = con.execute(sql, params or [])
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def summarize(con: duckdb.DuckDBPyConnection, scan_date: str) -> dict[str, Any]:
    """The report's numbers for `scan_date`, the date of `con`'s `scan` (and the trend over `scan_all`)."""
    totals = query_rows(
        con,
        """
        SELECT count(*)                                            AS rows,
               count(*) FILTER (WHERE status <> 'shard_error')     AS samples,
               count(*) FILTER (WHERE status = 'ok')               AS scored,
               count(*) FILTER (WHERE is_fake)                     AS flagged,
               count(*) FILTER (WHERE status NOT IN ('ok', 'shard_error')) AS error_rows,
               count(*) FILTER (WHERE status = 'shard_error')      AS shard_errors,
               count(DISTINCT shard)                               AS shards
        FROM scan""",
    )[0]
    totals["fake_rate"] = round(totals["flagged"] / totals["scored"], 4) if totals["scored"] else None
    status = query_rows(
        con, "SELECT status, count(*) AS rows FROM scan GROUP BY status ORDER BY rows DESC, status"
    )
    generators = query_rows(
        con,
        """
        SELECT top_generator AS generator, count(*) AS flagged FROM scan
        WHERE status = 'ok' AND is_fake GROUP BY top_generator ORDER BY flagged DESC, generator""",
    )
    shards = query_rows(
        con,
        """
        SELECT shard, count(*) FILTER (WHERE status <> 'shard_error') AS samples,
               count(*) FILTER (WHERE status = 'ok') AS scored, count(*) FILTER (WHERE is_fake) AS flagged,
               bool_or(status = 'shard_error') AS shard_error
        FROM scan GROUP BY shard ORDER BY shard""",
    )
    for s in shards:
        s["fake_rate"] = round(s["flagged"] / s["scored"], 4) if s["scored"] else None
    hist = query_rows(
        con,
        f"""
        SELECT CAST(least(floor(p_fake * {N_BINS}), {N_BINS - 1}) AS INTEGER) AS bin,
               count(*) AS images, count(*) FILTER (WHERE is_fake) AS flagged
        FROM scan WHERE status = 'ok' GROUP BY bin ORDER BY bin""",
    )
    by_bin = {h["bin"]: h for h in hist}
    histogram = [
        {
            "bin_start": i / N_BINS,
            "bin_end": (i + 1) / N_BINS,
            "images": by_bin.get(i, {}).get("images", 0),
            "flagged": by_bin.get(i, {}).get("flagged", 0),
        }
        for i in range(N_BINS)
    ]
    meta = query_rows(
        con,
        """
        SELECT string_agg(DISTINCT detector_id, ',' ORDER BY detector_id) AS detectors,
               min(threshold) AS threshold_min, max(threshold) AS threshold_max,
               string_agg(DISTINCT run_id, ',' ORDER BY run_id) AS run_ids,
               string_agg(DISTINCT source, '\n' ORDER BY source) AS inputs FROM scan""",
    )[0]
    daily = query_rows(
        con,
        """
        SELECT scan_date, count(*) FILTER (WHERE status = 'ok') AS scored,
               count(*) FILTER (WHERE is_fake) AS flagged
        FROM scan_all GROUP BY scan_date ORDER BY scan_date""",
    )
    for d in daily:
        d["fake_rate"] = round(d["flagged"] / d["scored"], 4) if d["scored"] else None
    errors = query_rows(
        con,
        """
        SELECT status, any_value(error) AS example FROM scan WHERE status <> 'ok'
        GROUP BY status ORDER BY status""",
    )
    return {
        "provenance": provenance_summary(con),
        "run_ids": meta["run_ids"].split(",") if meta["run_ids"] else [],
        "inputs": meta["inputs"].split("\n") if meta["inputs"] else [],
        "scan_date": scan_date,
        "totals": totals,
        "status": status,
        "generators": generators,
        "shards": shards,
        "histogram": histogram,
        "detectors": meta["detectors"].split(",") if meta["detectors"] else [],
        "threshold": None if meta["threshold_min"] is None else round(float(meta["threshold_min"]), 4),
        "threshold_varies": meta["threshold_min"] != meta["threshold_max"],
        "daily": daily,
        "error_examples": errors,
    }


def provenance_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Rows per provenance verdict, the declared generators, and the learned detector measured against the
    declared labels: its own decision (p_fake >= threshold, whatever the provenance policy made of is_fake)
    on the scored rows of each verdict. On `ai_declared` rows its flag rate is its recall on the corpus's own
    declared fakes; on `capture_declared` rows it is its false-positive rate on declared camera captures."""
    verdicts = query_rows(
        con,
        """
        SELECT provenance_verdict AS verdict, count(*) AS rows,
               count(*) FILTER (WHERE status = 'ok') AS scored,
               count(*) FILTER (WHERE status = 'ok' AND p_fake >= threshold) AS detector_flagged,
               count(*) FILTER (WHERE decided_by = 'provenance') AS decided_by_provenance
        FROM scan WHERE provenance_verdict IS NOT NULL GROUP BY ALL ORDER BY rows DESC, verdict""",
    )
    for v in verdicts:
        v["detector_flag_rate"] = round(v["detector_flagged"] / v["scored"], 4) if v["scored"] else None
    generators = query_rows(
        con,
        """
        SELECT provenance_generator AS generator, provenance_verdict AS verdict, count(*) AS rows,
               count(*) FILTER (WHERE status = 'ok' AND p_fake >= threshold) AS detector_flagged
        FROM scan WHERE provenance_verdict IN ('ai_declared', 'ai_composite_declared')
        GROUP BY ALL ORDER BY rows DESC, generator NULLS LAST, verdict""",
    )
    by = {v["verdict"]: v for v in verdicts}
    return {
        "verdicts": verdicts,
        "generators": generators,
        "detector_flag_rate_ai_declared": by.get("ai_declared", {}).get("detector_flag_rate"),
        "detector_flag_rate_capture_declared": by.get("capture_declared", {}).get("detector_flag_rate"),
    }


def run_header(scan: str, scan_date: str) -> dict[str, Any]:
    """The run's detector (uri, id, labels) and status from `_run/<date>/` (absent for foreign scans)."""
    paths = output.RunPaths(scan, scan_date)
    det = output.read_json(paths.run_file("detector.json")) or {}
    run = output.read_json(paths.run_file("run.json")) or {}
    totals, inc = run.get("totals") or {}, run.get("incremental") or {}
    shards = None
    if totals:  # how many shards the run scored and how many it carried forward from an earlier night
        carried = int(totals.get("shards_carried") or 0)
        shards = {
            "total": totals.get("shards_done"),
            "scanned": int(totals.get("shards_done") or 0) - carried,
            "carried": carried,
            "carried_from": inc.get("source_scan_date"),
            "removed_since": inc.get("removed") if inc.get("source_scan_date") else None,
            "full_scan_reason": inc.get("full_scan_reason"),
        }
    return {
        "detector": {k: det.get(k) for k in ("uri", "detector_id", "labels", "threshold")} if det else None,
        "run_status": run.get("status"),
        "shards": shards,
    }


def filter_summary(filter_output: str, scan_date: str) -> dict[str, Any]:
    """What a filter run did (its `_run/stats.json`, `_run/config.json`, `manifest.parquet`, `_SUCCESS`)."""
    paths = FilterPaths(filter_output)
    stats = output.read_json(paths.run_file("stats.json"))
    if stats is None:
        raise PlanError(
            f"filter output {filter_output} has no _run/stats.json: not a filter run's output "
            "(a --dry-run writes nothing)"
        )
    config = output.read_json(paths.run_file("config.json")) or {}
    rows: list[dict[str, Any]] = []
    if storage.exists(paths.manifest_table):
        fs, path = storage.filesystem(paths.manifest_table)
        rows = pq.read_table(path, filesystem=fs).to_pylist()
    counted = Counter((r["action"], r["reason"]) for r in rows)
    by_reason = [{"action": a, "reason": why, "samples": n} for (a, why), n in sorted(counted.items())]
    removed = sorted(
        (r for r in rows if r["action"] != "keep"),
        key=lambda r: (-(r["p_fake"] if r["p_fake"] is not None else -1.0), r["shard"], r["key"]),
    )
    for r in removed:
        r["p_fake"] = None if r["p_fake"] is None else round(float(r["p_fake"]), 4)
    return {
        "output": filter_output,
        "input": config.get("input"),
        "scan_date": stats.get("scan_date"),
        "same_scan_date": stats.get("scan_date") == scan_date,
        "reconciled": bool(stats.get("reconciled")) and storage.exists(paths.success),
        "totals": stats.get("totals", {}),
        "skipped_shards": stats.get("skipped_shards", []),
        "by_reason": by_reason,
        "removed": [
            {k: r.get(k) for k in ("action", "shard", "key", "reason", "p_fake", "top_generator")}
            for r in removed[:MAX_FILTER_ROWS]
        ],
    }
