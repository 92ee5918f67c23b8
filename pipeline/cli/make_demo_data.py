"""Write the demo corpus: real-like images + SIMULATED generator fingerprints (see docs/demo_data.md).

  python jobs/make_demo_data.py --out DIR|s3://bucket/prefix --layout univfd|wds --families upconv,diffusion \
      --n-per-class 100 --seed 0 [--image-size 128] [--shard-size 256] [--format png|jpeg] [--jpeg-quality 95]
  python jobs/make_demo_data.py --list-families

Exit code 0 on success, 2 on a configuration error (the message names the field); 3, 5, 6, 7 when the output
cannot be written (README.md, "Exit codes").
"""

from __future__ import annotations

import json
import sys

from pipeline.cli.entry import job_main
from pipeline.cli.flags import JobParser, add_model_flags
from pipeline.data.synthetic import DemoConfig, generate, list_families
from pipeline.exitcodes import help_epilog
from pipeline.preflight import Location, check_storage
from pipeline.settings import ConfigError


@job_main("make_demo_data", quiet=True)
def main(argv: list[str] | None = None) -> int:
    parser = JobParser(description=__doc__, epilog=help_epilog("make_demo_data"), log_flag=True)
    parser.add_argument("--list-families", action="store_true", help="print the family names and exit")
    flags = add_model_flags(parser.add_argument_group("demo data settings (DemoConfig)"), DemoConfig)
    args = parser.parse_args(argv)
    if args.list_families:
        print("\n".join(list_families()))
        return 0
    if not args.out:
        raise ConfigError("--out: required (the folder or s3:// prefix to write)")
    cfg = DemoConfig.parse(flags.given(args), source="command line", names=flags.flags)
    check_storage(writes=[Location("output", cfg.out)])
    summary = generate(cfg)
    print(json.dumps({k: summary[k] for k in ("n_images", "counts", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
