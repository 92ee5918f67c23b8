"""HTML report over a scan dataset: report.html + PNG plots + thumbnail galleries (thumbs/) + summary.json in one
folder (local or s3://).

    python jobs/report.py --scan out/scan --output out/report [--scan-date YYYY-MM-DD] \
        [--filter-output data/clean] [--gallery-size 8] [--top-n 25] [--seed 0]

Exit codes: 0 written, 2 bad arguments, 3 the scan (or the filter output) cannot be read: missing, no partitions,
no rows; storage preflight (scan, filter output, output; before any work): 3 not found, 5 access denied,
6 no credentials, 7 cannot connect (README, "Exit codes").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python jobs/report.py` from a checkout
    sys.path.insert(0, str(REPO))

from pipeline.hygiene.plan import PlanError  # noqa: E402
from pipeline.hygiene.report import ReportConfig, build_report  # noqa: E402
from pipeline.preflight import Location, StorageError, check_storage  # noqa: E402
from pipeline.settings import ConfigError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", required=True, help="scan output root (scan_date=*/ partitions)")
    ap.add_argument("--output", required=True, help="folder for report.html, *.png, thumbs/, summary.json")
    ap.add_argument("--scan-date", default=None, help="default: the latest partition")
    ap.add_argument(
        "--filter-output", default=None, help="a filter run's --output: show what it dropped/quarantined"
    )
    ap.add_argument(
        "--gallery-size", type=int, default=None, help="cards per gallery (default 8; 0: no galleries)"
    )
    ap.add_argument("--top-n", type=int, default=None, help="rows of the top-flagged table (default 25)")
    ap.add_argument(
        "--seed", type=int, default=None, help="seed of the random sample of kept images (default 0)"
    )
    args = ap.parse_args(argv)
    flags = {
        "scan": args.scan,
        "output": args.output,
        "scan_date": args.scan_date,
        "filter_output": args.filter_output,
        "gallery_size": args.gallery_size,
        "top_n": args.top_n,
        "seed": args.seed,
    }
    try:
        cfg = ReportConfig.parse({k: v for k, v in flags.items() if v is not None}, source="command line")
        reads = [Location("scan output", cfg.scan)]
        if cfg.filter_output:
            reads.append(Location("filter output", cfg.filter_output))
        check_storage(reads, [Location("output", cfg.output)])
        summary = build_report(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"storage error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (PlanError, FileNotFoundError) as exc:
        print(f"cannot report: {exc}", file=sys.stderr)
        return 3
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
