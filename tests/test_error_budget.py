"""The error budget (pipeline.runner.ErrorBudget): one verdict for the scan and the filter.

Rates are checked against counts computed here independently; the scan's budget is exercised through run_scan
with the in-process executor (the Ray path is the same runner; tests/test_console.py runs the job on Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import output
from pipeline.runner import ErrorBudget, ErrorBudgetExceeded, ErrorTally, Progress, run_shards


def test_budget_verdict_names_the_counts_that_broke_it() -> None:
    budget = ErrorBudget(max_shard_error_rate=0.5, max_sample_error_rate=0.25)
    ok = budget.check(ErrorTally(shards=6, failed_shards=3, samples=100, failed_samples=25))
    assert (
        not ok["exceeded"] and ok["shard_error_rate"] == 0.5 and ok["sample_error_rate"] == 0.25
    )  # not above
    with pytest.raises(ErrorBudgetExceeded) as exc:
        budget.check(ErrorTally(shards=6, failed_shards=5, samples=4, failed_samples=0))
    msg = str(exc.value)
    assert "5 of 6 shards failed" in msg and "--max-shard-error-rate 0.5" in msg and "samples" not in msg
    assert "\n" not in msg and exc.value.record["exceeded"] and exc.value.record["failed_shards"] == 5
    with pytest.raises(
        ErrorBudgetExceeded, match=r"26 of 100 samples failed \(26.0% > --max-sample-error-rate"
    ):
        budget.check(ErrorTally(shards=6, failed_shards=0, samples=100, failed_samples=26))
    assert not ErrorBudget(1.0, 1.0).check(ErrorTally(4, 4, 10, 10))["exceeded"]  # 1.0 disables
    assert not budget.check(ErrorTally())["exceeded"]  # an empty run breaks nothing


def test_guard_stops_a_run_once_the_shard_budget_cannot_be_met() -> None:
    """6 shards, budget 0.5: the 4th failed shard makes > 3 of 6 certain; the run stops there, not at the end,
    and the executor is closed (its resources released) when the check raises."""
    budget = ErrorBudget(0.5, 1.0)
    tally = {True: ErrorTally(1, 1, 0, 0), False: ErrorTally(1, 0, 4, 0)}
    order = [("a", True), ("b", False), ("c", True), ("d", True), ("e", True), ("f", False)]
    closed: list[bool] = []

    def execute(todo: list[str]):
        try:
            for shard, bad in order:
                yield shard, {"bad": bad}
        finally:
            closed.append(True)

    seen: list[str] = []
    with pytest.raises(ErrorBudgetExceeded, match=r"stopped early.*4 of 6 shards failed"):
        run_shards(
            [s for s, _ in order],
            done=set(),
            execute=execute,
            on_shard=lambda s, _st, _p: seen.append(s),
            check=budget.guard(6, ErrorTally(), lambda st: tally[st["bad"]]),
        )
    assert seen == ["a", "b", "c", "d", "e"] and closed == [True]
    # earlier attempts' failures count: 3 failed before, one more now is already 4 of 6
    check = budget.guard(6, ErrorTally(3, 3, 0, 0), lambda st: tally[st["bad"]])
    progress = Progress(total=6, skipped=3, todo=3, done=1, last=("d", {"bad": True}))
    with pytest.raises(ErrorBudgetExceeded, match="4 of 6"):
        check(progress)
    check = budget.guard(6, ErrorTally(3, 3, 0, 0), lambda st: tally[st["bad"]])
    check(Progress(total=6, skipped=3, todo=3, done=1, last=("d", {"bad": False})))


def test_error_budget_guard_keeps_a_running_tally() -> None:
    """Each shard is added once, when it arrives (the guard never re-sums what came before): a call that sees
    no new shard adds nothing, and a run without kept summaries is judged the same."""
    budget = ErrorBudget(max_shard_error_rate=0.5, max_sample_error_rate=1.0)
    check = budget.guard(4, ErrorTally(), lambda st: ErrorTally(1, int(st["bad"]), 0, 0))
    p = Progress(total=4, skipped=0, todo=4, done=1, last=("a", {"bad": True}))
    check(p)
    check(p)  # the same shard again: still 1 failed of 4
    p.done, p.last = 2, ("b", {"bad": True})
    check(p)  # 2 of 4 is not above 0.5
    p.done, p.last = 3, ("c", {"bad": True})
    with pytest.raises(ErrorBudgetExceeded, match="3 of 4 shards failed"):
        check(p)


@pytest.fixture(scope="module")
def scan_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """6 shards of 3 samples, 5 of them unreadable (not tar archives), and a tiny random-init detector."""
    from pipeline.models import create_detector, save_detector
    from tests.support.shards import write_raw, write_shards

    root = tmp_path_factory.mktemp("budget")
    write_shards(str(root / "in"), 1, 3)
    for i in range(1, 6):
        write_raw(str(root / "in" / f"shard-{i:06d}.tar"), b"not a tar archive")
    save_detector(create_detector("tiny-mole", pretrained=None), str(root / "det"))
    return {"root": str(root), "input": str(root / "in"), "detector": str(root / "det")}


def test_scan_over_budget_fails_keeps_valid_rows_and_resumes(scan_world: dict[str, str]) -> None:
    """5 of 6 shards unreadable: the run is failed with the counts in run.json; what was written reads back
    (Parquet + markers); --resume with a looser budget completes the run without rescanning a shard."""
    import pyarrow.parquet as pq

    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import ScanFailed, run_scan

    out = str(Path(scan_world["root"]) / "out")
    cfg = ScanConfig(
        input=scan_world["input"],
        output=out,
        detector=scan_world["detector"],
        scan_date="2026-03-01",
        batch_size=8,
    )
    with pytest.raises(ScanFailed, match=r"error budget exceeded.*of 6 shards failed"):
        run_scan(cfg)
    paths = output.RunPaths(out, "2026-03-01")
    run = json.loads(Path(paths.run_file("run.json")).read_text())
    assert run["status"] == "failed" and run["error_budget"]["exceeded"]
    assert run["error_budget"]["max_shard_error_rate"] == 0.5 and run["error_budget"]["shards"] == 6
    marked = output.completed_shards(paths)
    assert run["error_budget"]["failed_shards"] == sum(1 for s in marked if s != "shard-000000") > 3
    rows = pq.read_table(paths.data_dir).to_pylist()  # everything written is valid, one file per marked shard
    assert {r["shard"] for r in rows} == marked
    assert sum(r["status"] == "shard_error" for r in rows) == run["error_budget"]["failed_shards"]

    looser = cfg.model_copy(update={"resume": True, "max_shard_error_rate": 1.0})
    done = run_scan(looser)
    assert done["status"] == "succeeded" and done["attempts"][-1]["shards_skipped"] == len(marked)
    assert done["error_budget"] == {
        **done["error_budget"],
        "shards": 6,
        "failed_shards": 5,
        "exceeded": False,
    }
    rows = pq.read_table(paths.data_dir).to_pylist()
    assert (
        sum(r["status"] == "shard_error" for r in rows) == 5 and sum(r["status"] == "ok" for r in rows) == 3
    )


def test_scan_within_budget_succeeds_and_records_it(scan_world: dict[str, str]) -> None:
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import run_scan

    cfg = ScanConfig(
        input=scan_world["input"],
        output=str(Path(scan_world["root"]) / "ok"),
        detector=scan_world["detector"],
        scan_date="2026-03-01",
        batch_size=8,
        max_shard_error_rate=0.9,
    )
    run = run_scan(cfg)
    rec = run["error_budget"]
    assert run["status"] == "succeeded" and not rec["exceeded"]
    assert (rec["shards"], rec["failed_shards"], rec["samples"], rec["failed_samples"]) == (6, 5, 3, 0)
    assert abs(rec["shard_error_rate"] - 5 / 6) < 1e-6


def test_filter_cli_over_budget_exits_1_naming_the_counts_and_writes_nothing(
    scan_world: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The filter's budget counts the scan's errors for the shards it cleans (5 of 6 shards unreadable, left
    out with on_shard_error skip): exit 1 with one line and nothing written; a looser budget exits 0."""

    from pipeline.cli import filter_shards
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import run_scan

    root = Path(scan_world["root"])
    scan = str(root / "scan-for-filter")
    run_scan(
        ScanConfig(
            input=scan_world["input"],
            output=scan,
            detector=scan_world["detector"],
            scan_date="2026-03-02",
            batch_size=8,
            max_shard_error_rate=1.0,
        )
    )
    capsys.readouterr()  # the scan's own log lines
    args = ["--scan", scan, "--input", scan_world["input"], "--on-shard-error", "skip"]
    assert filter_shards.main([*args, "--output", str(root / "clean")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()  # the verdict only: found while planning
    assert len(lines) == 1, lines
    # the plans arrive one by one: the 4th failed shard of 6 already breaks the 0.5 budget, the run stops
    assert lines[0].startswith(
        "filter failed: error budget exceeded (run stopped early): 4 of 6 shards failed"
    ), lines
    assert "--max-shard-error-rate 0.5" in lines[0] and "nothing was written" in lines[0]
    assert not (root / "clean").exists()
    assert filter_shards.main([*args, "--output", str(root / "clean2"), "--max-shard-error-rate", "0.9"]) == 0
    run = json.loads((root / "clean2" / "_run" / "run.json").read_text())
    assert run["error_budget"]["failed_shards"] == 5 and not run["error_budget"]["exceeded"]
    assert (root / "clean2" / "_SUCCESS").exists()


def test_resume_with_nothing_to_continue_says_so_and_records_a_fresh_run(scan_world: dict[str, str]) -> None:
    """--resume of a date with no earlier output: one console line says it starts fresh, and run.json records
    `resumed: false` (it was not a resume); the work itself is the same as a plain run."""
    import json

    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import run_scan

    out = Path(scan_world["root"]) / "fresh-resume"
    said: list[str] = []
    cfg = ScanConfig(
        input=scan_world["input"],
        output=str(out),
        detector=scan_world["detector"],
        scan_date="2026-03-05",
        batch_size=8,
        resume=True,
        max_shard_error_rate=1.0,
    )
    run = run_scan(cfg, announce=said.append)
    assert run["status"] == "succeeded"
    assert any("--resume: no earlier run of 2026-03-05" in s and "starting it fresh" in s for s in said), said
    record = json.loads((out / "_run" / "2026-03-05" / "run.json").read_text())
    assert record["attempts"][0]["resumed"] is False
