"""Report memory vs scan history: peak RSS of `jobs/report.py` as the number of past scan dates grows.

    .venv/bin/python benchmarks/report.py [--rows-per-date 200000 --dates 1,8] [--out results]

A synthetic scan output in the real layout and schema (`pipeline.output.SCHEMA`, one Parquet file per shard,
50 shards per date; every row `ok` with a random p_fake, 64-hex sha256, key, shard_url), then per case ONE
fresh process (peak RSS = its `ru_maxrss`):
- `report`: the real job (`jobs.report.main`, galleries off: `--gallery-size 0 --top-n 0`, so no shard is
  read);
- `load_all_columns`: the earlier way of loading (every report column of every date; today's column set, which
  adds run_id, source and sha256 to the earlier one), for comparison;
- `load_day_plus_trend`: what it loads now (every report column of the report's date; status + is_fake of
  the other dates).

Writes results/report.json|md; prints the headline LAST as one JSON line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's pipeline package and benchmarks._common
from benchmarks._common import parser, progress, write_headline  # noqa: E402

SHARDS_PER_DATE = 50


def write_scan(root: Path, dates: list[str], rows_per_date: int, seed: int = 0) -> None:
    import pyarrow as pa

    from pipeline import output
    from pipeline.runner import commit_shard

    rng = np.random.default_rng(seed)
    per = rows_per_date // SHARDS_PER_DATE
    labels = ["real", "famA", "upconv"]
    for d_i, day in enumerate(dates):
        paths = output.RunPaths(str(root), day)
        for s in range(SHARDS_PER_DATE):
            shard = f"shard-{s:06d}"
            p = rng.random(per, dtype=np.float32)
            scores = rng.dirichlet(np.ones(3), per).astype(np.float32)
            top = np.array(labels)[scores.argmax(1)]
            cols = {
                "schema_version": pa.array(np.full(per, output.SCHEMA_VERSION, np.int16)),
                "run_id": pa.array([f"{day}-bench"] * per),
                "source": pa.array(["s3://bench/shards/"] * per),
                "shard": pa.array([shard] * per),
                "shard_url": pa.array([f"s3://bench/shards/{shard}.tar"] * per),
                "key": pa.array([f"{d_i:02d}{s:04d}{i:07d}" for i in range(per)]),
                "status": pa.array(["ok"] * per),
                "error": pa.nulls(per, pa.string()),
                "p_fake": pa.array(p),
                "logit": pa.array(np.log(p + 1e-6) - np.log1p(-p + 1e-6)),
                "is_fake": pa.array(p >= 0.5),
                "threshold": pa.array(np.full(per, 0.5, np.float32)),
                "top_generator": pa.array(top),
                "generator_scores": pa.array(
                    [list(zip(labels, row.tolist(), strict=True)) for row in scores],
                    type=pa.map_(pa.string(), pa.float32()),
                ),
                "width": pa.array(np.full(per, 256, np.int32)),
                "height": pa.array(np.full(per, 256, np.int32)),
                "format": pa.array(["JPEG"] * per),
                "n_bytes": pa.array(np.full(per, 20000, np.int64)),
                "sha256": pa.array([rng.bytes(32).hex() for _ in range(per)]),
                "detector_id": pa.array(["bench@000000000000"] * per),
                "scanned_at": pa.array(np.full(per, 1_700_000_000_000, "datetime64[ms]")).cast(
                    pa.timestamp("ms", tz="UTC")
                ),
            }
            # the columns a plain single-detector scan leaves empty (the other detectors', provenance)
            cols.update({f.name: pa.nulls(per, f.type) for f in output.SCHEMA if f.name not in cols})
            table = pa.table([cols[f.name] for f in output.SCHEMA], names=output.SCHEMA.names).cast(
                output.SCHEMA
            )
            commit_shard(
                [(paths.parquet(shard), output.parquet_bytes(table))], paths.marker(shard), {"rows": per}
            )


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
case, scan, out = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
if case == "report":
    from pipeline.cli.report import main
    rc = main(["--scan", scan, "--output", out, "--gallery-size", "0", "--top-n", "0"])
    assert rc == 0, rc
else:
    from pipeline.report.summary import COLUMNS, TREND_COLUMNS
    from pipeline.output import read_scan, resolve_scan_date
    if case == "load_all_columns":
        n = read_scan(scan, columns=COLUMNS).num_rows
    else:
        day = resolve_scan_date(scan)
        day_rows = read_scan(scan, scan_date=day, columns=COLUMNS)
        n = day_rows.num_rows + read_scan(scan, columns=TREND_COLUMNS).num_rows
print(json.dumps({{"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "seconds": round(time.perf_counter() - t, 2)}}))
"""


def run_case(case: str, scan: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(repo=str(REPO)), case, str(scan), str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "GENSCAN_LOG_LEVEL": "WARNING"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rows-per-date", type=int, default=200_000)
    ap.add_argument("--dates", default="1,8", help="history lengths to measure")
    ap.add_argument("--out", default=str(REPO / "results"))
    args = ap.parse_args()
    histories = [int(x) for x in args.dates.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="genscan-report-bench-") as tmp:
        for n_dates in histories:
            scan = Path(tmp) / f"scan{n_dates}"
            dates = [f"2026-11-{d:02d}" for d in range(1, n_dates + 1)]
            t = time.perf_counter()
            write_scan(scan, dates, args.rows_per_date)
            write_s = round(time.perf_counter() - t, 1)
            for case in ("report", "load_all_columns", "load_day_plus_trend"):
                r = run_case(case, scan, Path(tmp) / f"out-{n_dates}-{case}")
                results.append({"dates": n_dates, "rows": n_dates * args.rows_per_date, "case": case, **r})
                progress(json.dumps(results[-1]))
            progress(json.dumps({"dates": n_dates, "synthetic_scan_written_s": write_s}))
    by = {(r["dates"], r["case"]): r for r in results}
    lo, hi = histories[0], histories[-1]
    headline = {
        "report_peak_rss_mb": {str(n): by[(n, "report")]["peak_rss_mb"] for n in histories},
        "report_rss_growth_x": round(
            by[(hi, "report")]["peak_rss_mb"] / by[(lo, "report")]["peak_rss_mb"], 2
        ),
        "old_load_rss_growth_x": round(
            by[(hi, "load_all_columns")]["peak_rss_mb"] / by[(lo, "load_all_columns")]["peak_rss_mb"], 2
        ),
        "rows_per_date": args.rows_per_date,
    }
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    lines = [
        "# Report memory vs scan history (`benchmarks/report.py`)",
        "",
        f"Synthetic scan, real layout and schema: {args.rows_per_date} rows per date, {SHARDS_PER_DATE} "
        "shards per date; each case in a fresh process, peak RSS = `ru_maxrss`. `report` is the real job "
        "with galleries off (no shard reads); the two `load_*` rows isolate the scan loading: the "
        "earlier way (every report column of every date, today's column set) and now (the report's date in "
        "full, other dates status + is_fake).",
        "",
        "| dates | rows | case | peak RSS (MB) | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['dates']} | {r['rows']} | {r['case']} | {r['peak_rss_mb']} | {r['seconds']} |" for r in results
    ]
    lines += [
        "",
        f"Reading: going from {lo} to {hi} dates of history the report's peak RSS grows "
        f"{headline['report_rss_growth_x']}x; loading every report column of every date (the earlier way) "
        f"grows {headline['old_load_rss_growth_x']}x. Shared 2-core machine: seconds are noisy, "
        "RSS is not.",
        "",
    ]
    write_headline(args.out, "report", results, headline, meta, lines)


if __name__ == "__main__":
    main()
