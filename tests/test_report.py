"""The HTML report on a real scan: the numbers a reader sees (data-metric cells) and the embedded JSON summary
equal DuckDB queries run directly on the scan's Parquet files; every plot is a real, non-blank PNG beside the
page; works for an s3:// scan and output too."""

from __future__ import annotations

import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from pipeline.cli.report import main as report_main
from tests.support.hygiene import DAY1, DAY2, shared_scans
from tests.support.subproc import run_python


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, str] = {}
        self.images: list[str] = []
        self.summary: dict | None = None
        self._metric: str | None = None
        self._json = False
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if "data-metric" in a:
            self._metric, self._buf = a["data-metric"], []
        if tag == "img":
            self.images.append(a["src"])
        if tag == "script" and a.get("id") == "genscan-summary":
            self._json, self._buf = True, []

    def handle_data(self, data) -> None:
        if self._metric is not None or self._json:
            self._buf.append(data)

    def handle_endtag(self, tag) -> None:
        if self._metric is not None and tag in ("td", "span"):
            self.metrics[self._metric] = "".join(self._buf).strip()
            self._metric = None
        if self._json and tag == "script":
            self.summary = json.loads("".join(self._buf))
            self._json = False


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def q(scan: str, day: str, sql: str) -> list[tuple]:
    return duckdb.sql(sql.replace("SCAN", f"read_parquet('{scan}/scan_date={day}/*.parquet')")).fetchall()


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> str:
    return shared_scans(tmp_path_factory).scan


@pytest.mark.parametrize("day", [DAY2, DAY1])
def test_report_numbers_match_duckdb_on_the_parquet(scan, tmp_path, capsys, day) -> None:
    out = tmp_path / "report"
    args = ["--scan", scan, "--output", str(out)] + (["--scan-date", day] if day != DAY2 else [])
    assert report_main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    page = parse(out / "report.html")
    s = page.summary
    assert s is not None and s["scan_date"] == day == printed["scan_date"]
    assert s == json.loads((out / "summary.json").read_text())

    rows, samples, scored, flagged, errs, shard_errs, shards = q(
        scan,
        day,
        """
        SELECT count(*), count(*) FILTER (WHERE status <> 'shard_error'),
               count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE is_fake),
               count(*) FILTER (WHERE status IN ('decode_error','no_image','too_large')),
               count(*) FILTER (WHERE status = 'shard_error'), count(DISTINCT shard) FROM SCAN""",
    )[0]
    t = s["totals"]
    assert (
        t["rows"],
        t["samples"],
        t["scored"],
        t["flagged"],
        t["error_rows"],
        t["shard_errors"],
        t["shards"],
    ) == (rows, samples, scored, flagged, errs, shard_errs, shards)
    assert t["fake_rate"] == pytest.approx(flagged / scored, abs=1e-4)
    # what the reader sees equals the JSON
    for k in ("rows", "samples", "scored", "flagged", "error_rows", "shard_errors", "shards"):
        assert page.metrics[f"totals.{k}"] == str(t[k])
    assert float(page.metrics["totals.fake_rate"]) == pytest.approx(t["fake_rate"], abs=1e-4)

    status = dict(q(scan, day, "SELECT status, count(*) FROM SCAN GROUP BY status"))
    assert {x["status"]: x["rows"] for x in s["status"]} == status
    assert {k: int(page.metrics[f"status.{k}"]) for k in status} == status
    assert {"ok", "decode_error", "no_image", "shard_error"} <= set(status)

    gens = dict(q(scan, day, "SELECT top_generator, count(*) FROM SCAN WHERE is_fake GROUP BY 1"))
    assert {g["generator"]: g["flagged"] for g in s["generators"]} == gens
    assert {k: int(page.metrics[f"generators.{k}"]) for k in gens} == gens

    per_shard = {
        r[0]: r[1:]
        for r in q(
            scan,
            day,
            """
        SELECT shard, count(*) FILTER (WHERE status <> 'shard_error'), count(*) FILTER (WHERE status = 'ok'),
               count(*) FILTER (WHERE is_fake) FROM SCAN GROUP BY shard""",
        )
    }
    assert {x["shard"]: (x["samples"], x["scored"], x["flagged"]) for x in s["shards"]} == per_shard
    for shard, (_, sc, fl) in per_shard.items():
        assert int(page.metrics[f"shards.{shard}.flagged"]) == fl
        assert float(page.metrics[f"shards.{shard}.fake_rate"]) == pytest.approx(fl / sc, abs=1e-4)

    p = np.array([r[0] for r in q(scan, day, "SELECT p_fake FROM SCAN WHERE status = 'ok'")])
    hist, _ = np.histogram(p, bins=10, range=(0, 1))
    assert [b["images"] for b in s["histogram"]] == hist.tolist()
    thr = q(scan, day, "SELECT min(threshold) FROM SCAN")[0][0]
    assert float(page.metrics["threshold"]) == pytest.approx(thr, abs=1e-4)
    assert [d["scan_date"] for d in s["daily"]] == [DAY1, DAY2]

    # plots: referenced by the page, present beside it, real non-blank PNGs (thumbnails:
    # test_report_gallery.py)
    plots = [i for i in page.images if not i.startswith("thumbs/")]
    assert set(plots) == {
        "score_distribution.png",
        "attribution_counts.png",
        "shard_fake_rate.png",
        "status_breakdown.png",
        "daily_fake_rate.png",
    }
    assert all((out / i).is_file() for i in page.images)
    for name in plots:
        img = Image.open(io.BytesIO((out / name).read_bytes()))
        assert img.format == "PNG" and img.size[0] >= 300 and img.size[1] >= 150
        assert np.asarray(img.convert("L")).std() > 5


