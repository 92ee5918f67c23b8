"""Train a detector (MoLE adapters or a few-shot linear head) with Ray Train, calibrate it, save a checkpoint.

    python jobs/train_detector.py --data DIR_OR_URI --config tiny-mole --method mole|linear \\
        [--mask texture --mask-ratio 0.4] --train-generators A,B --out CKPT

CKPT is a checkpoint DIRECTORY (local or s3://) that will hold detector.safetensors + detector.json (weights
and DetectorMeta: labels, calibrated threshold, unknown threshold) + train_config.json (the full TrainConfig)
+ metrics.jsonl (per-epoch metrics) + calibration.json + train_summary.json.

--config-file reads a TrainConfig JSON (unknown fields are rejected, naming the field); flags given on the
command line override the file's values, flags not given leave them alone. Runs under Ray Train's TorchTrainer
(one CPU worker by default; --num-workers/--use-gpu scale it); attaches to RAY_ADDRESS when set, else starts a
private local Ray. --engine local trains in-process without Ray (debugging).

Exit codes: 0 success, 2 bad configuration or data, 1 training failed, 3 no stored features / an output that
cannot be a folder, 5, 6, 7 the store (README.md, "Exit codes"). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.entry import job_main, with_console
from pipeline.cli.flags import JobParser, ModelFlags, absolute_paths, add_model_flags
from pipeline.exitcodes import ExitCode, help_epilog, one_line
from pipeline.preflight import Location, check_storage
from pipeline.settings import ConfigError, as_config_error, read_json_object
from pipeline.train.config import TrainConfig


def _parser() -> tuple[JobParser, ModelFlags]:
    ap = JobParser(description=__doc__, epilog=help_epilog("train_detector"))
    ap.add_argument(
        "--config-file",
        help="TrainConfig JSON (or a shipped recipe name, e.g. univfd); flags given override its values",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest run under OUT/_checkpoints from its last completed epoch",
    )
    ap.add_argument("--engine", choices=["ray", "local"], default="ray", help="ray (TorchTrainer) | local")
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="JSON logs and Ray's output on stderr (default: status lines; the JSON logs go to "
        "<out>/log.jsonl)",
    )
    feat = ap.add_argument_group("few-shot from stored features (--method linear; no image decoded)")
    feat.add_argument("--features-from", help="scan output with stored features (scan_bucket.py --features)")
    feat.add_argument("--features-date", help="its scan date (default: the latest)")
    feat.add_argument("--labels", help="CSV or Parquet: shard, key, label (0/1 or real/fake), [generator]")
    flags = add_model_flags(ap.add_argument_group("training settings (TrainConfig)"), TrainConfig)
    return ap, flags


RECIPES = Path(__file__).resolve().parents[1] / "train" / "recipes"


def recipe_path(name: str) -> Path:
    """A --config-file value: a JSON path, or the name of a recipe shipped in pipeline/train/recipes/."""
    if not os.path.exists(name) and "/" not in name and (RECIPES / f"{name}.json").is_file():
        return RECIPES / f"{name}.json"
    return Path(name)


def parse(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser, flags = _parser()
    args = parser.parse_args(argv)
    file: dict[str, Any] = {}
    if args.config_file:
        file = read_json_object(recipe_path(args.config_file), field="--config-file")
    data = {**file, **flags.given(args)}
    for required in ("data", "out"):
        if required not in data:
            raise ConfigError(f"{required}: required (--{required} or in --config-file)")
    # Ray workers do not share the driver's working directory: make local paths absolute; a config or
    # pretrained value is a path only when that file exists (else a shipped name or an open_clip tag)
    absolute_paths(data, ("data", "out"))
    absolute_paths(data, [k for k in ("config", "pretrained") if os.path.exists(str(data.get(k) or ""))])
    source = f"{args.config_file} + command line" if args.config_file else "command line"
    return TrainConfig.parse(data, source=source, names=flags.named(args, file)), args


def check_backbone(cfg: TrainConfig) -> None:
    """The detector config (`--config`) and a local file or open_clip tag as the backbone, read by the rules
    the training reads them with, in this process before any work (an s3:// file: its name here, its object
    by the storage preflight)."""
    from pipeline import storage
    from pipeline.models import DetectorConfig
    from pipeline.models.config import arch_config
    from pipeline.models.detector import check_weights_name, resolve_pretrained

    det_cfg = DetectorConfig.load(cfg.config, field="--config")
    arch_config(det_cfg.arch)
    source = cfg.backbone(det_cfg.pretrained)
    if source is not None and storage.is_remote(source):
        check_weights_name(source)  # the file itself is fetched by the training, once
    elif source is not None:
        resolve_pretrained(det_cfg.arch, source)


@job_main("train")
def main(argv: list[str] | None = None) -> int:
    loud = "--verbose" in (sys.argv[1:] if argv is None else argv)
    return with_console("train", loud, lambda console, runlog: _main(argv, console, runlog))


def _main(argv: list[str] | None, console: Any, runlog: Any) -> int:
    args = _parser()[0].parse_args(argv)
    if args.features_from is not None or args.labels is not None:
        return _from_features(args, console)
    cfg, args = parse(argv)
    # before any work, as every job: an s3:// --data or --pretrained the store refuses, an --out that cannot
    # be written (a --pretrained that is no URI, an open_clip tag or none, is not probed: local_reads=False)
    reads = [Location("data", cfg.data)]
    if cfg.pretrained:
        reads.append(Location("pretrained", cfg.pretrained, file=True))
    check_storage(reads, [Location("output", cfg.out)], local_reads=False)
    try:
        from pipeline.train.feed import make_plan

        plan = make_plan(cfg)  # lists + splits; bad data fails here, with exit code 2, before Ray starts
        check_backbone(cfg)
        # the data, the detector config and the backbone are checked (a mistake was ONE line): work starts now
        runlog.destination = f"{cfg.out.rstrip('/')}/log.jsonl"
        split = f"{cfg.data} -> {cfg.out}: {plan.n_train} training + {plan.n_val} validation images"
        if args.engine == "local":
            from pipeline.train.local import train_local as train

            console.status(f"{split}; training in this process...")
        else:
            from pipeline.engine.train import run_training as train

            console.status(f"{split}; starting Ray Train, then training (per-epoch metrics in the log)...")
        progress = console.epochs("train", cfg.passes, plan.n_train)
        summary = train(cfg, resume=args.resume, plan=plan, on_epoch=progress)
        console.end_progress()
    except (FileNotFoundError, ValueError) as exc:
        runlog.discard()
        console.line(one_line(as_config_error(exc), "train"))
        return ExitCode.CONFIG
    except Exception as exc:  # the Ray wrapper re-raises worker errors as TrainingFailedError
        first = (str(exc).strip().splitlines() or [""])[0]
        console.line(f"train failed: {type(exc).__name__}: {first} (log: {runlog.publish()})")
        return ExitCode.RUN_FAILED
    if args.resume and not summary.get("resumes"):  # said where the user looks, not only in the log
        console.line(
            f"train: --resume found no earlier epoch under {cfg.out}/_checkpoints: trained from scratch"
        )
    console.line(f"train succeeded: {cfg.out}; log: {runlog.publish()}")
    print(json.dumps(summary, indent=2, default=float))
    return 0


def _from_features(args: argparse.Namespace, console: Any) -> int:
    """`--features-from SCAN --labels FILE`: the linear heads from stored features
    (pipeline.features.train)."""
    if args.method != "linear":
        raise ConfigError("--features-from: only --method linear trains from stored features")
    if args.features_from is None or args.labels is None or args.out is None:
        raise ConfigError("--features-from, --labels and --out go together")
    from pipeline.features.train import FeatureTrainConfig, train_from_features

    given = {
        "features_from": args.features_from,
        "scan_date": args.features_date,
        "labels": args.labels,
        "config": args.config,
        "out": args.out,
        "linear_classifier": args.linear_classifier,
        "seed": args.seed,
    }
    cfg = FeatureTrainConfig.parse({k: v for k, v in given.items() if v is not None}, source="command line")
    check_storage(
        [Location("scan output", cfg.features_from)], [Location("output", cfg.out)], local_reads=False
    )
    summary = train_from_features(cfg)  # a bad label file or scan: one line through job_main
    console.line(
        f"train succeeded: {summary['checkpoint']} from {summary['examples']} stored features "
        f"({summary['skipped_without_feature']} labelled rows without one)"
    )
    print(json.dumps(summary, indent=2))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
