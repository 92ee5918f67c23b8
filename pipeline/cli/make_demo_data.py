"""Write the demo corpus: real-like images + SIMULATED generator fingerprints (see docs/demo_data.md).

  python jobs/make_demo_data.py --out DIR|s3://bucket/prefix --layout univfd|wds --families upconv,diffusion \
      --n-per-class 100 --seed 0 [--image-size 128] [--shard-size 256] [--format png|jpeg] [--jpeg-quality 95]
  python jobs/make_demo_data.py --list-families

Exit code 0 on success, 2 on a configuration error (the message names the field).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli.entry import job_main
from pipeline.cli.flags import JobParser
from pipeline.data.synthetic import DemoConfig, generate, list_families
from pipeline.exitcodes import help_epilog
from pipeline.settings import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(description=__doc__, epilog=help_epilog("make_demo_data"), log_flag=True)
    p.add_argument("--out", help="output folder or s3:// prefix")
    p.add_argument(
        "--layout", default="univfd", help="univfd (<out>/<family>/0_real|1_fake) or wds (tar shards)"
    )
    p.add_argument("--families", default=",".join(list_families()), help="comma-separated family names")
    p.add_argument("--n-per-class", type=int, default=100, help="reals and fakes per family (each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard (wds layout)")
    p.add_argument("--format", default="png", help="png or jpeg; always the same for both classes")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality for both classes (format=jpeg)")
    p.add_argument("--list-families", action="store_true", help="print the family names and exit")
    return p


@job_main("make_demo_data", quiet=True)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_families:
        print("\n".join(list_families()))
        return 0
    if not args.out:
        raise ConfigError("--out: required (the folder or s3:// prefix to write)")
    given = {
        "out": args.out,
        "layout": args.layout,
        "families": [f.strip() for f in args.families.split(",") if f.strip()],
        "n_per_class": args.n_per_class,
        "seed": args.seed,
        "image_size": args.image_size,
        "shard_size": args.shard_size,
        "format": args.format,
        "jpeg_quality": args.jpeg_quality,
    }
    # a bad value is named by the flag that gave it (every setting here is a flag of the same name)
    flags = {k: "--" + k.replace("_", "-") for k in given}
    cfg = DemoConfig.parse(given, source="command line", names=flags)
    summary = generate(cfg)
    print(json.dumps({k: summary[k] for k in ("n_images", "counts", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