def test_report_days_differ_and_missing_scan_fails(scan, tmp_path, capsys) -> None:
    assert report_main(["--scan", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 3
    assert "scan output not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert report_main(["--scan", scan, "--output", str(tmp_path / "r"), "--scan-date", "yesterday"]) == 2
    assert "--scan-date" in capsys.readouterr().err


def test_report_inside_its_scan_or_filter_output_is_a_config_error(tmp_path, capsys) -> None:
    """Checked before anything is read or written: a report written inside the scan output left report.html,
    PNGs and thumbs/ there with exit 0, and the next read of that scan failed on them as Parquet."""
    scan, clean = tmp_path / "scan", tmp_path / "clean"
    for argv, flag in [
        (["--output", str(scan)], "scan"),
        (["--output", str(scan / "report")], "scan"),
        (["--filter-output", str(clean), "--output", str(clean / "report")], "filter_output"),
    ]:
        assert report_main(["--scan", str(scan), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"output must not be the {flag} folder or inside it" in err, err
    assert list(tmp_path.iterdir()) == []


def test_report_on_s3(scan, s3fs_client, tmp_path, capsys) -> None:
    fs = s3fs_client
    fs.mkdir("bkt")
    fs.put(scan + "/", "bkt/scan/", recursive=True)
    assert report_main(["--scan", "s3://bkt/scan", "--output", "s3://bkt/report"]) == 0
    capsys.readouterr()
    fs.invalidate_cache()
    remote = json.loads(fs.cat_file("bkt/report/summary.json"))
    assert report_main(["--scan", scan, "--output", str(tmp_path / "local")]) == 0
    assert remote == json.loads((tmp_path / "local" / "summary.json").read_text())
    assert {Path(p).name for p in fs.find("bkt/report")} >= {"report.html", "score_distribution.png"}


def test_report_memory_benchmark_runs_as_a_script(tmp_path: Path) -> None:
    """benchmarks/report.py as a user runs it (a script from the repository root: its folder first on
    sys.path, the checkout on PYTHONPATH) at a tiny size: the synthetic scan it writes is one the real report
    job reads, and its results files hold a row per (history, case) with the peak RSS."""
    args = ["--rows-per-date", "200", "--dates", "1,2", "--out", str(tmp_path)]
    # its synthetic scans go to a TemporaryDirectory: under this test's tmp dir too
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = run_python("benchmarks/report.py", *args, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(headline["report_peak_rss_mb"]) == {"1", "2"}
    record = json.loads((tmp_path / "report.json").read_text())
    cases = {(r["dates"], r["case"]) for r in record["results"]}
    assert cases == {(n, c) for n in (1, 2) for c in ("report", "load_all_columns", "load_day_plus_trend")}
    assert all(r["peak_rss_mb"] > 0 for r in record["results"])
    assert "Report memory vs scan history" in (tmp_path / "report.md").read_text()
