"""Evaluate a detector checkpoint in the UnivFD paper format: per-generator AP / accuracy / AUC table,
robustness sweeps, attribution (closed-set accuracy, open-set AUROC).

    python jobs/evaluate.py --data DIR_OR_URI --detector CKPT --json OUT.json [--markdown OUT.md] \\
        [--plots DIR] [--jpeg 95,75,50] [--blur 1,2] [--resize 0.5,2] [--train-generators A,B]

JSON: {"per_generator": {name: {ap, acc, acc_05, real_acc, fake_acc, auc, balanced_acc, n_real, n_fake}},
"mean": {...}, "attribution": {...}, "robustness": {kind: {level: {"mean": {...}, "per_generator": {...}}}}}.
Rates are fractions in [0, 1] (the Markdown shows percent); undefined metrics are null. eval_config.json is
written beside the JSON. Exit codes: 0 success, 2 bad configuration or data, 1 evaluation failed.
"""

from __future__ import annotations

import json
import sys

from pipeline.cli.entry import job_main
from pipeline.cli.flags import JobParser
from pipeline.exitcodes import help_epilog
from pipeline.settings import ConfigError, as_config_error


def _floats(text: str | None) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()] if text else []


def build_config(argv: list[str] | None = None):  # noqa: ANN201 - EvalConfig (import kept lazy)
    from pipeline.eval.evaluate import EvalConfig

    ap = JobParser(description=__doc__, epilog=help_epilog("evaluate"), log_flag=True)
    ap.add_argument("--data", required=True, help="labelled test data (UnivFD folder or WebDataset shards)")
    ap.add_argument("--detector", required=True, help="checkpoint directory (local or s3://)")
    ap.add_argument("--json", required=True, dest="json_out", help="report JSON path")
    ap.add_argument("--markdown", help="report Markdown path")
    ap.add_argument("--plots", help="folder for ROC/PR and robustness PNGs")
    ap.add_argument("--train-generators", help="known generators [the checkpoint's meta.generators]")
    ap.add_argument("--jpeg", help="JPEG qualities, e.g. 95,75,50")
    ap.add_argument("--blur", help="Gaussian blur sigmas, e.g. 1,2")
    ap.add_argument("--resize", help="resize factors, e.g. 0.5,2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-per-class", type=int, help="cap per generator and class (UnivFD uses 1000)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    try:
        data = {
            "data": a.data,
            "detector": a.detector,
            "json_out": a.json_out,
            "markdown": a.markdown,
            "plots": a.plots,
            "train_generators": [g for g in a.train_generators.split(",") if g]
            if a.train_generators
            else None,
            "jpeg": [int(q) for q in _floats(a.jpeg)],
            "blur": _floats(a.blur),
            "resize": _floats(a.resize),
            "batch_size": a.batch_size,
            "max_per_class": a.max_per_class,
            "device": a.device,
        }
    except ValueError as exc:
        raise ConfigError(f"robustness levels must be comma-separated numbers: {exc}") from exc
    return EvalConfig.parse(data, source="command line")


@job_main("evaluate", quiet=True)
def main(argv: list[str] | None = None) -> int:
    from pipeline.eval.evaluate import evaluate

    try:
        cfg = build_config(argv)
        report = evaluate(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise as_config_error(exc) from exc
    m = report["mean"]
    print(
        json.dumps(
            {
                "json": cfg.json_out,
                "mean_ap": m["ap"],
                "mean_acc": m["acc"],
                "mean_auc": m["auc"],
                "generators": sorted(report["per_generator"]),
            },
            default=float,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
