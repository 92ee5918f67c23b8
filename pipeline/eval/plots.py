"""PNG plots of an evaluation (matplotlib, Agg backend): ROC and PR curves per generator, robustness
curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: Path) -> list[Path]:
    """`curves`: generator -> (labels, scores). Writes roc.png and pr.png (one line per generator)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_roc, ax_roc = plt.subplots(figsize=(5, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 5))
    for name, (y, s) in sorted(curves.items()):
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        ax_roc.plot(fpr, tpr, label=name)
        ax_pr.plot(rec, prec, label=name)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate (reals called fake)", ylabel="true positive rate", title="ROC")
    ax_pr.set(xlabel="recall (fakes found)", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is ax_roc else "lower left")
    paths = [out_dir / "roc.png", out_dir / "pr.png"]
    fig_roc.savefig(paths[0], dpi=110, bbox_inches="tight")
    fig_pr.savefig(paths[1], dpi=110, bbox_inches="tight")
    plt.close(fig_roc)
    plt.close(fig_pr)
    return paths


def plot_robustness(
    robustness: dict[str, dict[str, Any]],
    clean_mean: dict[str, Any],
    out_dir: Path,
    clean_per_generator: dict[str, dict[str, Any]],
) -> list[Path]:
    """One PNG per perturbation kind: AP per generator and mean accuracy vs the perturbation level (dotted:
    the clean values)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for kind, levels in robustness.items():
        xs = list(levels.keys())
        fig, ax = plt.subplots(figsize=(5, 3.5))
        gens = sorted(levels[xs[0]].get("per_generator", {}))
        for gen in gens:  # AP per generator (solid), clean AP as a dotted reference
            ys = [levels[x]["per_generator"][gen]["ap"] for x in xs]
            line = ax.plot(range(len(xs)), ys, marker="o", label=f"{gen} AP")[0]
            if gen in clean_per_generator:
                ax.axhline(clean_per_generator[gen]["ap"], color=line.get_color(), ls=":", lw=0.8)
        ys = [levels[x]["mean"]["acc"] for x in xs]
        ax.plot(range(len(xs)), ys, marker="s", ls="--", color="k", label="mean acc")
        ax.axhline(clean_mean["acc"], color="k", ls=":", lw=0.8)
        ax.set_xticks(range(len(xs)), xs)
        ax.set(xlabel=kind, ylabel="score", ylim=(0, 1.02), title=f"robustness: {kind} (dotted = clean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"robustness_{kind}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
