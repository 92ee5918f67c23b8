"""The scan date is one rule (`pipeline.output.ScanDate`) for every job that takes `--scan-date`: a
calendar day written YYYY-MM-DD. A bad one is ONE configuration-error line naming the flag (exit 2) before
any work, the same in the scan, the filter, the report and the re-score; a path-like value never reaches a
partition path."""

from __future__ import annotations

import pytest

from pipeline.cli.filter_shards import main as filter_main
from pipeline.cli.report import main as report_main
from pipeline.cli.rescore import main as rescore_main
from pipeline.cli.scan_bucket import main as scan_main


def _jobs(tmp_path) -> dict:
    scan, out = str(tmp_path / "scan"), str(tmp_path / "out")
    return {
        "scan": (scan_main, ["--input", str(tmp_path / "in"), "--output", out, "--detector", "x"]),
        "filter": (
            filter_main,
            ["--input", str(tmp_path / "in"), "--scan", scan, "--output", out, "--threshold", "0.5"],
        ),
        "report": (report_main, ["--scan", scan, "--output", out]),
        "rescore": (rescore_main, ["--scan", scan, "--detector", "x", "--output", out]),
    }


@pytest.mark.parametrize("job", ["scan", "filter", "report", "rescore"])
@pytest.mark.parametrize("date", ["2026-13-01", "2026-02-30", "26-01-01", "../../etc"])
def test_a_bad_scan_date_is_one_line_naming_the_flag_in_every_job(tmp_path, capsys, job, date) -> None:
    main, args = _jobs(tmp_path)[job]
    capsys.readouterr()
    code = main([*args, "--scan-date", date])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("configuration error: "), err
    assert "--scan-date: Value error, must be a calendar day written YYYY-MM-DD" in err[0], err
    assert not (tmp_path / "out").exists()
