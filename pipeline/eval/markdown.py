"""Markdown rendering of an evaluation report (the JSON is the source of truth; this only formats it)."""

from __future__ import annotations

import math
from typing import Any

from pipeline.metrics import DETECTION_KEYS


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{100 * v:.2f}"


def _cells(r: dict[str, Any], keys: tuple[str, ...] = ("ap", "auc", "acc", "acc_05")) -> str:
    return " | ".join(_f(r[k]) for k in keys)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Detector evaluation",
        "",
        f"- detector: `{report['detector_id']}` ({report['detector']})",
        f"- data: `{report['data']}`",
        f"- stored threshold (p_fake): {report['threshold']:.4f}; acc_05 uses p_fake >= 0.5",
        f"- protocol: {report['protocol']}",
        "",
        "## Detection (percent)",
        "",
        "| generator | AP | AUC | acc | acc@0.5 | real acc | fake acc | balanced acc | n real | n fake |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = dict(report["per_generator"])
    rows["**mean**"] = report["mean"]
    for name, r in rows.items():
        lines.append(f"| {name} | {_cells(r, DETECTION_KEYS[:7])} | {r['n_real']} | {r['n_fake']} |")
    attr = report.get("attribution")
    if attr:
        lines += [
            "",
            "## Attribution",
            "",
            f"- known generators: {', '.join(attr['known_generators']) or '–'}; held out: "
            f"{', '.join(attr['held_out_generators']) or '–'}",
            f"- closed-set accuracy over [real, known generators] (real and known fakes): "
            f"{_f(attr['closed_set_accuracy'])} % (n = {attr['n_closed_set']})",
            f"- open-set AUROC (known vs held-out fakes, score = max generator probability): "
            f"{_f(attr['open_set_auroc'])} % (n known = {attr['n_known_fakes']}, n held-out = "
            f"{attr['n_held_out_fakes']})",
            f"- unknown threshold {attr['unknown_threshold']:.4f}: held-out fakes called unknown "
            f"{_f(attr['held_out_called_unknown'])} %, known fakes called unknown "
            f"{_f(attr['known_called_unknown'])} %",
        ]
    rob = report.get("robustness") or {}
    if rob:
        lines += [
            "",
            "## Robustness (mean over generators, percent)",
            "",
            "| perturbation | AP | AUC | acc | acc@0.5 |",
            "|---|---|---|---|---|",
        ]
        lines.append(f"| clean | {_cells(report['mean'])} |")
        for kind, levels in rob.items():
            lines += [f"| {kind} {level} | {_cells(res['mean'])} |" for level, res in levels.items()]
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"- `{p}`" for p in report["plots"]]
    return "\n".join(lines) + "\n"
