"""Evaluate a detector checkpoint in the UnivFD paper format: per-generator AP / accuracy / AUC table,
robustness sweeps, attribution (closed-set accuracy, open-set AUROC).

    python jobs/evaluate.py --data DIR_OR_URI --detector CKPT --json OUT.json [--markdown OUT.md] \\
        [--plots DIR] [--jpeg 95,75,50] [--blur 1,2] [--resize 0.5,2] [--train-generators A,B]

JSON: {"per_generator": {name: {ap, acc, acc_05, real_acc, fake_acc, auc, balanced_acc, n_real, n_fake}},
"mean": {...}, "attribution": {...}, "robustness": {kind: {level: {"mean": {...}, "per_generator": {...}}}}}.
Rates are fractions in [0, 1] (the Markdown shows percent); undefined metrics are null. eval_config.json is
written beside the JSON. Exit codes: 0 success, 2 bad configuration or data; 3, 5, 6, 7 an s3:// input or an
output the store refuses (README.md, "Exit codes").
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from pipeline.cli.entry import job_main
from pipeline.cli.flags import config_from_flags
from pipeline.preflight import Location, check_storage
from pipeline.settings import as_config_error
from pipeline.storage import parent

if TYPE_CHECKING:
    from pipeline.eval.evaluate import EvalConfig


def _outputs(cfg: EvalConfig) -> list[tuple[str, str]]:
    """The folders the evaluation writes in: the JSON's and the Markdown's, and --plots."""
    files = [("json", cfg.json_out), ("markdown", cfg.markdown)]
    folders = [(f"{role} folder", parent(path)) for role, path in files if path]
    return folders + ([("plots", cfg.plots)] if cfg.plots else [])


@job_main("evaluate", quiet=True)
def main(argv: list[str] | None = None) -> int:
    from pipeline.eval.evaluate import EvalConfig, evaluate

    try:
        cfg = config_from_flags(EvalConfig, argv, doc=__doc__, job="evaluate", names={"json_out": "json"})
        check_storage(
            [Location("detector", cfg.detector), Location("data", cfg.data)],
            [Location(role, where) for role, where in _outputs(cfg)],
            local_reads=False,
        )
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
