"""How long each job takes at the demo's size (README "Quick start", docs/hygiene.md): the steps `make demo`
runs (demo shards, training set, the training job on Ray Train, the scan on a local Ray) and the README's
nightly flow on the demo's output (filter --dry-run, filter, report), each run as a user runs it
(`python jobs/<job>.py ...`, a fresh process, its own local Ray where the job starts one), timed by wall
clock.

    python benchmarks/demo_jobs.py [--out results] [--runs 3]

The cheap jobs (scan, filter, report) run `--runs` times, the data and training steps once; each figure is the
median of its runs with their range. The scan's own Ray start-up (from its log: `ray_start_local` ->
`ray_started_local`) is reported beside its wall time. Writes <out>/demo_jobs.json and <out>/demo_jobs.md
(default results/; `--quick` writes results/tmp/ with a smaller demo, a smoke run that never replaces the
committed figures). Sizes are `pipeline.cli.demo.DemoSize()`'s, the ones `make demo` uses."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's pipeline package and benchmarks._common
from benchmarks._common import parser, results_dir, run_job, write_results  # noqa: E402
from pipeline.cli import demo  # noqa: E402


def _ray_start_s(scan: Path) -> float | None:
    """Seconds between the scan log's `ray_start_local` and `ray_started_local` events."""
    (log,) = scan.glob("_run/*/log.jsonl")
    ts = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") in ("ray_start_local", "ray_started_local"):
            ts[event["event"]] = dt.datetime.fromisoformat(event["timestamp"])
    if len(ts) < 2:
        return None
    return (ts["ray_started_local"] - ts["ray_start_local"]).total_seconds()


def measure(
    work: Path, size: demo.DemoSize, runs: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds per job (and the local Ray start inside the scan); each job process's peak RSS, MB. Keyed
    by the row of the table, in the table's order."""
    root = work / "demo"
    shards, train, det = root / "shards", root / "train", root / "detector"
    seconds: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}

    def record(row: str, name: str, *args: str) -> None:
        wall, peak = run_job(name, *args)
        seconds.setdefault(row, []).append(wall)
        rss.setdefault(row, []).append(peak)

    record(
        "make_demo_data (demo shards)",
        "make_demo_data",
        *("--out", str(shards), "--layout", "wds", "--families", demo.SCAN_FAMILIES),
        *("--n-per-class", str(size.scan_per_class), "--seed", "0", "--shard-size", str(size.shard_size)),
    )
    demo.add_bad_shards(shards)
    record(
        "make_demo_data (training set)",
        "make_demo_data",
        *("--out", str(train), "--layout", "univfd", "--families", demo.TRAIN_FAMILIES),
        *("--n-per-class", str(size.train_per_class), "--seed", "1"),
    )
    record(
        "train_detector (tiny-mole, Ray Train)",
        "train_detector",
        *("--data", str(train), "--config", "tiny-mole", "--method", "mole"),
        *("--train-generators", demo.TRAIN_FAMILIES, "--out", str(det)),
        *(["--epochs", str(size.epochs)] if size.epochs else []),
    )
    for _ in range(runs):
        scan, clean, report = root / "scan", root / "clean", root / "report"
        for d in (scan, clean, report):
            shutil.rmtree(d, ignore_errors=True)
        record(
            "scan_bucket (local Ray)",
            "scan_bucket",
            "--input",
            str(shards),
            "--output",
            str(scan),
            "--detector",
            str(det),
        )
        start = _ray_start_s(scan)
        if start is not None:
            seconds.setdefault("  of it: ray.init (the local Ray start)", []).append(start)
        flow = ["--scan", str(scan), "--input", str(shards), "--output", str(clean)]
        flow += ["--rule", "unknown=quarantine", "--on-shard-error", "skip"]
        record("filter_shards --dry-run", "filter_shards", *flow, "--dry-run")
        record("filter_shards", "filter_shards", *flow)
        record(
            "report", "report", "--scan", str(scan), "--output", str(report), "--filter-output", str(clean)
        )
    return seconds, rss


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="a small demo (smoke run)")
    ap.add_argument("--runs", type=int, default=3, help="runs of the scan, filter and report")
    a = ap.parse_args(argv)
    out_dir = results_dir(a.out, a.quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = (
        demo.DemoSize(scan_per_class=4, shard_size=8, train_per_class=8, epochs=1)
        if a.quick
        else demo.DemoSize()
    )
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="demo-jobs-") as tmp:
        seconds, rss = measure(Path(tmp), size, 1 if a.quick else a.runs)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = {
        k: {"median_s": round(statistics.median(v), 1), "min_s": round(min(v), 1), "max_s": round(max(v), 1)}
        | {"runs": len(v)}
        | ({"peak_rss_mb": round(statistics.median(rss[k]), 1)} if k in rss else {})
        for k, v in seconds.items()
        if v
    }
    result = {"measured": when, "cpus": os.cpu_count(), "load_before": load, "size": vars(size), "jobs": rows}
    lines = [
        "# How long each job takes at the demo's size",
        "",
        f"Measured {when} on {os.cpu_count()} cores, no GPU, by `benchmarks/demo_jobs.py` (1-minute load "
        f"average {load:.1f} just before the run). Sizes: `make demo`'s "
        f"(`DemoSize` {vars(size)}). Each job is a fresh `python jobs/<job>.py` process, as a user runs it; "
        "the scan starts its own local Ray. Wall seconds, the median of the runs with their range; peak RSS "
        "of the job's own process (`wait4`: not the Ray processes a job starts), the median of the runs.",
        "",
        "| job | median s | range s | runs | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {r['median_s']} | {r['min_s']}–{r['max_s']} | {r['runs']} | {r.get('peak_rss_mb', '')} |"
        for k, r in rows.items()
    ]
    write_results(out_dir, "demo_jobs", result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
