"""`python jobs/import_detector.py …` (and `ray job submit -- python jobs/import_detector.py …`) from a
checkout: the job itself is `pipeline.cli.import_detector` (console script `genscan-import-detector` once
installed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's `pipeline`, installed or not

from pipeline.cli.import_detector import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
