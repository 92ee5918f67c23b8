"""An HTML report over a scan dataset [ours]: who ran what (run id, input, detector), score distribution,
attribution counts, per-shard fake rate, status breakdown (log scale) and the day-over-day trend as PNG plots
(matplotlib, Agg), thumbnail galleries of the images themselves (pipeline.hygiene.gallery), the top-N flagged
rows, and what the last filter run dropped and quarantined (`filter_output`), all beside `report.html`.

The numbers come from DuckDB over the scan's Arrow table (read with pyarrow through fsspec, so local and s3://
scans work alike). The page embeds the same numbers as a machine-readable JSON block
(`<script type="application/json" id="genscan-summary">`) and every visible number carries a `data-metric`
attribute, so a test (or a dashboard) can check what a reader sees.
"""

from __future__ import annotations

import html
import io
import json
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from pipeline import output, storage
from pipeline.hygiene import gallery
from pipeline.hygiene.plan import PlanError, resolve_scan_date
from pipeline.logs import get_logger
from pipeline.settings import StrictModel

COLUMNS = [
    "run_id",
    "source",
    "shard",
    "shard_url",
    "key",
    "status",
    "error",
    "p_fake",
    "is_fake",
    "threshold",
    "top_generator",
    "sha256",
    "detector_id",
    # scan schema v3 (null in older scans): the provenance section and the declared gallery
    "provenance_verdict",
    "provenance_generator",
    "provenance_model",
    "provenance_signature",
    "decided_by",
]
MAX_FILTER_ROWS = 50


class ReportConfig(StrictModel):
    """One report. Saved as `<output>/report_config.json`."""

    scan: str = Field(min_length=1, description="scan output root (scan_date=*/ partitions)")
    output: str = Field(min_length=1, description="folder for report.html, PNGs, thumbs/, summary.json")
    scan_date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="default: latest")
    filter_output: str | None = Field(
        default=None, min_length=1, description="a filter run's output: show what it dropped / quarantined"
    )
    gallery_size: int = Field(
        default=8,
        ge=0,
        le=64,
        description="cards per gallery (per generator for the fakes); 0 = no galleries",
    )
    top_n: int = Field(default=25, ge=0, le=500, description="rows of the top-flagged table")
    seed: int = Field(default=0, description="seed of the random sample of kept images")


N_BINS = 10
MAX_SHARDS_PLOTTED = 40


TREND_COLUMNS = ["status", "is_fake"]  # all the day-over-day trend needs from the other dates


