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
from pipeline.cli.flags import config_from_flags
from pipeline.settings import as_config_error


@job_main("evaluate", quiet=True)
def main(argv: list[str] | None = None) -> int:
    from pipeline.eval.evaluate import EvalConfig, evaluate

    try:
        cfg = config_from_flags(EvalConfig, argv, doc=__doc__, job="evaluate", names={"json_out": "json"})
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
