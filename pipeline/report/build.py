"""One report [ours]: `<output>/report.html` with its PNG plots, thumbnails (thumbs/), `summary.json` and
`report_config.json`, from a scan output (local or s3://) and optionally the last filter run's output."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import Field, model_validator

from pipeline import output, storage
from pipeline.hygiene.plan import PlanError, resolve_scan_date
from pipeline.logs import get_logger
from pipeline.output import ScanDate
from pipeline.report import gallery
from pipeline.report.plots import plots
from pipeline.report.render import render_html
from pipeline.report.summary import COLUMNS, TREND_COLUMNS, connect, filter_summary, run_header, summarize
from pipeline.settings import StrictModel


class ReportConfig(StrictModel):
    """One report. Saved as `<output>/report_config.json`."""

    scan: str = Field(min_length=1, description="scan output root (scan_date=*/ partitions)")
    output: str = Field(min_length=1, description="folder for report.html, PNGs, thumbs/, summary.json")
    scan_date: ScanDate | None = Field(default=None, description="default: latest")
    filter_output: str | None = Field(
        default=None, min_length=1, description="a filter run's output: show what it dropped / quarantined"
    )
    gallery_size: int = Field(
        default=8,
        ge=0,
        le=64,
        description="cards per gallery (per generator for the fakes); 0 = no galleries",
    )
    top_n: int = Field(default=25, ge=0, le=500, description="rows of the top-flagged table")
    seed: int = Field(default=0, description="seed of the random sample of kept images")

    @model_validator(mode="after")
    def _output_outside_inputs(self) -> ReportConfig:
        # report.html, its PNGs and thumbs/ inside a scan output are read back as Parquet by the next read
        for flag, source in (("scan", self.scan), ("filter_output", self.filter_output)):
            if source and storage.within(self.output, source):
                raise ValueError(f"output must not be the {flag} folder or inside it (read back as its data)")
        return self


def build_report(cfg: ReportConfig) -> dict[str, Any]:
    """Write `<output>/report.html`, its PNGs, thumbnails, `summary.json` and `report_config.json`; return the
    summary."""
    log = get_logger("report")
    day = resolve_scan_date(cfg.scan, cfg.scan_date)
    # the report's date with every report column; the other dates only with what the trend needs (memory)
    day_rows = output.read_scan(cfg.scan, scan_date=day, columns=COLUMNS)
    if day_rows.num_rows == 0:
        raise PlanError(f"scan {cfg.scan} has no rows for scan_date={day}")
    con = connect(day_rows, output.read_scan(cfg.scan, columns=TREND_COLUMNS))
    summary = summarize(con, day)
    summary["header"] = run_header(cfg.scan, day)
    if cfg.filter_output:
        summary["filter"] = filter_summary(cfg.filter_output, day)
    chosen = gallery.select(con, size=cfg.gallery_size, top_n=cfg.top_n, seed=cfg.seed)
    items = [it for g in chosen["galleries"] for it in g.items] + chosen["top_flagged"]
    summary["thumbnails"] = gallery.fill(items, cfg.output)
    summary["galleries"] = {g.name: [asdict(it) for it in g.items] for g in chosen["galleries"]}
    summary["top_flagged"] = [asdict(it) for it in chosen["top_flagged"]]
    images = plots(summary)
    files = {
        **images,
        "summary.json": output.json_bytes(summary),
        "report_config.json": (cfg.to_json() + "\n").encode(),
        "report.html": render_html(
            summary, list(images), chosen["galleries"], chosen["top_flagged"]
        ).encode(),
    }
    for name, data in files.items():  # the page last
        storage.write_bytes_atomic(storage.join(cfg.output, name), data)
    log.info(
        "report_written",
        output=cfg.output,
        scan_date=day,
        thumbnails=summary["thumbnails"]["thumbnails"],
        **{k: summary["totals"][k] for k in ("rows", "flagged")},
    )
    return summary
