"""HTML report over a scan dataset: PNG plots + report.html + summary.json in one folder (local or s3://).

    python jobs/report.py --scan out/scan --output out/report [--scan-date YYYY-MM-DD]

Exit codes: 0 written, 2 bad arguments, 3 the scan cannot be read (missing, no partitions, no rows).
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import Field

from pipeline.hygiene.plan import PlanError
from pipeline.hygiene.report import build_report
from pipeline.settings import ConfigError, StrictModel


class ReportConfig(StrictModel):
    scan: str = Field(min_length=1)
    output: str = Field(min_length=1)
    scan_date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", required=True, help="scan output root (scan_date=*/ partitions)")
    ap.add_argument("--output", required=True, help="folder for report.html, *.png, summary.json")
    ap.add_argument("--scan-date", default=None, help="default: the latest partition")
    args = ap.parse_args(argv)
    try:
        cfg = ReportConfig.parse({"scan": args.scan, "output": args.output, "scan_date": args.scan_date},
                                 source="command line")
        summary = build_report(cfg.scan, cfg.output, cfg.scan_date)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (PlanError, FileNotFoundError) as exc:
        print(f"cannot report: {exc}", file=sys.stderr)
        return 3
    print(json.dumps({"report": f"{cfg.output.rstrip('/')}/report.html", "scan_date": summary["scan_date"],
                      **summary["totals"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
