"""`python jobs/filter_shards.py …` (and `ray job submit -- python jobs/filter_shards.py …`) from a checkout:
the job itself is `pipeline.cli.filter_shards` (console script `genscan-filter` once installed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's `pipeline`, installed or not

from pipeline.cli.filter_shards import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
