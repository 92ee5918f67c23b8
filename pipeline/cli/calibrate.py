"""Re-calibrate an existing detector checkpoint on held-out labelled data.

    python jobs/calibrate.py --detector CKPT --data DIR_OR_URI [--target-fpr 0.05] \\
        [--unknown-quantile 0.05] [--out CKPT2]

Sets DetectorMeta.threshold (p_fake threshold with the target false-positive rate on the data's REAL images)
and DetectorMeta.unknown_threshold (the quantile of the max generator probability of the data's fakes from the
checkpoint's known generators), rewrites the checkpoint (or writes a copy to --out) with calibration.json.
Exit codes: 0 success, 2 bad configuration or data. Prints the calibration record as JSON.
"""

from __future__ import annotations

import json
import sys

from pipeline.cli.entry import job_main
from pipeline.cli.flags import JobParser
from pipeline.exitcodes import help_epilog
from pipeline.settings import as_config_error


@job_main("calibrate", quiet=True)
def main(argv: list[str] | None = None) -> int:
    ap = JobParser(description=__doc__, epilog=help_epilog("calibrate"), log_flag=True)
    ap.add_argument("--detector", required=True, help="checkpoint directory (local or s3://)")
    ap.add_argument(
        "--data", required=True, help="held-out labelled data (UnivFD folder or WebDataset shards)"
    )
    ap.add_argument("--target-fpr", type=float, default=0.05)
    ap.add_argument("--unknown-quantile", type=float, default=0.05)
    ap.add_argument("--out", help="write the calibrated checkpoint here instead of in place")
    a = ap.parse_args(argv)
    from pipeline.train.calibrate import calibrate_checkpoint

    try:
        calib = calibrate_checkpoint(
            a.detector, a.data, target_fpr=a.target_fpr, unknown_quantile=a.unknown_quantile, out=a.out
        )
    except (FileNotFoundError, ValueError) as exc:
        raise as_config_error(exc) from exc
    print(json.dumps(calib, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
