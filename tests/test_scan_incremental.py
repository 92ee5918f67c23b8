"""Incremental nightly scans (`--incremental`): unchanged shards are carried forward from the latest complete,
succeeded night with the same scoring, and tonight's partition equals a full rescan, row for row, for every
scoring column — for added, modified (same name, new bytes), deleted and unchanged shards, on local disk and
on the S3 server. What cannot be trusted is scanned instead, and a resumed incremental night finishes once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipeline import output
from pipeline.scan.carry import CarryItem, Part, carried_then_rest, carry_shard
from pipeline.scan.config import ScanConfig
from pipeline.scan.job import ScanFailed, run_scan
from pipeline.storage import exists, join, list_shard_objects
from tests.support.shards import good_samples, write_shard, write_shards

NIGHT1, NIGHT2, NIGHT3 = "2026-03-01", "2026-03-02", "2026-03-03"
# every column the scan derives from an image and the detector(s): the output contract's columns less the
# run's own (schema version, run id, time) and the row's address (source, shard, key)
RUN_AND_ADDRESS = {"schema_version", "run_id", "scanned_at", "source", "shard", "shard_url", "key"}
SCORING_COLUMNS = [c for c in output.COLUMNS if c not in RUN_AND_ADDRESS]


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> str:
    from pipeline.models import create_detector, save_detector

    det = str(tmp_path_factory.mktemp("det") / "tiny")
    save_detector(create_detector("tiny-mole", pretrained=None), det)
    return det


def _cfg(inp: str, out: str, det: str, date: str, **update: Any) -> ScanConfig:
    fields: dict[str, Any] = {"batch_size": 8, "incremental": True, **update}
    return ScanConfig(input=inp, output=out, detector=det, scan_date=date, **fields)


def _rows(out: str, date: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(shard, key) -> the scoring columns of that night's rows, read back through `open_scan` (pyarrow)."""
    rows = output.read_scan(out, scan_date=date, columns=["shard", "key", *SCORING_COLUMNS]).to_pylist()
    found = {(r.pop("shard"), r.pop("key") or ""): {k: r[k] for k in SCORING_COLUMNS} for r in rows}
    assert len(found) == len(rows), "a (shard, key) appears twice"
    return found


def _markers(out: str, date: str) -> dict[str, dict[str, Any]]:
    paths = output.RunPaths(out, date)
    return {s: output.read_json(paths.marker(s)) or {} for s in output.completed_shards(paths)}


def _night2_input(inp: str) -> None:
    """Tonight's input: shard 1 rewritten with other bytes (same name), shard 2 deleted, shard 4 added."""
    write_shard(join(inp, "shard-000001.tar"), good_samples(3, seed=101, prefix="0001_"))
    write_shard(join(inp, "shard-000004.tar"), good_samples(3, seed=104, prefix="0004_"))
    if "://" in inp:
        import s3fs

        s3fs.S3FileSystem().rm(join(inp, "shard-000002.tar").removeprefix("s3://"))
    else:
        os.remove(join(inp, "shard-000002.tar"))


