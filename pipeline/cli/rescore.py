"""Re-score a scan from its stored features with a new linear detector: no backbone pass, no image decode.

    python jobs/rescore.py --scan s3://bucket/scan --detector ckpt/new-linear --output s3://bucket/rescore \
        [--scan-date D] [--engine ray [--ray-address ADDR] [--task-cpus 0.5]] [--resume]

The scan must have kept its features (`scan_bucket.py --features embedding|pre_proj`); the detector's heads
must read exactly those features (genscan linear, imported UnivFD or ClipBased-SID: same backbone weights,
feature kind and preprocessing). Writes `<output>/scan_date=D/` in the scan schema (+ markers and `_run/D/`:
config.json, detector.json, features.json, run.json) that filter_shards.py, report.py and docs/queries.md read
unchanged.

Every RescoreConfig field is a flag (see --help). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.entry import job_main, shard_map, with_console
from pipeline.cli.flags import JobParser, ModelFlags, absolute_paths, add_model_flags
from pipeline.exitcodes import ExitCode, OperatorError, help_epilog, one_line
from pipeline.features.config import RescoreConfig
from pipeline.logs import get_logger

log = get_logger("cli.rescore")


def _parser() -> tuple[JobParser, ModelFlags]:
    ap = JobParser(description=__doc__, epilog=help_epilog("rescore"))
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="JSON logs and Ray's output on stderr (default: one progress line; the JSON logs go to "
        "<output>/_run/<scan_date>/log.jsonl)",
    )
    flags = add_model_flags(
        ap.add_argument_group("re-score settings (RescoreConfig)"),
        RescoreConfig,
        names={"task_num_cpus": "task-cpus"},
    )
    return ap, flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parser()[0].parse_args(argv)


def build_config(args: argparse.Namespace) -> RescoreConfig:
    flags = _parser()[1]
    data = flags.given(args)
    absolute_paths(data, ("scan", "detector", "output"))
    return RescoreConfig.parse(data, source="command line", names=flags.named(args))


@job_main("rescore")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return with_console("rescore", args.verbose, lambda console, runlog: _main(args, console, runlog))


def _main(args: argparse.Namespace, console: Any, runlog: Any) -> int:
    from pipeline.preflight import Location, check_storage

    cfg = build_config(args)
    check_storage([Location("scan output", cfg.scan)], [Location("output", cfg.output)])
    from pipeline.features.rescore import RescoreFailed, run_rescore

    progress = console.shards("rescore")
    try:
        with shard_map(cfg.engine, cfg.ray_address, cfg.task_num_cpus) as map_fn:
            run = run_rescore(cfg, map_fn, on_shard=progress)
    # refused before any write: a detector that does not read the store, no store
    except OperatorError as exc:
        runlog.discard()
        console.line(one_line(exc, "rescore"))
        return exc.exit_code
    except RescoreFailed as exc:
        console.line(f"rescore failed: {exc} (log: {runlog.publish()})")
        return ExitCode.RUN_FAILED
    # an unexpected error (a Ray task's, a storage fault): one line, details in the log
    except Exception as exc:
        log.exception("rescore_crashed")
        first = (str(exc).strip().splitlines() or [""])[0]
        console.line(f"rescore failed: {type(exc).__name__}: {first} (log: {runlog.publish()})")
        return ExitCode.RUN_FAILED
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
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
