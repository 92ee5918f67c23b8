"""HTML report over a scan dataset: report.html + PNG plots + thumbnail galleries (thumbs/) + summary.json in
one folder (local or s3://).

    python jobs/report.py --scan out/scan --output out/report [--scan-date YYYY-MM-DD] \
        [--filter-output data/clean] [--gallery-size 8] [--top-n 25] [--seed 0]

Every ReportConfig field is a flag (see --help).
"""

from __future__ import annotations

import json
import sys

from pipeline.cli.entry import job_main
from pipeline.cli.flags import JobParser, add_model_flags
from pipeline.exitcodes import ExitCode, help_epilog
from pipeline.preflight import Location, check_storage
from pipeline.report.build import ReportConfig, build_report


@job_main("report", quiet=True)
def main(argv: list[str] | None = None) -> int:
    ap = JobParser(description=__doc__, epilog=help_epilog("report"), log_flag=True)
    flags = add_model_flags(ap, ReportConfig)
    args = ap.parse_args(argv)
    try:
        cfg = ReportConfig.parse(flags.given(args), source="command line", names=flags.named(args))
        reads = [Location("scan output", cfg.scan)]
        if cfg.filter_output:
            reads.append(Location("filter output", cfg.filter_output))
        check_storage(reads, [Location("output", cfg.output)])
        summary = build_report(cfg)
    except FileNotFoundError as exc:  # a scan or filter output that vanished or lacks what the report reads
        print(f"refused: {exc}", file=sys.stderr)
        return ExitCode.NOT_FOUND
    print(
        json.dumps(
            {
                "report": f"{cfg.output.rstrip('/')}/report.html",
                "scan_date": summary["scan_date"],
                **summary["totals"],
                "thumbnails": summary["thumbnails"]["thumbnails"],
            }
        )
    )
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
