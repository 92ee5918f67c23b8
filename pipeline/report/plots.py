"""The report's PNG plots [ours], drawn with matplotlib (Agg) from the summary
(pipeline.report.summary): score distribution, attribution counts, per-shard fake rate, row status (log
scale), fake rate per scan date."""

from __future__ import annotations

import io
from typing import Any

from pipeline.report.summary import N_BINS

MAX_SHARDS_PLOTTED = 40


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def plots(summary: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    h = summary["histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    left = [b["bin_start"] for b in h]
    not_flagged = [b["images"] - b["flagged"] for b in h]
    ax.bar(left, not_flagged, width=1 / N_BINS, align="edge", color="#4c72b0", label="kept (below threshold)")
    ax.bar(
        left,
        [b["flagged"] for b in h],
        width=1 / N_BINS,
        align="edge",
        bottom=not_flagged,
        color="#c44e52",
        label="flagged (is_fake)",
    )
    if summary["threshold"] is not None:
        ax.axvline(
            summary["threshold"], color="k", linestyle="--", label=f"threshold {summary['threshold']:.2f}"
        )
    ax.set(
        xlabel="p_fake", ylabel="images", title=f"Score distribution ({summary['scan_date']})", xlim=(0, 1)
    )
    ax.legend(fontsize=8)
    out["score_distribution.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    gens = summary["generators"]
    ax.bar([g["generator"] or "?" for g in gens], [g["flagged"] for g in gens], color="#dd8452")
    ax.set(ylabel="flagged images", title="Attribution of flagged images (top_generator)")
    out["attribution_counts.png"] = _png(fig)

    shards = sorted(
        (s for s in summary["shards"] if s["fake_rate"] is not None),
        key=lambda s: (-s["fake_rate"], s["shard"]),
    )[:MAX_SHARDS_PLOTTED]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(shards) + 1)))
    ax.barh([s["shard"] for s in shards][::-1], [s["fake_rate"] for s in shards][::-1], color="#c44e52")
    ax.set(
        xlabel="fake rate (flagged / scored)",
        xlim=(0, 1),
        title=f"Per-shard fake rate (top {len(shards)} of {len(summary['shards'])})",
    )
    out["shard_fake_rate.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    st = summary["status"]
    ax.bar(
        [s["status"] for s in st],
        [s["rows"] for s in st],
        color=["#55a868" if s["status"] == "ok" else "#c44e52" for s in st],
    )
    ax.set_yscale("log")  # ok rows outnumber error rows by orders of magnitude: both stay visible
    ax.set(ylabel="rows (log scale)", title="Row status")
    for x, r in enumerate(st):
        ax.annotate(str(r["rows"]), (x, r["rows"]), ha="center", va="bottom", fontsize=8)
    out["status_breakdown.png"] = _png(fig)

    daily = summary["daily"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([d["scan_date"] for d in daily], [d["fake_rate"] or 0 for d in daily], marker="o")
    ax.set(ylabel="fake rate", title="Fake rate per scan date", ylim=(0, 1))
    out["daily_fake_rate.png"] = _png(fig)
    return out
