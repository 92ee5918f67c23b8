"""`python jobs/make_demo_data.py …` (and `ray job submit -- python jobs/make_demo_data.py …`) from a
checkout: the job itself is `pipeline.cli.make_demo_data` (console script `genscan-make-demo-data` once
installed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's `pipeline`, installed or not

from pipeline.cli.make_demo_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
