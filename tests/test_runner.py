"""The sharded-run core (`pipeline.runner`), the scan-output contract's readers (`pipeline.output`) and the
scan's shard writer (`pipeline.scan.write`): skip/complete/raise rules, marker LAST, rows carrying the
detector the scoring actor loaded, and a local in-process scan whose every marker records its writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import output, runner
from pipeline.scan.write import ShardSink
from tests.support.scan_batches import prepared, run_context, scored


def _execute(results: list[tuple[str, dict]]):
    seen: list[list[str]] = []

    def execute(todo: list[str]):
        seen.append(list(todo))
        yield from results

    return execute, seen


def test_run_shards_skips_marked_shards_reports_progress_and_checks() -> None:
    execute, seen = _execute([("b", {"rows": 2}), ("b", {"rows": 2}), ("c", {"rows": 3})])
    calls = []
    progress = runner.run_shards(
        ["a", "b", "c"],
        done={"a"},
        execute=execute,
        on_shard=lambda s, summary, p: calls.append((s, p.done, p.todo, p.skipped)),
    )
    assert seen == [["b", "c"]] and calls == [("b", 1, 2, 1), ("c", 2, 2, 1)]  # the duplicate "b" is ignored
    assert progress.summaries == {"b": {"rows": 2}, "c": {"rows": 3}}
    assert progress.completed == {"b", "c"} and progress.last == ("c", {"rows": 3})
    lean = runner.run_shards(["a", "b", "c"], done={"a"}, execute=execute, keep=False)
    assert lean.summaries == {} and lean.completed == {"b", "c"} and lean.done == 2

    def budget(p: runner.Progress) -> None:
        if p.last is not None and p.last[1]["rows"] > 1:
            raise RuntimeError("over budget")

    with pytest.raises(RuntimeError, match="over budget"):
        runner.run_shards(
            ["a", "b", "c"], done=set(), execute=_execute([("b", {"rows": 2})])[0], check=budget
        )


def test_run_shards_raises_for_missing_and_unexpected_shards() -> None:
    with pytest.raises(runner.IncompleteRun, match=r"1 shard\(s\) never completed: \['c'\]"):
        runner.run_shards(["b", "c"], done=set(), execute=_execute([("b", {})])[0])
    with pytest.raises(runner.IncompleteRun, match="unexpected shard 'z'"):
        runner.run_shards(["b"], done=set(), execute=_execute([("z", {})])[0])
    nothing, seen = _execute([])
    assert runner.run_shards(["a"], done={"a"}, execute=nothing).done == 0 and seen == []


def test_commit_shard_writes_the_marker_last(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where a folder should be")
    marker = tmp_path / "_shards" / "x.json"
    with pytest.raises(OSError):
        runner.commit_shard(
            [(str(tmp_path / "ok.parquet"), b"1"), (str(tmp_path / "blocked" / "x"), b"2")],
            str(marker),
            {"rows": 1},
        )
    assert not marker.exists()
    runner.commit_shard([(str(tmp_path / "ok.parquet"), b"1")], str(marker), {"rows": 1})
    assert json.loads(marker.read_text()) == {"rows": 1}


def test_rows_carry_the_detector_the_scoring_actor_loaded(tmp_path: Path) -> None:
    rows = scored(prepared(tmp_path))
    n = len(rows["status"])
    rows["_detector_id"] = np.array(["tiny@new"] * (n - 2) + ["tiny@old"] * 2, dtype=object)
    rows["_threshold"] = np.array([0.7] * (n - 2) + [0.3] * 2, np.float32)
    sink = ShardSink(run_context(), str(tmp_path / "out"), "2026-01-02", writer_node="node-A")
    done = sink.add(rows)
    (stats,) = done
    paths = output.RunPaths(str(tmp_path / "out"), "2026-01-02")
    table = pq.read_table(paths.parquet(stats["shard"]))
    assert table.column("detector_id").to_pylist() == ["tiny@new"] * (n - 2) + ["tiny@old"] * 2
    assert table.column("threshold").to_pylist() == pytest.approx([0.7] * (n - 2) + [0.3] * 2)
    assert stats["writer_node"] == "node-A" and stats["detector_id"] == "tiny@new,tiny@old"
    assert json.loads(Path(paths.marker(stats["shard"])).read_text()) == stats
    # a retried task delivering the same rows again changes nothing
    assert sink.add(rows) == [] and sink.duplicates() == n


def test_open_scan_reads_every_date_and_resolves_dates(tmp_path: Path) -> None:
    rows = scored(prepared(tmp_path))
    out = str(tmp_path / "out")
    for day in ("2026-01-01", "2026-01-03"):
        ShardSink(run_context(), out, day).add(rows)
    assert output.list_dates(out) == ["2026-01-01", "2026-01-03"]
    assert output.resolve_scan_date(out) == "2026-01-03"
    with pytest.raises(output.ScanOutputError, match="have: 2026-01-01, 2026-01-03"):
        output.resolve_scan_date(out, "2026-01-02")
    n = len(rows["status"])
    every = output.read_scan(out, columns=["key", "status"])
    assert every.num_rows == 2 * n and set(every.column("scan_date").to_pylist()) == {
        "2026-01-01",
        "2026-01-03",
    }
    assert output.read_scan(out, scan_date="2026-01-01").num_rows == n
    with pytest.raises(output.ScanOutputError, match="not found"):
        output.resolve_scan_date(str(tmp_path / "nope"))


def test_local_scan_reports_each_shard_and_a_run_level_check_stops_it(tmp_path: Path) -> None:
    """run_scan with the in-process executor: the progress hook sees every shard once it is durable; a
    run-level check that raises fails the run (run.json says so), and --resume completes it exactly once."""
    from pipeline.models import create_detector, save_detector
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import ScanFailed, run_scan
    from tests.support.shards import write_shards

    write_shards(str(tmp_path / "in"), 3, 4)
    meta = save_detector(create_detector("tiny-mole", pretrained=None), str(tmp_path / "det"))
    cfg = ScanConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        detector=str(tmp_path / "det"),
        scan_date="2026-02-01",
        batch_size=8,
    )
    seen: list[tuple[str, str, int]] = []
    run = run_scan(cfg, on_shard=lambda s, st, p: seen.append((s, st["writer_node"], p.done)))
    assert run["status"] == "succeeded" and [d for _, _, d in seen] == [1, 2, 3]
    assert all(w.startswith("host:") for _, w, _ in seen)
    table = pq.read_table(str(tmp_path / "out" / "scan_date=2026-02-01"))
    assert table.num_rows == 12 and set(table.column("detector_id").to_pylist()) == {meta.detector_id}

    def budget(p) -> None:
        if p.done >= 1:
            raise ScanFailed("error budget exceeded")

    stopped = cfg.model_copy(update={"output": str(tmp_path / "out2")})
    with pytest.raises(ScanFailed, match="budget"):
        run_scan(stopped, check=budget)
    paths = output.RunPaths(stopped.output, "2026-02-01")
    assert json.loads(Path(paths.run_file("run.json")).read_text())["status"] == "failed"
    assert len(output.completed_shards(paths)) == 1
    resumed = run_scan(stopped.model_copy(update={"resume": True}))
    assert resumed["status"] == "succeeded" and resumed["attempts"][-1]["shards_skipped"] == 1
    keys = pq.read_table(paths.data_dir).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 12
