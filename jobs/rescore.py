"""Re-score a scan from its stored features with a new linear detector: no backbone pass, no image decode.

    python jobs/rescore.py --scan s3://bucket/scan --detector ckpt/new-linear --output s3://bucket/rescore \
        [--scan-date D] [--engine ray [--ray-address ADDR] [--task-cpus 0.5]] [--resume]

The scan must have kept its features (`scan_bucket.py --features embedding|pre_proj`); the detector's heads must
read exactly those features (genscan linear, imported UnivFD or ClipBased-SID: same backbone weights, feature
kind and preprocessing). Writes `<output>/scan_date=D/` in the scan schema (+ markers and `_run/D/`: config.json,
detector.json, features.json, run.json) that filter_shards.py, report.py and docs/queries.md read unchanged.

Exit codes (README "Exit codes"): 0 succeeded; 1 failed (error budget: shards whose features are missing,
truncated or from another backbone became shard_error rows; run.json says why); 2 configuration error (a detector
that does not read the stored features: its backbone, feature kind or preprocessing differ, or it is MoLE /
RINE; output already there without --resume); 3 not found (no scan, partition, markers or stored features);
5/6/7 storage preflight. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python jobs/rescore.py` from a checkout
    sys.path.insert(0, str(REPO))

from pipeline.logs import get_logger  # noqa: E402
from pipeline.settings import ConfigError  # noqa: E402

log = get_logger("jobs.rescore")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", required=True, help="scan output with stored features (_features/)")
    ap.add_argument("--scan-date", default=None, help="YYYY-MM-DD; default: the latest partition")
    ap.add_argument(
        "--detector", required=True, help="checkpoint dir of a linear / UnivFD / ClipBased detector"
    )
    ap.add_argument("--output", required=True, help="where the re-scored scan partition is written")
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--resume", action="store_true", help="continue an unfinished re-score of the same date")
    ap.add_argument("--engine", default="local", help="local | ray (one CPU Ray task per shard)")
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--task-cpus", type=float, default=None, help="CPUs per Ray task (default 0.5)")
    ap.add_argument("--max-shard-error-rate", type=float, default=None)
    ap.add_argument("--max-sample-error-rate", type=float, default=None)
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="JSON logs and Ray's output on stderr (default: one progress line; the JSON logs go to "
        "<output>/_run/<scan_date>/log.jsonl)",
    )
    return ap.parse_args(argv)


def build_config(args: argparse.Namespace):  # -> RescoreConfig (imported lazily: torch)
    from pipeline.features.rescore import RescoreConfig

    data = {
        "scan": args.scan,
        "scan_date": args.scan_date,
        "detector": args.detector,
        "output": args.output,
        "run_id": args.run_id,
        "resume": bool(args.resume),
        "engine": args.engine,
        "ray_address": args.ray_address,
        "task_num_cpus": args.task_cpus,
        "max_shard_error_rate": args.max_shard_error_rate,
        "max_sample_error_rate": args.max_sample_error_rate,
    }
    return RescoreConfig.parse({k: v for k, v in data.items() if v is not None}, source="command line")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.console import Console
    from pipeline.logs import RunLog

    # the JSON logs go to the run log (published as <output>/_run/<D>/log.jsonl); stderr shows the console only
    with Console(args.verbose, "rescore") as console, RunLog(tee=console.echo()) as runlog:
        runlog.attach(console.stderr_log, "driver-stderr.log")
        return _main(args, console, runlog)


def _main(args: argparse.Namespace, console: Any, runlog: Any) -> int:
    from pipeline.output import ScanOutputError
    from pipeline.preflight import Location, StorageError, check_storage

    try:
        cfg = build_config(args)
        check_storage([Location("scan output", cfg.scan)], [Location("output", cfg.output)])
    except ConfigError as exc:
        runlog.discard()
        console.line(f"configuration error: {exc}")
        return 2
    except StorageError as exc:
        runlog.discard()
        console.line(f"storage error: {exc}")
        return exc.exit_code
    from pipeline.features.rescore import RescoreFailed, run_rescore
    from pipeline.runner import MapFn, local_map

    progress = console.shards("rescore")
    try:
        with contextlib.ExitStack() as stack:
            map_fn: MapFn = local_map
            if cfg.engine == "ray":  # the one Ray-aware part: one CPU task per shard
                from pipeline.engine import cluster
                from pipeline.engine.filter import ray_map

                stack.enter_context(cluster.session(cfg.ray_address))
                map_fn = functools.partial(ray_map, num_cpus=cfg.task_num_cpus)
            run = run_rescore(cfg, map_fn, on_shard=progress)
    except ConfigError as exc:
        runlog.discard()
        console.line(f"configuration error: {exc}")
        return 2
    except ScanOutputError as exc:
        runlog.discard()
        console.line(f"not found: {exc}")
        return 3
    except RescoreFailed as exc:
        console.line(f"rescore failed: {exc} (log: {runlog.publish()})")
        return 1
    except (
        Exception
    ) as exc:  # an unexpected error (a Ray task's, a storage fault): one line, details in the log
        log.exception("rescore_crashed")
        first = (str(exc).strip().splitlines() or [""])[0]
        console.line(f"rescore failed: {type(exc).__name__}: {first} (log: {runlog.publish()})")
        return 1
    finally:
        console.end_progress()
    totals = run["totals"]
    counts = {k: v for k, v in totals["counts"].items() if v}
    console.line(
        f"rescore {run['status']}: {totals['shards_done']} shards, {totals['rows']} rows {counts}, "
        f"{totals['n_fake']} flagged fake; log: {runlog.publish()}"
    )
    summary = {k: run[k] for k in ("status", "run_id", "scan_date", "detector_id", "rows_per_s")}
    print(json.dumps({**summary, "rows": totals["rows"], "counts": totals["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
