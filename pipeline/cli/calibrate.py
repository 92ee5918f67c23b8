"""Re-calibrate an existing detector checkpoint on held-out labelled data.

    python jobs/calibrate.py --detector CKPT --data DIR_OR_URI [--target-fpr 0.05] \\
        [--unknown-quantile 0.05] [--out CKPT2]

Sets DetectorMeta.threshold (p_fake threshold with the target false-positive rate on the data's REAL images)
and DetectorMeta.unknown_threshold (the quantile of the max generator probability of the data's fakes from the
checkpoint's known generators), rewrites the checkpoint (or writes a copy to --out) with calibration.json.
Exit codes: 0 success, 2 bad configuration or data; 3, 5, 6, 7 an s3:// input or an output the store refuses
(README.md, "Exit codes"). Prints the calibration record as JSON.
"""

from __future__ import annotations

import json
import sys

from pipeline.cli.entry import job_main
from pipeline.cli.flags import config_from_flags
from pipeline.preflight import Location, check_storage
from pipeline.settings import as_config_error


@job_main("calibrate", quiet=True)
def main(argv: list[str] | None = None) -> int:
    from pipeline.train.calibrate import CalibrateConfig, calibrate_checkpoint

    cfg = config_from_flags(CalibrateConfig, argv, doc=__doc__, job="calibrate")
    reads = [Location("detector", cfg.detector), Location("data", cfg.data)]
    check_storage(reads, [Location("output", cfg.out or cfg.detector)], local_reads=False)
    try:
        calib = calibrate_checkpoint(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise as_config_error(exc) from exc
    print(json.dumps(calib, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