def _check_night2_equals_full_rescan(inp: str, out: str, ref: str, det: str) -> dict[str, Any]:
    """Night 2 (incremental) vs a full scan of the same input: same rows, same scoring values; carried shards'
    markers say where they came from, and the run says what was scanned, carried and removed."""
    night1 = run_scan(_cfg(inp, out, det, NIGHT1))
    assert night1["status"] == "succeeded" and night1["totals"]["shards_carried"] == 0
    assert "no earlier scan" in night1["incremental"]["full_scan_reason"]
    before = {s: m["identity"] for s, m in _markers(out, NIGHT1).items()}
    assert set(before) == {f"shard-00000{i}" for i in range(4)} and all(before.values())
    _night2_input(inp)
    said: list[str] = []
    night2 = run_scan(_cfg(inp, out, det, NIGHT2), announce=said.append)
    full = run_scan(_cfg(inp, ref, det, NIGHT2, incremental=False))
    assert night2["status"] == full["status"] == "succeeded"

    got, want = _rows(out, NIGHT2), _rows(ref, NIGHT2)
    assert got.keys() == want.keys() and len(got) == 12  # shards 0, 1 (new bytes), 3, 4
    for k in want:
        assert got[k] == want[k], k
    assert {s for s, _ in got} == {"shard-000000", "shard-000001", "shard-000003", "shard-000004"}

    markers = _markers(out, NIGHT2)
    carried = {s for s, m in markers.items() if m.get("carried_from")}
    assert carried == {"shard-000000", "shard-000003"}
    for s in carried:
        assert markers[s]["carried_from"] == {
            "scan_date": NIGHT1,
            "run_id": night1["run_id"],
            "identity": before[s],
        }
        assert markers[s]["run_id"] == night1["run_id"] and markers[s]["identity"] == before[s]
    assert markers["shard-000001"]["identity"] != before["shard-000001"]  # scored tonight, its new identity
    assert markers["shard-000001"]["run_id"] == night2["run_id"]
    # carried rows keep the run that scored them (a byte copy); scanned rows have tonight's
    runs = output.read_scan(out, scan_date=NIGHT2, columns=["shard", "run_id"]).to_pylist()
    by_run: dict[str, set[str]] = {}
    for r in runs:
        by_run.setdefault(r["shard"], set()).add(r["run_id"])
    assert by_run == {
        "shard-000000": {night1["run_id"]},
        "shard-000003": {night1["run_id"]},
        "shard-000001": {night2["run_id"]},
        "shard-000004": {night2["run_id"]},
    }
    inc, totals = night2["incremental"], night2["totals"]
    assert inc["source_scan_date"] == NIGHT1 and inc["source_run_id"] == night1["run_id"]
    assert (inc["added"], inc["changed"], inc["removed"]) == (1, 1, 1)
    assert (totals["shards_done"], totals["shards_carried"], totals["rows_carried"]) == (4, 2, 6)
    assert totals["rows"] == full["totals"]["rows"] and totals["counts"] == full["totals"]["counts"]
    assert night2["attempts"][-1]["rows_written"] == 6 and night2["attempts"][-1]["shards_carried"] == 2
    assert said and f"carrying 2 unchanged shard(s) from {NIGHT1}" in said[0] and "1 removed since" in said[0]
    stored = output.read_json(output.RunPaths(out, NIGHT2).run_file("run.json"))
    assert stored is not None and stored["totals"]["shards_carried"] == 2 and stored["scoring"]
    # the partition is complete by itself: open_scan reads it like any other night
    assert output.read_scan(out, scan_date=NIGHT2).num_rows == 12
    return night2


def test_incremental_night_equals_a_full_rescan_local(tmp_path: Path, detector: str) -> None:
    inp, out, ref = str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "ref")
    write_shards(inp, 4, 3)
    night2 = _check_night2_equals_full_rescan(inp, out, ref, detector)
    # the documented glob (docs/queries.md) reads tonight's partition like any other: DuckDB, hive partitions
    [(n, carried_rows)] = duckdb.sql(
        f"SELECT count(*), count(*) FILTER (WHERE run_id <> '{night2['run_id']}') "
        f"FROM read_parquet('{output.parquet_glob(out)}', hive_partitioning = true) WHERE scan_date = "
        f"'{NIGHT2}'"
    ).fetchall()
    assert (n, carried_rows) == (12, 6)
    # the filter reads tonight's partition unchanged: every shard of tonight's input, every sample accounted
    # for
    from pipeline.cli.filter_shards import main as filter_main

    clean = tmp_path / "clean"
    assert filter_main(["--scan", out, "--scan-date", NIGHT2, "--input", inp, "--output", str(clean)]) == 0
    assert sorted(p.name for p in clean.glob("*.tar")) == [f"shard-00000{i}.tar" for i in (0, 1, 3, 4)]
    # the report of the night says what was scanned and carried
    from pipeline.report.build import ReportConfig, build_report

    summary = build_report(ReportConfig(scan=out, output=str(tmp_path / "report"), scan_date=NIGHT2))
    assert summary["totals"]["rows"] == 12
    assert summary["header"]["shards"] == {
        "total": 4,
        "scanned": 2,
        "carried": 2,
        "carried_from": NIGHT1,
        "removed_since": 1,
        "full_scan_reason": None,
    }
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"2 scanned, 2 carried from {NIGHT1}, 1 removed since" in page


