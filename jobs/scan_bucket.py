"""`python jobs/scan_bucket.py …` (and `ray job submit -- python jobs/scan_bucket.py …`) from a checkout: the
job itself is `pipeline.cli.scan_bucket` (console script `genscan-scan` once installed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's `pipeline`, installed or not

from pipeline.cli.scan_bucket import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
