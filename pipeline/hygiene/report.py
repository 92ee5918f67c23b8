"""An HTML report over a scan dataset [ours]: score distribution, attribution counts, per-shard fake rate,
status breakdown and the day-over-day trend, as PNG plots (matplotlib, Agg) beside `report.html`.

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

from pipeline import output, storage
from pipeline.hygiene.plan import PlanError, resolve_scan_date
from pipeline.logs import get_logger

COLUMNS = ["shard", "shard_url", "key", "status", "error", "p_fake", "is_fake", "threshold", "top_generator",
           "detector_id"]
N_BINS = 10
MAX_SHARDS_PLOTTED = 40


def load_scan(scan: str) -> pa.Table:
    """All partitions of a scan dataset with a string `scan_date` column."""
    return output.read_scan(scan, columns=COLUMNS)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    rel = con.execute(sql, params or [])
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def summarize(table: pa.Table, scan_date: str) -> dict[str, Any]:
    """The report's numbers for `scan_date` (and the trend over every date in `table`)."""
    con = duckdb.connect()
    con.register("scan_all", table)
    con.register("scan", table.filter(pc.field("scan_date") == scan_date))
    totals = _rows(con, """
        SELECT count(*)                                            AS rows,
               count(*) FILTER (WHERE status <> 'shard_error')     AS samples,
               count(*) FILTER (WHERE status = 'ok')               AS scored,
               count(*) FILTER (WHERE is_fake)                     AS flagged,
               count(*) FILTER (WHERE status NOT IN ('ok', 'shard_error')) AS error_rows,
               count(*) FILTER (WHERE status = 'shard_error')      AS shard_errors,
               count(DISTINCT shard)                               AS shards
        FROM scan""")[0]
    totals["fake_rate"] = round(totals["flagged"] / totals["scored"], 4) if totals["scored"] else None
    status = _rows(con, "SELECT status, count(*) AS rows FROM scan GROUP BY status ORDER BY rows DESC, status")
    generators = _rows(con, """
        SELECT top_generator AS generator, count(*) AS flagged FROM scan
        WHERE status = 'ok' AND is_fake GROUP BY top_generator ORDER BY flagged DESC, generator""")
    shards = _rows(con, """
        SELECT shard, count(*) FILTER (WHERE status <> 'shard_error') AS samples,
               count(*) FILTER (WHERE status = 'ok') AS scored, count(*) FILTER (WHERE is_fake) AS flagged,
               bool_or(status = 'shard_error') AS shard_error
        FROM scan GROUP BY shard ORDER BY shard""")
    for s in shards:
        s["fake_rate"] = round(s["flagged"] / s["scored"], 4) if s["scored"] else None
    hist = _rows(con, f"""
        SELECT CAST(least(floor(p_fake * {N_BINS}), {N_BINS - 1}) AS INTEGER) AS bin,
               count(*) AS images, count(*) FILTER (WHERE is_fake) AS flagged
        FROM scan WHERE status = 'ok' GROUP BY bin ORDER BY bin""")
    by_bin = {h["bin"]: h for h in hist}
    histogram = [{"bin_start": i / N_BINS, "bin_end": (i + 1) / N_BINS,
                  "images": by_bin.get(i, {}).get("images", 0), "flagged": by_bin.get(i, {}).get("flagged", 0)}
                 for i in range(N_BINS)]
    meta = _rows(con, """
        SELECT string_agg(DISTINCT detector_id, ',' ORDER BY detector_id) AS detectors,
               min(threshold) AS threshold_min, max(threshold) AS threshold_max FROM scan""")[0]
    daily = _rows(con, """
        SELECT scan_date, count(*) FILTER (WHERE status = 'ok') AS scored,
               count(*) FILTER (WHERE is_fake) AS flagged
        FROM scan_all GROUP BY scan_date ORDER BY scan_date""")
    for d in daily:
        d["fake_rate"] = round(d["flagged"] / d["scored"], 4) if d["scored"] else None
    errors = _rows(con, """
        SELECT status, any_value(error) AS example FROM scan WHERE status <> 'ok' GROUP BY status ORDER BY status""")
    return {
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
    ax.bar(left, [b["flagged"] for b in h], width=1 / N_BINS, align="edge", bottom=not_flagged,
           color="#c44e52", label="flagged (is_fake)")
    if summary["threshold"] is not None:
        ax.axvline(summary["threshold"], color="k", linestyle="--", label=f"threshold {summary['threshold']:.2f}")
    ax.set(xlabel="p_fake", ylabel="images", title=f"Score distribution ({summary['scan_date']})", xlim=(0, 1))
    ax.legend(fontsize=8)
    out["score_distribution.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    gens = summary["generators"]
    ax.bar([g["generator"] or "?" for g in gens], [g["flagged"] for g in gens], color="#dd8452")
    ax.set(ylabel="flagged images", title="Attribution of flagged images (top_generator)")
    out["attribution_counts.png"] = _png(fig)

    shards = sorted((s for s in summary["shards"] if s["fake_rate"] is not None),
                    key=lambda s: (-s["fake_rate"], s["shard"]))[:MAX_SHARDS_PLOTTED]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(shards) + 1)))
    ax.barh([s["shard"] for s in shards][::-1], [s["fake_rate"] for s in shards][::-1], color="#c44e52")
    ax.set(xlabel="fake rate (flagged / scored)", xlim=(0, 1),
           title=f"Per-shard fake rate (top {len(shards)} of {len(summary['shards'])})")
    out["shard_fake_rate.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    st = summary["status"]
    ax.bar([s["status"] for s in st], [s["rows"] for s in st],
           color=["#55a868" if s["status"] == "ok" else "#c44e52" for s in st])
    ax.set(ylabel="rows", title="Row status")
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


def render_html(summary: dict[str, Any], images: list[str]) -> str:
    t = summary["totals"]
    total_rows = "".join(
        f"<tr><th>{html.escape(label)}</th>{_cell(t[k], f'totals.{k}')}</tr>"
        for k, label in [("shards", "shards"), ("rows", "rows"), ("samples", "samples"), ("scored", "scored (ok)"),
                         ("flagged", "flagged (is_fake)"), ("fake_rate", "fake rate"),
                         ("error_rows", "error rows"), ("shard_errors", "shard errors")]
    )
    status_rows = "".join(f"<tr><td>{html.escape(s['status'])}</td>{_cell(s['rows'], 'status.' + s['status'])}</tr>"
                          for s in summary["status"])
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
    err_rows = "".join(f"<tr><td>{html.escape(e['status'])}</td><td>{html.escape(str(e['example']))}</td></tr>"
                       for e in summary["error_examples"])
    figs = "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}"></figure>' for name in images)
    blob = json.dumps(summary, sort_keys=True, default=str).replace("</", "<\\/")
    thr = summary["threshold"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>genscan report {html.escape(summary['scan_date'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}figure{{display:inline-block;margin:.5em}}
img{{max-width:520px}}</style></head><body>
<h1>Scan report — scan_date {html.escape(summary['scan_date'])}</h1>
<p>Detector(s): {html.escape(', '.join(summary['detectors']) or '—')};
threshold: <span data-metric="threshold">{'—' if thr is None else f'{thr:.4f}'}</span>
{'(varies between rows)' if summary['threshold_varies'] else ''}</p>
<h2>Totals</h2><table>{total_rows}</table>
{figs}
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


def build_report(scan: str, output: str, scan_date: str | None = None) -> dict[str, Any]:
    """Write `<output>/report.html`, its PNGs and `summary.json`; return the summary."""
    log = get_logger("hygiene.report")
    day = resolve_scan_date(scan, scan_date)
    table = load_scan(scan)
    if table.num_rows == 0:
        raise PlanError(f"scan {scan} has no rows")
    summary = summarize(table, day)
    images = plots(summary)
    for name, data in images.items():
        storage.write_bytes_atomic(storage.join(output, name), data)
    storage.write_bytes_atomic(storage.join(output, "summary.json"),
                               (json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n").encode())
    storage.write_bytes_atomic(storage.join(output, "report.html"), render_html(summary, list(images)).encode())
    log.info("report_written", output=output, scan_date=day, **{k: summary["totals"][k] for k in ("rows", "flagged")})
    return summary