def test_incremental_night_equals_a_full_rescan_on_s3(s3_server: dict[str, str], detector: str) -> None:
    from tests.support.shards import make_bucket

    bucket = make_bucket("incremental")
    inp, out, ref = f"{bucket}/in", f"{bucket}/out", f"{bucket}/ref"
    write_shards(inp, 4, 3)
    ids = dict(list_shard_objects(inp))
    assert all(v and v.startswith("etag:") for v in ids.values())  # S3: ETag + size from the listing
    _check_night2_equals_full_rescan(inp, out, ref, detector)


def test_what_cannot_be_trusted_is_scanned(tmp_path: Path, detector: str) -> None:
    """Other scoring -> full scan saying why; a failed night is never a source (an older good one is); a
    source marker without identity or a source Parquet that is gone -> that shard is scanned."""
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_shards(inp, 3, 3)
    night1 = run_scan(_cfg(inp, out, detector, NIGHT1))
    said: list[str] = []
    other = run_scan(_cfg(inp, out, detector, NIGHT2, max_pixels=10_000_000), announce=said.append)
    assert other["totals"]["shards_carried"] == 0
    assert "max_pixels" in other["incremental"]["full_scan_reason"] and "full scan" in said[0]
    log = Path(output.RunPaths(out, NIGHT2).run_file("log.jsonl"))
    assert not log.exists() or "incremental_full_scan" in log.read_text()

    # night 2 (other scoring) marked failed: night 3 with the first scoring takes night 1
    run2 = Path(output.RunPaths(out, NIGHT2).run_file("run.json"))
    run2.write_text(json.dumps({**json.loads(run2.read_text()), "status": "failed"}))
    src = output.RunPaths(out, NIGHT1)
    m0 = Path(src.marker("shard-000000"))
    m0.write_text(json.dumps({k: v for k, v in json.loads(m0.read_text()).items() if k != "identity"}))
    Path(src.parquet("shard-000001")).unlink()
    Path(src.marker("shard-000003")).write_text("{not json")  # a corrupt source marker: not trusted either
    write_shard(join(inp, "shard-000003.tar"), good_samples(3, seed=103, prefix="0003_"))
    night3 = run_scan(_cfg(inp, out, detector, NIGHT3))
    inc = night3["incremental"]
    assert inc["source_scan_date"] == NIGHT1 and inc["source_run_id"] == night1["run_id"]
    assert (inc["no_identity"], inc["source_missing"], inc["planned_carry"]) == (2, 1, 1)
    markers = _markers(out, NIGHT3)
    assert [s for s, m in markers.items() if m.get("carried_from")] == ["shard-000002"]
    assert markers["shard-000000"]["run_id"] == night3["run_id"] and markers["shard-000000"]["identity"]
    assert output.read_scan(out, scan_date=NIGHT3).num_rows == 12


def test_a_carry_whose_source_vanished_is_scanned(tmp_path: Path, detector: str) -> None:
    """A source part deleted after the comparison: the copy fails on the worker, no marker is written, and the
    shard goes back to the scan list."""
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_shards(inp, 1, 3)
    run_scan(_cfg(inp, out, detector, NIGHT1))
    src, dst = output.RunPaths(out, NIGHT1), output.RunPaths(out, NIGHT2)
    marker = _markers(out, NIGHT1)["shard-000000"]
    size = Path(src.parquet("shard-000000")).stat().st_size
    item = CarryItem(
        shard="shard-000000",
        url=join(inp, "shard-000000.tar"),
        identity=marker["identity"],
        source_date=NIGHT1,
        source_run_id=marker["run_id"],
        source_marker=src.marker("shard-000000"),
        marker=dst.marker("shard-000000"),
        parts=(Part(src.parquet("shard-000000"), dst.parquet("shard-000000"), size, 3),),
    )
    bad = CarryItem(**{**item.__dict__, "parts": (Part(item.parts[0].src, item.parts[0].dst, size, 4),)})
    res = carry_shard(bad)
    assert res.summary is None and "4" in (res.problem or "") and not exists(dst.marker("shard-000000"))
    Path(src.parquet("shard-000000")).unlink()
    todo: list[tuple[str, str]] = []
    got = list(carried_then_rest(iter([carry_shard(item)]), todo))
    assert got == [] and todo == [(item.url, "shard-000000")] and not exists(dst.marker("shard-000000"))


