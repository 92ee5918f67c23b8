"""Scan WebDataset shards for AI-generated images -> Parquet (thin CLI over pipeline.scan.job).

    ray job submit -- python jobs/scan_bucket.py --input s3://bucket/shards/ --output s3://bucket/scan/ \
        --detector s3://bucket/detectors/tiny-mole [--config-file scan.json] [--resume] [--scan-date D] \
        [--incremental]    # nightly: carry the shards unchanged since the last scan, score the rest
    ... --detector ckpt/univfd,ckpt/rine,ckpt/mole --fusion soft_or_prob   # several detectors, one pass
    python jobs/scan_bucket.py --demo        # the README's `make demo`

Every ScanConfig field is a flag (`--batch-size`, `--max-shard-error-rate`, ...): see --help.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.entry import job_main, with_console
from pipeline.cli.flags import JobParser, ModelFlags, absolute_paths, add_model_flags
from pipeline.exitcodes import ExitCode, help_epilog
from pipeline.logs import get_logger
from pipeline.scan.config import ScanConfig
from pipeline.settings import ConfigError, read_json_object

log = get_logger("jobs.scan_bucket")


def _parser() -> tuple[JobParser, ModelFlags]:
    p = JobParser(description=__doc__, epilog=help_epilog("scan_bucket"))
    p.add_argument("--config-file", help="JSON file with ScanConfig fields (flags given override its values)")
    p.add_argument("--demo", action="store_true", help="generate demo data, train a tiny detector, scan it")
    p.add_argument("--demo-dir", default="demo", help="where --demo keeps its data (default ./demo)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the JSON logs, Ray's progress bars and the workers' output on stderr (default: one "
        "progress line; the JSON logs go to _run/<scan_date>/log.jsonl)",
    )
    # several detectors: --detector A,B,C or --detector A --detector B
    flags = add_model_flags(
        p.add_argument_group("scan settings (ScanConfig)"), ScanConfig, repeat={"detector"}
    )
    return p, flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parser()[0].parse_args(argv)


def build_config(args: argparse.Namespace) -> ScanConfig:
    file: dict[str, Any] = {}
    source = "command line"
    if args.config_file:
        path = Path(args.config_file)
        file = read_json_object(path, field="--config-file")
        source = f"{path} + command line"
    flags = _parser()[1]
    data = {**file, **flags.given(args)}
    absolute_paths(data, ("input", "output", "detector"), lists=("detector",))
    return ScanConfig.parse(data, source=source, names=flags.named(args, file))


@job_main("scan")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return with_console("scan", args.verbose, lambda console, runlog: _main(args, console, runlog))


def _main(args: argparse.Namespace, console: Any, runlog: Any) -> int:
    if args.demo:
        from pipeline.cli.demo import run_demo
        from pipeline.engine.scan import RayScanExecutor

        console.status(
            f"demo in {args.demo_dir}/ (a few minutes the first time; later runs reuse what exists)"
        )
        code, text = run_demo(
            Path(args.demo_dir),
            executor=RayScanExecutor(),
            status=console.status,
            on_shard=console.shards("demo scan"),
        )
        console.end_progress()
        console.line(f"demo log: {runlog.publish()}")
        print(text)
        return code
    from pipeline.preflight import Location, check_storage

    # a flag, a config field or a storage location: one line through job_main, nothing started
    cfg = build_config(args)
    check_storage([Location("input", cfg.input)], [Location("output", cfg.output)])
    # torch and Ray load only now (seconds): the preflight above answers a storage mistake at once
    from pipeline.scan.job import ScanFailed, run_scan

    progress = console.shards("scan")
    try:
        from pipeline.engine.scan import RayScanExecutor  # the one Ray-aware part: shards are scanned on Ray

        run = run_scan(cfg, executor=RayScanExecutor(), on_shard=progress, announce=console.status)
    except ConfigError:  # found once the detector is read: one line through job_main
        raise
    # ScanFailed (run.json says why) or an unexpected error: one line, details in the log
    except Exception as exc:
        console.end_progress()
        first = (str(exc).strip().splitlines() or [""])[0]
        if not isinstance(exc, ScanFailed):
            log.exception("scan_crashed")
            first = f"{type(exc).__name__}: {first}"
        console.line(f"scan failed: {first} (log: {runlog.publish()})")
        return ExitCode.RUN_FAILED
    console.end_progress()
    totals = run.get("totals", {})
    counts = {k: v for k, v in (totals.get("counts") or {}).items() if v}
    inc = run.get("incremental")
    carried = (
        f" ({totals.get('shards_done', 0) - totals.get('shards_carried', 0)} scanned, "
        f"{totals.get('shards_carried', 0)} carried from {inc.get('source_scan_date')}, "
        f"{inc.get('removed', 0)} removed since)"
        if inc and inc.get("source_scan_date")
        else ""
    )
    console.line(
        f"scan {run['status']}: {totals.get('shards_done')} shards{carried}, {totals.get('rows')} rows "
        f"{counts}, {totals.get('n_fake')} flagged fake; log: {runlog.publish()}"
    )
    print(
        json.dumps(
            {
                "status": run["status"],
                "run_id": run["run_id"],
                "scan_date": run["scan_date"],
                "shards": totals.get("shards_done"),
                "shards_carried": totals.get("shards_carried", 0),
                "rows": totals.get("rows"),
                "counts": totals.get("counts"),
            }
        )
    )
    return ExitCode.OK if run["status"] == "succeeded" else ExitCode.RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
