"""Driver cost per scanned row: the scan's job driver must not be a ceiling for the cluster.

    .venv/bin/python benchmarks/driver.py [--shards 48 --per-shard 500] [--out results]

Real Ray (a local head started here), the real scan code (`pipeline.scan.job.run_scan` with
`pipeline.engine.scan.RayScanExecutor`: read+decode tasks -> scorer actors -> writer actors), and a MODEL-FREE
scorer (`NullScorer`: the real `score_batch` over a constant predictor) so rows arrive as fast as this machine
can read and decode them. Measured: the driver process's CPU time (user+sys, all its threads: Ray's streaming
executor included) during `run_scan`, per scanned row.

Baseline in the same run: the old design, where every scored row goes to the driver, which collects each shard
and writes its Parquet + marker (the scan's own Ray Data plan pulled to the driver + the same `ShardSink`, on
the driver).

Prints the headline figure LAST as one JSON line: {"driver_cpu_us_per_row": ...}. Writes
results/driver.json|md.

    .venv/bin/python benchmarks/driver.py --sweep [--repeats 3] [--ray-sweep 100,1000]

The shard-count sweep: the driver's work PER SHARD must not grow with the shards already done. (1) The scan
driver's per-shard path Ray-free (`pipeline.scan.job._scan`: the run contract `runner.run_shards`, the error
budget guard, running totals, the progress line and the shard log) over 100 -> 100,000 synthetic shards, each
size in a fresh process: CPU per shard and peak RSS; the previous guard (re-summing every summary so far) as
the baseline at the small sizes. (2) Earlier attempts' markers summed on the S3 server: one GET per marker
(before) vs batched concurrent reads (`completion.aggregate`). (3) Optionally the real Ray scan at equal rows
over a shard-count range (`--ray-sweep`): driver handling CPU per shard. Writes its own section of
results/driver.md and the `sweep` key of results/driver.json (the per-row figures above are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's pipeline package and benchmarks._common
from benchmarks._common import parser  # noqa: E402


class _ConstPredictor:
    """A predictor without a model: the same output contract as pipeline.models.Predictor."""

    def __init__(self, n_labels: int, labels: list[str]) -> None:
        self.n_labels, self.labels = n_labels, labels

    def predict(self, pixels: np.ndarray) -> dict[str, Any]:
        n = len(pixels)
        p = (pixels.reshape(n, -1)[:, :64].mean(axis=1) / 255.0).astype(np.float32)
        scores = np.full((n, self.n_labels), 1.0 / self.n_labels, np.float32)
        return {
            "p_fake": p,
            "logit": np.log(p + 1e-6) - np.log1p(-p + 1e-6),
            "is_fake": p >= 0.5,
            "top_generator": [self.labels[0]] * n,
            "generator_scores": scores,
        }


class NullScorer:
    """The scorer stage without a model (reads only the checkpoint's meta, for its labels and id)."""

    def __init__(self, detector: str, **_: Any) -> None:
        from pipeline.models import read_meta

        meta = read_meta(detector)
        self.labels = ["real", *meta.generators]
        self.detector_id, self.threshold = str(meta.detector_id), float(meta.threshold)
        self.predictor = _ConstPredictor(len(self.labels), self.labels)
        self.ready_at = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.scan.score import score_batch, tag_scored_by

        out = score_batch(self.predictor, batch, n_labels=len(self.labels))
        out["_actor_ready"] = np.full(len(out["status"]), self.ready_at, np.float64)
        tag_scored_by(out, self.detector_id, self.threshold, [self.detector_id])
        return out


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_data(root: Path, shards: int, per_shard: int) -> tuple[Path, Path]:
    from pipeline.models import create_detector, save_detector
    from tests.support.shards import write_shards

    data, det = root / "shards", root / "detector"
    write_shards(str(data), shards, per_shard, size=(24, 24), fmt="jpg")
    save_detector(create_detector("tiny-mole", pretrained=None), str(det))
    return data, det


def config(data: Path, det: Path, out: Path, args: argparse.Namespace) -> Any:
    from pipeline.scan.config import ScanConfig

    return ScanConfig(
        input=str(data),
        output=str(out),
        detector=str(det),
        scan_date="2026-01-01",
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        num_actors=args.actors,
        actor_num_cpus=0.25,
        read_num_cpus=0.5,
        torch_threads=1,
    )


def scan_worker_writes(cfg: Any) -> dict[str, Any]:
    """The product: run_scan with the Ray executor (writers on the workers)."""
    from pipeline.engine.scan import RayScanExecutor
    from pipeline.scan.job import run_scan

    c0, m0, t0 = _cpu_s(), time.thread_time(), time.perf_counter()
    run = run_scan(cfg, executor=RayScanExecutor(scorer=NullScorer))
    cpu, main, wall = _cpu_s() - c0, time.thread_time() - m0, time.perf_counter() - t0
    rows = int(run["totals"]["rows"])
    assert run["status"] == "succeeded", run
    timing = run["attempts"][-1]["timing"]
    return {
        **_figures(
            rows, cpu, main, wall, float(timing["driver_stream_cpu_s"]), float(timing["driver_handle_cpu_s"])
        ),
        "_run": run,
    }


def scan_driver_writes(cfg: Any) -> dict[str, Any]:
    """The old design, same plan and same writer code, but every row comes to the driver, which writes."""
    from pipeline.engine.scan import build_dataset
    from pipeline.models import read_meta
    from pipeline.scan.execute import ScanWork
    from pipeline.scan.job import list_input_objects
    from pipeline.scan.rows import RunContext
    from pipeline.scan.write import ShardSink

    meta = read_meta(cfg.detector)
    ctx = RunContext(
        run_id="bench",
        source=cfg.input,
        detector_id=str(meta.detector_id),
        labels=["real", *meta.generators],
    )
    shards = [(u, s) for u, s, _ in list_input_objects(cfg)]
    c0, m0, t0 = _cpu_s(), time.thread_time(), time.perf_counter()
    sink = ShardSink(ctx, cfg.output, "2026-01-01")
    rows = 0
    # the scan's own Ray Data plan, its scored batches pulled to the driver instead of the writer actors
    work = ScanWork(cfg, ctx, "2026-01-01", inputs=[(int(meta.config.image_size), "center_crop")])
    ds = build_dataset(shards, work, NullScorer)
    stream = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
    s0, handle = time.thread_time(), 0.0
    for batch in stream:
        h0 = time.thread_time()
        rows += sum(int(st["rows"]) for st in sink.add(batch))
        handle += time.thread_time() - h0
    stream_cpu = time.thread_time() - s0
    cpu, main, wall = _cpu_s() - c0, time.thread_time() - m0, time.perf_counter() - t0
    return _figures(rows, cpu, main, wall, stream_cpu, handle)


def _figures(rows: int, cpu: float, main: float, wall: float, stream: float, handle: float) -> dict[str, Any]:
    return {
        "rows": rows,
        "wall_s": round(wall, 2),
        "rows_per_s_wall": round(rows / wall, 1),
        "driver_handle_cpu_s": round(handle, 4),
        "driver_handle_cpu_us_per_row": round(handle / rows * 1e6, 3),
        "driver_stream_cpu_s": round(stream, 4),
        "driver_stream_cpu_us_per_row": round(stream / rows * 1e6, 3),
        "driver_main_thread_cpu_s": round(main, 3),
        "driver_main_thread_cpu_us_per_row": round(main / rows * 1e6, 3),
        "driver_process_cpu_s": round(cpu, 3),
        "driver_process_cpu_us_per_row": round(cpu / rows * 1e6, 3),
        "driver_process_cpu_cores": round(cpu / wall, 3),
    }


SWEEP_HEADING = "## Driver work per shard: shard-count sweep"


def _summary(i: int) -> dict[str, Any]:
    """A shard summary as a writer sends it (same keys and sizes as a real marker); every 50th shard
    failed."""
    bad = i % 50 == 0
    return {
        "shard": f"shard-{i:07d}",
        "shard_url": f"s3://bucket/corpus/shard-{i:07d}.tar",
        "rows": 10,
        "samples": 9 if bad else 10,
        "counts": {
            "ok": 9,
            "decode_error": 1 - int(bad),
            "no_image": 0,
            "too_large": 0,
            "shard_error": int(bad),
        },
        "n_fake": 3,
        "bytes": 123456,
        "read_s": 0.01,
        "decode_s": 0.02,
        "infer_s": 0.05,
        "write_s": 0.003,
        "run_id": "bench",
        "detector_id": "tiny-mole@abc",
        "identity": f"etag:{i:032x};size:123456",
        "writer_node": "node-1",
        "node_id": "node-1",
        "finished_at": "2026-01-01T00:00:00+00:00",
    }


def contract_child(n: int, old_guard: bool) -> dict[str, Any]:
    """One size of the Ray-free sweep, in this (fresh) process: the scan driver's per-shard path over n
    shards."""
    import io
    import json as _json

    from pipeline.console import ShardProgress
    from pipeline.logs import RunLog
    from pipeline.output import RunPaths
    from pipeline.runner import ErrorBudget, ErrorTally
    from pipeline.scan.completion import Totals
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.execute import ScanWork
    from pipeline.scan.job import _scan, run_errors
    from pipeline.scan.rows import RunContext

    tmp = Path(tempfile.mkdtemp(prefix="genscan-sweep-"))
    cfg = ScanConfig(input=str(tmp / "in"), output=str(tmp / "out"), detector=str(tmp / "det"))
    paths = RunPaths(cfg.output, "2026-01-01")
    ctx = RunContext(run_id="bench", source=cfg.input, detector_id="d@0", labels=["real"])
    # _scan reads the stall timeout from the run's work; the executor below reads none of it
    work = ScanWork(cfg, ctx, "2026-01-01", inputs=[(224, "center_crop")])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the listing: the run holds it too
    ids = [f"shard-{i:07d}" for i in range(n)]
    todo = [(f"s3://bucket/corpus/{s}.tar", s) for s in ids]
    budget = ErrorBudget(0.5, 0.25)

    def executor(todo_: list[tuple[str, str]], work: Any) -> Any:
        for i in range(len(todo_)):  # as the Ray executor delivers them: a JSON summary per shard
            yield ids[i], _json.loads(_json.dumps(_summary(i)))

    if old_guard:  # the guard before: every call re-sums every summary received so far
        kept: list[dict[str, Any]] = []

        def check(p: Any) -> None:
            kept.append(p.last[1])
            seen = ErrorTally()
            for st in kept:
                seen.add(run_errors(st))
            if seen.failed_shards > budget.max_shard_error_rate * n:
                raise RuntimeError("over budget")

    else:
        check = budget.guard(n, ErrorTally(), run_errors)
    bar = ShardProgress(io.StringIO(), "scan", "rows")
    totals = Totals()
    marks: list[float] = []  # process CPU at the first and at the latest shard (the per-shard, marginal cost)

    def on_shard(shard: str, summary: dict[str, Any], p: Any) -> None:
        bar(shard, summary, p)
        if marks:
            marks[1:] = [time.process_time()]
        else:
            marks.append(time.process_time())

    with RunLog(tee=None):  # the shard log lines go to the run log's spool file, as in the job
        c0 = time.process_time()
        progress = _scan(paths, ids, set(), todo, executor, work, totals, on_shard=on_shard, check=check)
        cpu = time.process_time() - c0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shutil.rmtree(tmp, ignore_errors=True)
    assert progress.done == n and totals.as_dict()["shards_done"] == n
    return {
        "shards": n,
        "old_guard": old_guard,
        "cpu_s": round(cpu, 4),
        # from the first shard's progress call to the last one's: n-1 whole per-shard cycles, no per-run setup
        "cpu_us_per_shard": round((marks[-1] - marks[0]) / (n - 1) * 1e6, 2),
        "cpu_us_per_shard_with_setup": round(cpu / n * 1e6, 2),
        "peak_rss_growth_mb": round((rss1 - rss0) / 1024, 1),
        "peak_rss_mb": round(rss1 / 1024, 1),
    }


def _child(args: list[str]) -> dict[str, Any]:
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True, cwd=REPO
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median_range(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"median": v[len(v) // 2], "min": v[0], "max": v[-1]}


def marker_reads(n: int, latency_ms: float) -> dict[str, Any]:
    """Sum n markers on the moto S3 server: one GET at a time (before) vs `completion.aggregate` (batched).
    Requests go through a threaded proxy that delays every response by `latency_ms` (an object store's
    per-request latency: moto on 127.0.0.1 answers in about a millisecond)."""
    from pipeline.output import RunPaths, json_bytes, read_json
    from pipeline.scan.completion import aggregate
    from tests.support.faultproxy import FaultPlan, fault_proxy
    from tests.support.s3 import moto_s3_server
    from tests.support.shards import make_bucket

    slow = FaultPlan(
        rate=1.0, kinds=("slow",), slow_s=latency_ms / 1e3, max_faults=10**9, methods=("GET", "HEAD")
    )
    with moto_s3_server() as env:
        import s3fs

        bucket = make_bucket("sweep")
        paths = RunPaths(f"{bucket}/out", "2026-01-01")
        ids = [f"shard-{i:07d}" for i in range(n)]
        s3fs.S3FileSystem().pipe(
            {paths.marker(s).removeprefix("s3://"): json_bytes(_summary(i)) for i, s in enumerate(ids)}
        )
        proxy_cm = fault_proxy(env["AWS_ENDPOINT_URL"], slow)
        proxy = proxy_cm.__enter__()
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        s3fs.S3FileSystem.clear_instance_cache()
        t0 = time.perf_counter()
        serial = sum(int((read_json(paths.marker(s)) or {}).get("rows", 0)) for s in ids)
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = aggregate(paths, ids).as_dict()["rows"]
        t_batched = time.perf_counter() - t0
        os.environ["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"]
        proxy_cm.__exit__(None, None, None)
    assert serial == batched == 10 * n
    return {
        "markers": n,
        "latency_ms": latency_ms,
        "serial_s": round(t_serial, 3),
        "batched_s": round(t_batched, 3),
        "serial_ms_per_marker": round(t_serial / n * 1e3, 3),
        "batched_ms_per_marker": round(t_batched / n * 1e3, 3),
        "speedup": round(t_serial / t_batched, 1),
    }


def ray_sweep(sizes: list[int], rows: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The real Ray scan (model-free scorer) at equal rows over shard counts: driver handling CPU per
    shard."""
    import ray

    out = []
    tmp = Path(tempfile.mkdtemp(prefix="genscan-rsweep-"))
    try:
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=tempfile.mkdtemp(prefix="rd", dir="/tmp"),
        )
        for n in sizes:
            data, det = make_data(tmp / f"d{n}", n, max(1, rows // n))
            cfg = config(data, det, tmp / f"out{n}", args)
            if not out:
                scan_worker_writes(cfg.model_copy(update={"max_shards": 2, "output": str(tmp / "warm")}))
            f = scan_worker_writes(cfg)
            run = f.pop("_run")
            handle = float(run["attempts"][-1]["timing"]["driver_handle_cpu_s"])
            out.append(
                {
                    "shards": n,
                    "rows": f["rows"],
                    "wall_s": f["wall_s"],
                    "driver_handle_cpu_us_per_shard": round(handle / n * 1e6, 1),
                    "driver_main_thread_cpu_ms_per_shard": round(f["driver_main_thread_cpu_s"] / n * 1e3, 3),
                }
            )
            shutil.rmtree(tmp / f"d{n}", ignore_errors=True)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def sweep(args: argparse.Namespace) -> int:
    sizes = [100, 1_000, 10_000, 100_000]
    contract = []
    for n in sizes:
        runs = [_child(["--contract-child", str(n)]) for _ in range(args.repeats)]
        contract.append(
            {
                "shards": n,
                "cpu_us_per_shard": _median_range([r["cpu_us_per_shard"] for r in runs]),
                "cpu_us_per_shard_with_setup": _median_range(
                    [r["cpu_us_per_shard_with_setup"] for r in runs]
                ),
                "peak_rss_growth_mb": _median_range([r["peak_rss_growth_mb"] for r in runs]),
                "runs": runs,
            }
        )
    old = []
    for n in (100, 1_000, 5_000):
        runs = [_child(["--contract-child", str(n), "--old-guard"]) for _ in range(args.repeats)]
        old.append({"shards": n, "cpu_us_per_shard": _median_range([r["cpu_us_per_shard"] for r in runs])})
    markers = [marker_reads(args.markers, args.marker_latency_ms) for _ in range(args.repeats)]
    ray_sizes = [int(x) for x in args.ray_sweep.split(",")] if args.ray_sweep else []
    rays = ray_sweep(ray_sizes, args.ray_rows, args) if ray_sizes else []
    per = [c["cpu_us_per_shard"]["median"] for c in contract]
    result = {
        "what": "scan driver CPU and peak RSS per shard over shard counts (Ray-free run contract), marker "
        "reads",
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "repeats": args.repeats,
        "contract": contract,
        "contract_flatness_max_over_min": round(max(per) / min(per), 2),
        "old_guard": old,
        "marker_reads": {
            "runs": markers,
            "serial_ms_per_marker": _median_range([m["serial_ms_per_marker"] for m in markers]),
            "batched_ms_per_marker": _median_range([m["batched_ms_per_marker"] for m in markers]),
        },
        "ray": rays,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    j = out / "driver.json"
    prev = json.loads(j.read_text()) if j.exists() else {}
    prev["sweep"] = result
    j.write_text(json.dumps(prev, indent=2) + "\n")
    big = contract[-1]

    def mr(d: dict[str, float], unit: str = "") -> str:
        return f"**{d['median']}**{unit} ({d['min']}–{d['max']})"

    lines = [
        SWEEP_HEADING,
        "",
        f"Command: `.venv/bin/python benchmarks/driver.py --sweep --repeats {args.repeats} --markers "
        f"{args.markers}"
        + (f" --ray-sweep {args.ray_sweep} --ray-rows {args.ray_rows}" if args.ray_sweep else "")
        + f"` — {os.cpu_count()} shared cores, load average {os.getloadavg()[0]:.1f}; median of "
        f"{args.repeats} runs (range in brackets), each size in a fresh process.",
        "",
        "**Run contract, Ray-free**: the scan driver's real per-shard path (`pipeline.scan.job._scan`: "
        "`runner.run_shards`, the error-budget guard, running totals, the progress line, the shard log line "
        "to a file) fed synthetic shard summaries (same keys as a marker, JSON-decoded as the Ray executor "
        "does). **driver CPU / shard** = process CPU from the first shard's progress call to the last one's, "
        "per shard (the per-shard cost: what must not grow); **incl. per-run setup** = the whole `_scan` "
        "call / shards (adds the fixed cost of a run — watchdog thread, first progress bar, the final marker "
        "listing — which only amortises). RSS = growth of the process's peak RSS from before the listing "
        "(the ids and urls of the shards) to the end.",
        "",
        "| shards | driver CPU µs / shard | incl. per-run setup, µs / shard | peak RSS growth MB |",
        "|---|---|---|---|",
        *[
            f"| {c['shards']:,} | {mr(c['cpu_us_per_shard'])} | {mr(c['cpu_us_per_shard_with_setup'])} | "
            f"{mr(c['peak_rss_growth_mb'])} |"
            for c in contract
        ],
        "",
        f"CPU per shard, largest / smallest median across 100 → 100,000 shards: "
        f"**{result['contract_flatness_max_over_min']}×** (target ≤ 1.5×). Peak RSS per 100,000 shards: "
        f"**{big['peak_rss_growth_mb']['median']} MB** (the listing's ids and urls, the progress's completed "
        "set and the allocator's high-water mark; no summary is kept).",
        "",
        "Before (the guard re-summed every summary received so far on every shard, same path otherwise):",
        "",
        "| shards | driver CPU µs / shard |",
        "|---|---|",
        *[f"| {c['shards']:,} | {mr(c['cpu_us_per_shard'])} |" for c in old],
        "",
        f"**Earlier attempts' markers** ({args.markers:,} on the moto S3 server, each request delayed "
        f"{args.marker_latency_ms:g} ms by a threaded proxy — an object store's latency; summed as a resumed "
        "run does at its start): one request at a time (`read_json` per marker, as before) "
        f"{mr(result['marker_reads']['serial_ms_per_marker'], ' ms')} per marker, batched concurrent reads "
        f"(`completion.aggregate` → `storage.read_many`: s3fs `cat` of a list) "
        f"{mr(result['marker_reads']['batched_ms_per_marker'], ' ms')} per marker. The run now reads them "
        "once (at the start) and adds this attempt's shards to running totals; before, it read them again at "
        "the end.",
        "",
    ]
    if rays:
        lines += [
            f"**Real Ray scan at equal rows** ({args.ray_rows} rows, model-free scorer, one run each):",
            "",
            "| shards | rows | driver handling µs / shard | driver main thread ms / shard | wall s |",
            "|---|---|---|---|---|",
            *[
                f"| {r['shards']} | {r['rows']} | {r['driver_handle_cpu_us_per_shard']} | "
                f"{r['driver_main_thread_cpu_ms_per_shard']} | {r['wall_s']} |"
                for r in rays
            ],
            "",
        ]
    _write_section(out / "driver.md", SWEEP_HEADING, "\n".join(lines))
    print(json.dumps({"contract_flatness_max_over_min": result["contract_flatness_max_over_min"]}))
    return 0


def _write_section(md: Path, heading: str, text: str) -> None:
    """Replace (or append) the section that starts at `heading` in a results file, keeping the rest."""
    body = md.read_text() if md.exists() else ""
    if heading in body:
        body = body[: body.index(heading)].rstrip("\n") + "\n\n"
    elif body:
        body = body.rstrip("\n") + "\n\n"
    md.write_text(body + text)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--contract-child":
        print(json.dumps(contract_child(int(sys.argv[2]), "--old-guard" in sys.argv)))
        return 0
    ap = parser(__doc__)
    ap.add_argument("--shards", type=int, default=48)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk-rows", type=int, default=256)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "results"), help="folder for driver.json / driver.md")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="the shard-count sweep instead (see above)")
    ap.add_argument("--repeats", type=int, default=3, help="--sweep: runs per size")
    ap.add_argument("--markers", type=int, default=1000, help="--sweep: markers on the S3 server")
    ap.add_argument(
        "--marker-latency-ms", type=float, default=20.0, help="--sweep: per-request delay (proxy)"
    )
    ap.add_argument("--ray-sweep", default="", help="--sweep: shard counts of a real Ray scan, e.g. 100,1000")
    ap.add_argument("--ray-rows", type=int, default=6000, help="--sweep: rows of each --ray-sweep scan")
    args = ap.parse_args()
    if args.sweep:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        return sweep(args)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="genscan-driver-"))
    os.environ.setdefault("GENSCAN_CACHE", str(tmp / "cache"))
    import open_clip  # noqa: F401 - imported once before measuring (the scan's provenance imports them)
    import torch  # noqa: F401

    import pipeline.models  # noqa: F401

    load_before = os.getloadavg()
    try:
        data, det = make_data(tmp, args.shards, args.per_shard)
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=tempfile.mkdtemp(prefix="rd", dir="/tmp"),
        )
        # warm-up (not measured): Ray's worker processes, imports and actor start-up for both designs
        warm = config(data, det, tmp / "out-warm", args).model_copy(update={"max_shards": 2})
        scan_worker_writes(warm)
        new = scan_worker_writes(config(data, det, tmp / "out-new", args))
        new.pop("_run")
        old = None if args.skip_baseline else scan_driver_writes(config(data, det, tmp / "out-old", args))
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    def ratio(key: str, digits: int) -> float | None:
        """old / new of one per-row figure (None when the old design was not run: --skip-baseline)."""
        return round(old[key] / new[key], digits) if old else None

    result = {
        "what": "driver CPU (user+sys, all threads of the job driver) per scanned row, model-free scorer",
        "rows": new["rows"],
        "shards": args.shards,
        "per_shard": args.per_shard,
        "batch_size": args.batch_size,
        "chunk_rows": args.chunk_rows,
        "actors": args.actors,
        "cpus": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "python": platform.python_version(),
        "ray": ray.__version__,
        "writers_on_workers": new,
        "driver_writes_baseline": old,
        "ratio_main_thread_old_over_new": ratio("driver_main_thread_cpu_us_per_row", 1),
        "ratio_process_old_over_new": ratio("driver_process_cpu_us_per_row", 2),
        "driver_process_cpu_us_per_row": new["driver_process_cpu_us_per_row"],
        "ratio_stream_old_over_new": ratio("driver_stream_cpu_us_per_row", 1),
        "ratio_handle_old_over_new": ratio("driver_handle_cpu_us_per_row", 1),
        "driver_stream_cpu_us_per_row": new["driver_stream_cpu_us_per_row"],
        "driver_cpu_us_per_row": new["driver_handle_cpu_us_per_row"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "driver.json").write_text(json.dumps(result, indent=2) + "\n")

    def row(name: str, f: dict[str, Any]) -> str:
        return (
            f"| {name} | {f['rows']} | **{f['driver_handle_cpu_us_per_row']}** | "
            f"{f['driver_stream_cpu_us_per_row']} | {f['driver_main_thread_cpu_us_per_row']} | "
            f"{f['driver_process_cpu_us_per_row']} | {f['driver_process_cpu_cores']} | {f['wall_s']} |\n"
        )

    (out / "driver.md").write_text(
        "# Scan driver cost per row (benchmarks/driver.py)\n\n"
        f"Command: `.venv/bin/python benchmarks/driver.py --shards {args.shards} --per-shard "
        f"{args.per_shard}` — "
        "real local Ray, real scan code (`run_scan` + `RayScanExecutor`), model-free scorer (the real "
        "`score_batch` over a constant predictor), 24×24 JPEGs, one run after a small warm-up scan.\n\n"
        f"Machine: {os.cpu_count()} cores, shared; load average before {load_before[0]:.1f}, after "
        f"{load_after[0]:.1f} (other engineers' jobs). Wall times are inflated by the load.\n\n"
        "Driver figures (CPU, not wall): **handling** = CPU of the driver's main thread spent on what the "
        "plan delivers (per batch and per shard: for the old design the collecting, Arrow table, Parquet and "
        "writes; for this one a summary row per batch and the per-shard bookkeeping) — the work that grows "
        "with rows, the headline; **streaming** = the same thread over the whole stream, i.e. handling plus "
        "Ray Data's consumer loop (`get_output_blocking` wakes every ~10 ms: per second, not per row); "
        "**run_scan** = the same thread over the whole `run_scan` (plus listing, run files, plan start: "
        "fixed per run); **process** = user+sys of the whole driver process, all threads, which also holds "
        "Ray Data's streaming executor and Ray's core-worker threads — a fraction of a core for as long as "
        "the dataset runs (PLATFORM.md: 5–13 % of a core, independent of the row rate), so on this slow "
        "machine it dominates per row and says little about a fast cluster.\n\n"
        "| design | rows | handling µs / row | streaming µs / row | run_scan main thread µs / row "
        "| process µs / row | process cores | wall s |\n|---|---|---|---|---|---|---|---|\n"
        + row("writers on the workers (this design)", new)
        + (row("driver writes every row (old design, same plan and writer code)", old) if old else "")
        + (
            f"\nRatios old / new: handling {result['ratio_handle_old_over_new']}×, streaming "
            f"{result['ratio_stream_old_over_new']}×, run_scan main thread "
            f"{result['ratio_main_thread_old_over_new']}×, process {result['ratio_process_old_over_new']}×.\n"
            if old
            else ""
        )
        + "\nReading: with writers on the workers the driver handles one small summary row per scored batch "
        "and one summary per shard, so its handling cost is per batch, not per row (the ≤ 1 µs/row target is "
        "for this figure). The rest of the driver's CPU is Ray Data's consumer loop and streaming executor, "
        "paid per second of streaming and per block; on this slow, loaded machine (a few hundred rows/s) it "
        "dominates the process figure in BOTH designs, which therefore does not reach 1 µs/row here and is "
        "not a per-row cost.\n"
    )
    print(json.dumps({"driver_cpu_us_per_row": result["driver_cpu_us_per_row"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