def load_scan(scan: str, scan_date: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """The rows of one date (None: every date) with a string `scan_date` column."""
    return output.read_scan(scan, scan_date=scan_date, columns=columns or COLUMNS)


def _connect(day: pa.Table, every: pa.Table) -> duckdb.DuckDBPyConnection:
    """DuckDB with `scan` (the report's date, all report columns) and `scan_all` (every date, at least
    TREND_COLUMNS) over Arrow tables."""
    con = duckdb.connect()
    con.register("scan_all", every)
    con.register("scan", day)
    return con


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    rel = con.execute(sql, params or [])
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def summarize(
    table: pa.Table, scan_date: str, con: duckdb.DuckDBPyConnection | None = None
) -> dict[str, Any]:
    """The report's numbers for `scan_date` (and the trend over every date in `table`)."""
    con = con or _connect(table.filter(pc.field("scan_date") == scan_date), table)
    totals = _rows(
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
    status = _rows(
        con, "SELECT status, count(*) AS rows FROM scan GROUP BY status ORDER BY rows DESC, status"
    )
    generators = _rows(
        con,
        """
        SELECT top_generator AS generator, count(*) AS flagged FROM scan
        WHERE status = 'ok' AND is_fake GROUP BY top_generator ORDER BY flagged DESC, generator""",
    )
    shards = _rows(
        con,
        """
        SELECT shard, count(*) FILTER (WHERE status <> 'shard_error') AS samples,
               count(*) FILTER (WHERE status = 'ok') AS scored, count(*) FILTER (WHERE is_fake) AS flagged,
               bool_or(status = 'shard_error') AS shard_error
        FROM scan GROUP BY shard ORDER BY shard""",
    )
    for s in shards:
        s["fake_rate"] = round(s["flagged"] / s["scored"], 4) if s["scored"] else None
    hist = _rows(
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
    meta = _rows(
        con,
        """
        SELECT string_agg(DISTINCT detector_id, ',' ORDER BY detector_id) AS detectors,
               min(threshold) AS threshold_min, max(threshold) AS threshold_max FROM scan""",
    )[0]
    daily = _rows(
        con,
        """
        SELECT scan_date, count(*) FILTER (WHERE status = 'ok') AS scored,
               count(*) FILTER (WHERE is_fake) AS flagged
        FROM scan_all GROUP BY scan_date ORDER BY scan_date""",
    )
    for d in daily:
        d["fake_rate"] = round(d["flagged"] / d["scored"], 4) if d["scored"] else None
    errors = _rows(
        con,
        """
        SELECT status, any_value(error) AS example FROM scan WHERE status <> 'ok' GROUP BY status ORDER BY status""",
    )
    runs = _rows(
        con,
        """
        SELECT string_agg(DISTINCT run_id, ',' ORDER BY run_id) AS run_ids,
               string_agg(DISTINCT source, '\n' ORDER BY source) AS inputs FROM scan""",
    )[0]
    return {
        "provenance": provenance_summary(con),
        "run_ids": (runs["run_ids"] or "").split(",") if runs["run_ids"] else [],
        "inputs": (runs["inputs"] or "").split("\n") if runs["inputs"] else [],
        "scan_date": scan_date,
        "totals": totals,
        "status": status,
        "generators": generators,
        "shards": shards,
        "histogram": histogram,
        "detectors": (meta["detectors"] or "").split(",") if meta["detectors"] else [],
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
    verdicts = _rows(
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
    generators = _rows(
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


def _provenance_section(p: dict[str, Any]) -> str:
    e = html.escape
    if not p["verdicts"]:
        return "<h2>Provenance evidence</h2><p>No provenance was read (scans before schema v3, or reading off).</p>"
    rows = "".join(
        f"<tr><td>{e(v['verdict'])}</td>{_cell(v['rows'], 'provenance.' + v['verdict'] + '.rows')}"
        f"{_cell(v['scored'], 'provenance.' + v['verdict'] + '.scored')}"
        f"{_cell(v['detector_flagged'], 'provenance.' + v['verdict'] + '.detector_flagged')}"
        f"{_cell(v['detector_flag_rate'], 'provenance.' + v['verdict'] + '.detector_flag_rate')}"
        f"{_cell(v['decided_by_provenance'], 'provenance.' + v['verdict'] + '.decided_by_provenance')}</tr>"
        for v in p["verdicts"]
    )
    gens = "".join(
        f"<tr><td>{e(str(g['generator'] or '—'))}</td><td>{e(g['verdict'])}</td>"
        f"{_cell(g['rows'], 'provenance.generators.' + str(g['generator']) + '.rows')}"
        f"{_cell(g['detector_flagged'])}</tr>"
        for g in p["generators"]
    )
    return f"""<h2>Provenance evidence</h2>
<p>What the images declare about themselves (docs/provenance.md). "detector flagged" is the learned detector's own
decision (p_fake &ge; threshold) on the scored rows: on <b>ai_declared</b> rows its flag rate is its recall on this
corpus's declared fakes, on <b>capture_declared</b> rows its false-positive rate on declared camera captures.</p>
<table><tr><th>verdict</th><th>rows</th><th>scored</th><th>detector flagged</th><th>detector flag rate</th>
<th>is_fake set by provenance</th></tr>{rows}</table>
<table><tr><th>declared generator</th><th>verdict</th><th>rows</th><th>detector flagged</th></tr>{gens}</table>"""


# ---------------------------------------------------------------- plots


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def plots(summary: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    h = summary["histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    left = [b["bin_start"] for b in h]
    not_flagged = [b["images"] - b["flagged"] for b in h]
    ax.bar(left, not_flagged, width=1 / N_BINS, align="edge", color="#4c72b0", label="kept (below threshold)")
    ax.bar(
        left,
        [b["flagged"] for b in h],
        width=1 / N_BINS,
        align="edge",
        bottom=not_flagged,
        color="#c44e52",
        label="flagged (is_fake)",
    )
    if summary["threshold"] is not None:
        ax.axvline(
            summary["threshold"], color="k", linestyle="--", label=f"threshold {summary['threshold']:.2f}"
        )
    ax.set(
        xlabel="p_fake", ylabel="images", title=f"Score distribution ({summary['scan_date']})", xlim=(0, 1)
    )
    ax.legend(fontsize=8)
    out["score_distribution.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    gens = summary["generators"]
    ax.bar([g["generator"] or "?" for g in gens], [g["flagged"] for g in gens], color="#dd8452")
    ax.set(ylabel="flagged images", title="Attribution of flagged images (top_generator)")
    out["attribution_counts.png"] = _png(fig)

    shards = sorted(
        (s for s in summary["shards"] if s["fake_rate"] is not None),
        key=lambda s: (-s["fake_rate"], s["shard"]),
    )[:MAX_SHARDS_PLOTTED]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(shards) + 1)))
    ax.barh([s["shard"] for s in shards][::-1], [s["fake_rate"] for s in shards][::-1], color="#c44e52")
    ax.set(
        xlabel="fake rate (flagged / scored)",
        xlim=(0, 1),
        title=f"Per-shard fake rate (top {len(shards)} of {len(summary['shards'])})",
    )
    out["shard_fake_rate.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    st = summary["status"]
    ax.bar(
        [s["status"] for s in st],
        [s["rows"] for s in st],
        color=["#55a868" if s["status"] == "ok" else "#c44e52" for s in st],
    )
    ax.set_yscale("log")  # ok rows outnumber error rows by orders of magnitude: both stay visible
    ax.set(ylabel="rows (log scale)", title="Row status")
    for x, r in enumerate(st):
        ax.annotate(str(r["rows"]), (x, r["rows"]), ha="center", va="bottom", fontsize=8)
    out["status_breakdown.png"] = _png(fig)

    daily = summary["daily"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([d["scan_date"] for d in daily], [d["fake_rate"] or 0 for d in daily], marker="o")
    ax.set(ylabel="fake rate", title="Fake rate per scan date", ylim=(0, 1))
    out["daily_fake_rate.png"] = _png(fig)
    return out


# ---------------------------------------------------------------- HTML


def _cell(value: Any, metric: str | None = None) -> str:
    text = "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
    attr = f' data-metric="{html.escape(metric)}"' if metric else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def _header(summary: dict[str, Any]) -> str:
    e = html.escape
    h = summary["header"]
    det = h.get("detector") or {}
    thr = summary["threshold"]
    return (
        f'<table class="header"><tr><th>run id</th><td data-metric="header.run_ids">'
        f"{e(', '.join(summary['run_ids']) or '—')}</td></tr>"
        f'<tr><th>input</th><td data-metric="header.inputs">{e(", ".join(summary["inputs"]) or "—")}</td></tr>'
        f'<tr><th>detector</th><td data-metric="header.detector">{e(str(det.get("uri") or "—"))}</td></tr>'
        f"<tr><th>detector id</th><td>{e(', '.join(summary['detectors']) or '—')}</td></tr>"
        f"<tr><th>labels</th><td>{e(', '.join(det.get('labels') or []) or '—')}</td></tr>"
        f'<tr><th>threshold</th><td><span data-metric="threshold">{"—" if thr is None else f"{thr:.4f}"}</span>'
        f"{' (varies between rows)' if summary['threshold_varies'] else ''}</td></tr>"
        f'<tr><th>run status</th><td data-metric="header.run_status">{e(str(h.get("run_status") or "—"))}</td>'
        "</tr></table>"
    )


def _filter_section(f: dict[str, Any] | None) -> str:
    if f is None:
        return ""
    e = html.escape
    t = f["totals"]
    warn = []
    if not f["reconciled"]:
        warn.append("this filter run did NOT reconcile (no _SUCCESS): its output is not to be used")
    if not f["same_scan_date"]:
        warn.append(f"it used scan_date {f['scan_date']}, not the date of this report")
    totals = "".join(
        f"<tr><th>{e(k)}</th>{_cell(t.get(k), 'filter.' + k)}</tr>"
        for k in ("samples", "kept", "dropped", "quarantined", "kept_error_rows")
    )
    reasons = "".join(
        f"<tr><td>{e(r['action'])}</td><td>{e(r['reason'] or '')}</td>"
        f"{_cell(r['samples'], 'filter.reasons.' + r['action'] + ':' + (r['reason'] or ''))}</tr>"
        for r in f["by_reason"]
    )
    removed = "".join(
        f"<tr><td>{e(r['action'])}</td><td>{e(str(r['shard']))}</td><td>{e(str(r['key']))}</td>"
        f"<td>{e(str(r['reason']))}</td>{_cell(r['p_fake'])}<td>{e(r['top_generator'] or '—')}</td></tr>"
        for r in f["removed"]
    )
    skipped = ", ".join(str(s.get("shard")) for s in f["skipped_shards"]) or "none"
    return f"""<h2>Last filter run</h2>
<p>Output {e(f["output"])} (input {e(str(f.get("input") or "—"))}, scan_date {e(str(f["scan_date"]))});
shards left out: {e(skipped)}.</p>
{"".join(f'<p class="warn">{e(w)}</p>' for w in warn)}
<table>{totals}</table>
<table><tr><th>action</th><th>reason</th><th>samples</th></tr>{reasons}</table>
<h3>Dropped and quarantined (highest p_fake first, at most {MAX_FILTER_ROWS})</h3>
<table><tr><th>action</th><th>shard</th><th>key</th><th>reason</th><th>p_fake</th><th>top_generator</th></tr>
{removed}</table>"""


def render_html(summary: dict[str, Any], images: list[str], galleries_html: str = "") -> str:
    t = summary["totals"]
    total_rows = "".join(
        f"<tr><th>{html.escape(label)}</th>{_cell(t[k], f'totals.{k}')}</tr>"
        for k, label in [
            ("shards", "shards"),
            ("rows", "rows"),
            ("samples", "samples"),
            ("scored", "scored (ok)"),
            ("flagged", "flagged (is_fake)"),
            ("fake_rate", "fake rate"),
            ("error_rows", "error rows"),
            ("shard_errors", "shard errors"),
        ]
    )
    status_rows = "".join(
        f"<tr><td>{html.escape(s['status'])}</td>{_cell(s['rows'], 'status.' + s['status'])}</tr>"
        for s in summary["status"]
    )
    gen_rows = "".join(
        f"<tr><td>{html.escape(str(g['generator']))}</td>{_cell(g['flagged'], 'generators.' + str(g['generator']))}</tr>"
        for g in summary["generators"]
    )
    shard_rows = "".join(
        f"<tr><td>{html.escape(s['shard'])}</td>{_cell(s['samples'], 'shards.' + s['shard'] + '.samples')}"
        f"{_cell(s['scored'], 'shards.' + s['shard'] + '.scored')}{_cell(s['flagged'], 'shards.' + s['shard'] + '.flagged')}"
        f"{_cell(s['fake_rate'], 'shards.' + s['shard'] + '.fake_rate')}<td>{'yes' if s['shard_error'] else ''}</td></tr>"
        for s in summary["shards"]
    )
    daily_rows = "".join(
        f"<tr><td>{html.escape(d['scan_date'])}</td>{_cell(d['scored'], 'daily.' + d['scan_date'] + '.scored')}"
        f"{_cell(d['flagged'], 'daily.' + d['scan_date'] + '.flagged')}"
        f"{_cell(d['fake_rate'], 'daily.' + d['scan_date'] + '.fake_rate')}</tr>"
        for d in summary["daily"]
    )
    err_rows = "".join(
        f"<tr><td>{html.escape(e['status'])}</td><td>{html.escape(str(e['example']))}</td></tr>"
        for e in summary["error_examples"]
    )
    figs = "".join(
        f'<figure class="plot"><img src="{html.escape(name)}" alt="{html.escape(name)}"></figure>'
        for name in images
    )
    blob = json.dumps(summary, sort_keys=True, default=str).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>genscan report {html.escape(summary["scan_date"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}}
figure.plot{{display:inline-block;margin:.5em}}figure.plot img{{max-width:520px}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}}
figure.card{{width:272px;margin:0;border:1px solid #ddd;padding:6px;font-size:12px;overflow-wrap:anywhere}}
figure.card img{{display:block;max-width:256px;max-height:256px;margin:auto}}
.noimg{{height:80px;display:flex;align-items:center;justify-content:center;background:#f4f4f4;color:#a33;
padding:4px;text-align:center}}
.shard{{color:#666}}.err{{color:#a33}}.cap{{color:#333;font-style:italic}}.warn{{color:#a33;font-weight:bold}}
img.mini{{max-width:64px;max-height:64px}}</style></head><body>
<h1>Scan report — scan_date {html.escape(summary["scan_date"])}</h1>
{_header(summary)}
<h2>Totals</h2><table>{total_rows}</table>
{figs}
{_provenance_section(summary["provenance"])}
{galleries_html}
{_filter_section(summary.get("filter"))}
<h2>Status breakdown</h2><table><tr><th>status</th><th>rows</th></tr>{status_rows}</table>
<h2>Error examples</h2><table><tr><th>status</th><th>example error</th></tr>{err_rows}</table>
<h2>Attribution of flagged images</h2><table><tr><th>top_generator</th><th>flagged</th></tr>{gen_rows}</table>
<h2>Per shard</h2><table><tr><th>shard</th><th>samples</th><th>scored</th><th>flagged</th><th>fake rate</th>
<th>shard error</th></tr>{shard_rows}</table>
<h2>Per scan date</h2><table><tr><th>scan_date</th><th>scored</th><th>flagged</th><th>fake rate</th></tr>
{daily_rows}</table>
<script type="application/json" id="genscan-summary">{blob}</script>
</body></html>
"""


def run_header(scan: str, scan_date: str) -> dict[str, Any]:
    """The run's detector (uri, id, labels) and status from `_run/<date>/` (absent for foreign scans)."""
    paths = output.RunPaths(scan, scan_date)
    det = output.read_json(paths.run_file("detector.json")) or {}
    run = output.read_json(paths.run_file("run.json")) or {}
    return {
        "detector": {k: det.get(k) for k in ("uri", "detector_id", "labels", "threshold")} if det else None,
        "run_status": run.get("status"),
    }


def filter_summary(filter_output: str, scan_date: str) -> dict[str, Any]:
    """What a filter run did (its `_run/stats.json`, `_run/config.json`, `manifest.parquet`, `_SUCCESS`)."""
    run_dir = storage.join(filter_output, "_run")
    stats = output.read_json(storage.join(run_dir, "stats.json"))
    if stats is None:
        raise PlanError(
            f"filter output {filter_output} has no _run/stats.json: not a filter run's output "
            "(a --dry-run writes nothing)"
        )
    config = output.read_json(storage.join(run_dir, "config.json")) or {}
    rows: list[dict[str, Any]] = []
    manifest = storage.join(filter_output, "manifest.parquet")
    if storage.exists(manifest):
        fs, path = storage.filesystem(manifest)
        rows = pq.read_table(path, filesystem=fs).to_pylist()
    con = duckdb.connect()
    con.register(
        "manifest", pa.Table.from_pylist(rows) if rows else pa.table({"action": pa.array([], pa.string())})
    )
    by_reason = (
        _rows(
            con,
            """SELECT action, reason, count(*) AS samples FROM manifest
                              GROUP BY ALL ORDER BY action, reason""",
        )
        if rows
        else []
    )
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
        "reconciled": bool(stats.get("reconciled"))
        and storage.exists(storage.join(filter_output, "_SUCCESS")),
        "totals": stats.get("totals", {}),
        "skipped_shards": stats.get("skipped_shards", []),
        "by_reason": by_reason,
        "removed": [
            {k: r.get(k) for k in ("action", "shard", "key", "reason", "p_fake", "top_generator")}
            for r in removed[:MAX_FILTER_ROWS]
        ],
    }


def build_report(cfg: ReportConfig) -> dict[str, Any]:
    """Write `<output>/report.html`, its PNGs, thumbnails, `summary.json` and `report_config.json`; return the
    summary."""
    log = get_logger("hygiene.report")
    day = resolve_scan_date(cfg.scan, cfg.scan_date)
    # the report's date with every report column; the other dates only with what the trend needs (memory)
    day_rows = load_scan(cfg.scan, day)
    if day_rows.num_rows == 0:
        raise PlanError(f"scan {cfg.scan} has no rows for scan_date={day}")
    con = _connect(day_rows, load_scan(cfg.scan, columns=TREND_COLUMNS))
    summary = summarize(day_rows, day, con)
    summary["header"] = run_header(cfg.scan, day)
    if cfg.filter_output:
        summary["filter"] = filter_summary(cfg.filter_output, day)
    chosen = gallery.select(con, size=cfg.gallery_size, top_n=cfg.top_n, seed=cfg.seed)
    items = [it for _, _, its in chosen["galleries"] for it in its] + chosen["top_flagged"]
    summary["thumbnails"] = gallery.fill(items, cfg.output)
    summary["galleries"] = {name: gallery.as_json(its) for name, _, its in chosen["galleries"]}
    summary["top_flagged"] = gallery.as_json(chosen["top_flagged"])
    images = plots(summary)
    for name, data in images.items():
        storage.write_bytes_atomic(storage.join(cfg.output, name), data)
    storage.write_bytes_atomic(
        storage.join(cfg.output, "summary.json"),
        (json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n").encode(),
    )
    storage.write_bytes_atomic(
        storage.join(cfg.output, "report_config.json"), (cfg.to_json() + "\n").encode()
    )
    page = render_html(summary, list(images), gallery.render(chosen["galleries"], chosen["top_flagged"]))
    storage.write_bytes_atomic(storage.join(cfg.output, "report.html"), page.encode())
    log.info(
        "report_written",
        output=cfg.output,
        scan_date=day,
        thumbnails=summary["thumbnails"]["thumbnails"],
        **{k: summary["totals"][k] for k in ("rows", "flagged")},
    )
    return summary
