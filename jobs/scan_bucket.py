"""Scan WebDataset shards for AI-generated images -> Parquet (thin CLI over pipeline.scan.job).

    ray job submit -- python jobs/scan_bucket.py --input s3://bucket/shards/ --output s3://bucket/scan/ \
        --detector s3://bucket/detectors/tiny-mole [--config-file scan.json] [--resume] [--scan-date D] \
        [--incremental]    # nightly: carry the shards unchanged since the last scan, score the rest
    ... --detector ckpt/univfd,ckpt/rine,ckpt/mole --fusion soft_or_prob   # several detectors, one pass
    python jobs/scan_bucket.py --demo        # the README's `make demo`

Exit codes: 0 succeeded, 1 scan failed (run.json says why; includes the error budget: more than
--max-shard-error-rate of the shards or --max-sample-error-rate of the samples failed), 2 configuration error
(message names the field),
3/5/6/7 storage preflight: input/output not found / access denied / no credentials / cannot connect (README).
Under `ray job submit` the real exit code is the job's `driver_exit_code` (JobSubmissionClient.get_job_info).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python jobs/scan_bucket.py` from a checkout
    sys.path.insert(0, str(REPO))

from pipeline.logs import get_logger  # noqa: E402
from pipeline.scan.config import ScanConfig  # noqa: E402
from pipeline.settings import ConfigError, read_json_object  # noqa: E402

log = get_logger("jobs.scan_bucket")

# CLI flag -> ScanConfig field (flags override the --config-file's values; both validated together)
FLAGS: dict[str, tuple[type, str]] = {
    "input": (str, "s3://bucket/prefix/, a brace pattern or a local folder of .tar shards"),
    "output": (str, "output folder or s3:// prefix"),
    "detector": (
        str,
        "detector checkpoint dir (local or s3://); several in one scan: A,B,C or repeat the flag",
    ),
    "fusion": (
        str,
        "how several detectors' logits make the row's p_fake: mean_logit | max_logit | median_logit "
        "| lse_logit | mean_prob | soft_or_prob (default)",
    ),
    "scan_date": (
        str,
        "run/partition date YYYY-MM-DD (default: today UTC; with --resume: latest unfinished)",
    ),
    "run_id": (str, "run id recorded in every row (default: <scan_date>-<random>)"),
    "max_shards": (int, "scan only the first N shards"),
    "batch_size": (int, "images per detector call"),
    "num_actors": (int, "scorer actors"),
    "actor_num_cpus": (float, "CPUs per scorer actor (fractional)"),
    "actor_num_gpus": (float, "GPUs per scorer actor"),
    "read_num_cpus": (float, "CPUs per read+decode task"),
    "read_concurrency": (int, "max concurrent read+decode tasks"),
    "read_memory_mb": (
        int,
        "memory reserved per read+decode task (MB; it holds one shard: raise it for big shards "
        "or when read tasks are killed for memory)",
    ),
    "dtype": (str, "auto | float32 | float16 | bfloat16 (auto: bfloat16/float16 on GPU, float32 on CPU)"),
    "decode_on": (
        str,
        "cpu | gpu (gpu: eligible JPEGs decoded batched on the scorer's GPU; needs actor_num_gpus)",
    ),
    "torch_threads": (int, "torch threads per CPU scorer actor"),
    "ray_address": (str, "Ray address (default: RAY_ADDRESS, else a local Ray)"),
    "ray_num_cpus": (int, "CPUs of a locally started Ray"),
    "stall_timeout_s": (float, "fail when no shard completes for this many seconds"),
    "max_shard_error_rate": (
        float,
        "fail (exit 1) when more than this share of shards is unreadable (default 0.5)",
    ),
    "max_sample_error_rate": (
        float,
        "fail (exit 1) when more than this share of samples has an error status (default 0.25)",
    ),
    "chunk_rows": (int, "rows per block from the read/decode stage"),
    "max_pixels": (int, "images with more pixels get status too_large"),
    "resize_mode": (str, "center_crop | resize_crop (default: the detector's)"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", help="JSON file with ScanConfig fields")
    p.add_argument("--resume", action="store_true", default=None, help="continue an unfinished run")
    p.add_argument(
        "--incremental",
        action="store_true",
        default=None,
        help=ScanConfig.model_fields["incremental"].description,
    )
    p.add_argument("--demo", action="store_true", help="generate demo data, train a tiny detector, scan it")
    p.add_argument("--demo-dir", default="demo", help="where --demo keeps its data (default ./demo)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the JSON logs, Ray's progress bars and the workers' output on stderr (default: one "
        "progress line; the JSON logs go to _run/<scan_date>/log.jsonl)",
    )
    for name, (typ, help_) in FLAGS.items():
        many = {"action": "append"} if name == "detector" else {}  # --detector A --detector B == A,B
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=help_, **many)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> ScanConfig:
    data: dict[str, Any] = {}
    source = "command line"
    if args.config_file:
        path = Path(args.config_file)
        data = read_json_object(path, field="config_file")
        source = f"{path} + command line"
    for name in FLAGS:
        value = getattr(args, name)
        if isinstance(value, list):
            value = ",".join(value)
        if value is not None:
            data[name] = value
    if args.resume:
        data["resume"] = True
    if args.incremental:
        data["incremental"] = True
    return ScanConfig.parse(data, source=source)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.console import Console
    from pipeline.logs import RunLog

    # the JSON logs go to the run log (published as _run/<scan_date>/log.jsonl); stderr shows the console only
    with Console(args.verbose, "scan") as console, RunLog(tee=console.echo()) as runlog:
        runlog.attach(console.stderr_log, "driver-stderr.log")  # Ray's own driver output, kept beside the log
        return _main(args, console, runlog)


def _main(args: argparse.Namespace, console: Any, runlog: Any) -> int:
    if args.demo:
        from pipeline.engine.scan import RayScanExecutor
        from pipeline.scan.demo import run_demo

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
    from pipeline.preflight import Location, StorageError, check_storage

    try:
        cfg = build_config(args)
        check_storage([Location("input", cfg.input)], [Location("output", cfg.output)])
    except ConfigError as exc:
        runlog.discard()
        console.line(f"configuration error: {exc}")
        return 2
    except StorageError as exc:
        runlog.discard()
        console.line(f"storage error: {exc}")
        return exc.exit_code
    console.status(f"{cfg.input} -> {cfg.output}: starting Ray, loading the detector...")
    # torch and Ray load only now (seconds): the preflight above answers a storage mistake at once
    from pipeline.scan.job import ScanFailed, run_scan

    progress = console.shards("scan")
    try:
        from pipeline.engine.scan import RayScanExecutor  # the one Ray-aware part: shards are scanned on Ray

        run = run_scan(cfg, executor=RayScanExecutor(), on_shard=progress, announce=console.line)
    except ConfigError as exc:
        console.end_progress()
        console.line(f"configuration error: {exc}")
        return 2
    except (
        Exception
    ) as exc:  # ScanFailed (run.json says why) or an unexpected error: one line, details in the log
        console.end_progress()
        first = (str(exc).strip().splitlines() or [""])[0]
        if not isinstance(exc, ScanFailed):
            log.exception("scan_crashed")
            first = f"{type(exc).__name__}: {first}"
        console.line(f"scan failed: {first} (log: {runlog.publish()})")
        return 1
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
    return 0 if run["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