def test_resume_of_an_interrupted_incremental_night_finishes_it_once(tmp_path: Path, detector: str) -> None:
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_shards(inp, 4, 3)
    night1 = run_scan(_cfg(inp, out, detector, NIGHT1))
    write_shard(join(inp, "shard-000004.tar"), good_samples(3, seed=104, prefix="0004_"))

    def stop(p: Any) -> None:
        if p.done >= 2:
            raise ScanFailed("stopped by the test")

    with pytest.raises(ScanFailed, match="stopped"):
        run_scan(_cfg(inp, out, detector, NIGHT2), check=stop)
    paths = output.RunPaths(out, NIGHT2)
    done = len(output.completed_shards(paths))  # copies already in flight in the pool finish too
    assert 2 <= done < 5
    resumed = run_scan(_cfg(inp, out, detector, NIGHT2, resume=True))
    assert resumed["status"] == "succeeded" and resumed["attempts"][-1]["shards_skipped"] == done
    assert resumed["incremental"]["source_scan_date"] == NIGHT1
    totals = resumed["totals"]
    assert (totals["shards_done"], totals["shards_carried"], totals["rows"]) == (5, 4, 15)
    rows = output.read_scan(out, scan_date=NIGHT2, columns=["key", "run_id"])
    keys = rows.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 15
    assert rows.column("run_id").to_pylist().count(night1["run_id"]) == 12


@pytest.mark.slow
def test_incremental_ray_job_carries_on_the_workers(shared_s3_ray: dict, detector: str) -> None:
    """`ray job submit` of jobs/scan_bucket.py --incremental on the shared head, input and output on S3: night
    2 carries the unchanged shards with Ray tasks (their markers name a Ray node, not the driver's host),
    scores the added one, and the console says what it carried."""
    import sys

    from tests.support.ray_cluster import SMALL_SCAN, submit_job
    from tests.support.shards import make_bucket

    bucket = make_bucket("incremental-ray")
    inp, out = f"{bucket}/in", f"{bucket}/out"
    write_shards(inp, 3, 3)
    scan = [sys.executable, str(Path(__file__).resolve().parents[1] / "jobs" / "scan_bucket.py")]
    args = ["--input", inp, "--output", out, "--detector", detector, "--batch-size", "8", *SMALL_SCAN]
    first = submit_job(shared_s3_ray["head"], [*scan, *args, "--incremental", "--scan-date", NIGHT1])
    assert first.status == "SUCCEEDED", first.logs[-3000:]
    write_shard(join(inp, "shard-000003.tar"), good_samples(3, seed=103, prefix="0003_"))
    second = submit_job(shared_s3_ray["head"], [*scan, *args, "--incremental", "--scan-date", NIGHT2])
    assert second.status == "SUCCEEDED", second.logs[-3000:]
    assert f"carrying 3 unchanged shard(s) from {NIGHT1}, scanning 1" in second.logs
    assert f"4 shards (1 scanned, 3 carried from {NIGHT1}, 0 removed since)" in second.logs
    markers = _markers(out, NIGHT2)
    carried = {s: m for s, m in markers.items() if m.get("carried_from")}
    assert set(carried) == {"shard-000000", "shard-000001", "shard-000002"}
    assert all(not m["writer_node"].startswith("host:") for m in carried.values())  # a Ray task wrote it
    one, two = _rows(out, NIGHT1), _rows(out, NIGHT2)
    assert {k: v for k, v in two.items() if k[0] != "shard-000003"} == one and len(two) == 12
