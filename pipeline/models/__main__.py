"""``python -m pipeline.models list | describe <config> [--json] | check-fused <config> [--json]``."""

from __future__ import annotations

import json
import sys

from pipeline.exitcodes import OperatorError, one_line
from pipeline.logs import RunLog
from pipeline.models.config import DetectorConfig, list_configs
from pipeline.settings import JobParser, positive_int


def main(argv: list[str] | None = None) -> int:
    """An operator error is ONE stderr line and its exit code, as in every job (pipeline.cli.entry.job_main,
    a layer above the models)."""
    try:
        return _main(argv)
    except OperatorError as exc:
        print(one_line(exc, "models"), file=sys.stderr)
        return int(exc.exit_code)


def _main(argv: list[str] | None) -> int:
    # JobParser: a usage mistake (no or unknown subcommand, a bad --batch) is the one configuration-error line
    ap = JobParser(prog="python -m pipeline.models", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the shipped detector configs")
    d = sub.add_parser("describe", help="parameter counts at random init (no download)")
    d.add_argument("config", help="shipped config name or JSON path")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    c = sub.add_parser("check-fused", help="fused vs unfused MoLE outputs on random inputs/weights")
    c.add_argument("config")
    c.add_argument("--json", action="store_true")
    c.add_argument("--batch", type=positive_int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--top-k", type=positive_int, default=None, help="override the config's router top-k")
    args = ap.parse_args(argv)

    if args.cmd == "list":
        for name in list_configs():
            cfg = DetectorConfig.load(name)
            print(f"{name}\t{cfg.method}\t{cfg.arch}\t{cfg.pretrained}\t{cfg.image_size}px\t{cfg.preprocess}")
        return 0
    # an unknown name / bad JSON: job_main's one line, exit 2
    cfg = DetectorConfig.load(args.config, field=f"{args.cmd} config")
    from pipeline.models.checks import check_fused, describe

    # the JSON log lines (detector_created, ...) are kept off the console: the answer is on stdout
    with RunLog(tee=None):
        if args.cmd == "describe":
            out = describe(cfg)
        else:
            out = check_fused(cfg, batch=args.batch, seed=args.seed, top_k=args.top_k)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
