"""The README's first command, `make demo` (`jobs/scan_bucket.py --demo` -> `pipeline.cli.demo.run_demo`),
at a small size: its real steps (demo shards with a broken shard and a corrupt sample, a training set, a tiny
detector trained by the training job on Ray Train, the scan with the Ray executor, the DuckDB summary), on
the test run's shared Ray head. Every sample of the shards it wrote (counted here from the tar files) is one
row of the scan, the broken inputs are status rows, the summary shows the Parquet's counts, and a second run
reuses every step's output and reports the same run."""

from __future__ import annotations

import re
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli.demo import DemoSize, run_demo
from pipeline.engine.scan import RayScanExecutor

# 4 families x (4 reals + 4 fakes) = 32 samples in 4 shards of 8; 2 families x 8 x 2 training images; 1 epoch
SMALL = DemoSize(scan_per_class=4, shard_size=8, train_per_class=8, epochs=1)

pytestmark = pytest.mark.slow


def _tar_keys(path: Path) -> list[str]:
    """Sample keys of a tar (the member name up to its first dot), in order, without repeats."""
    with tarfile.open(path) as tf:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tf.getmembers() if m.isreg()))


def _mtimes(*dirs: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, shared_s3_ray: dict) -> tuple[Path, int, str]:
    """`make demo`'s call (the Ray scan executor; the training job on Ray Train), attached to the test run's
    shared Ray head instead of starting a local Ray in each step (RAY_ADDRESS, as on a cluster)."""
    demo_dir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ADDRESS", shared_s3_ray["head"].address)
        code, text = run_demo(demo_dir, executor=RayScanExecutor(), size=SMALL)
    return demo_dir, code, text


def _rows(scan: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(scan.glob("scan_date=*/*.parquet"))])


def test_demo_scans_every_sample_it_wrote(demo: tuple[Path, int, str]) -> None:
    demo_dir, code, text = demo
    assert code == 0, text
    assert text.startswith("demo scan succeeded"), text
    assert (demo_dir / "detector" / "detector.safetensors").is_file()  # trained by the training job
    assert len(list((demo_dir / "train").rglob("*.png"))) == 2 * 2 * SMALL.train_per_class

    good = sorted((demo_dir / "shards").glob("shard-0*.tar"))
    expected = {(p.stem, k) for p in good for k in _tar_keys(p)}
    assert len(expected) == 4 * 2 * SMALL.scan_per_class and len(good) == len(expected) // SMALL.shard_size

    rows = _rows(demo_dir / "scan").to_pylist()
    ok = {(r["shard"], r["key"]) for r in rows if r["status"] == "ok"}
    assert ok == expected and all(0.0 <= r["p_fake"] <= 1.0 for r in rows if r["status"] == "ok")
    bad = sorted(((r["shard"], r["key"], r["status"]) for r in rows if r["status"] != "ok"), key=str)
    assert bad == [
        ("shard-900000", None, "shard_error"),  # not a tar: one row for the shard, no key
        ("shard-900001", "broken-0", "decode_error"),  # a truncated JPEG
        ("shard-900001", "noimage-1", "no_image"),  # a sample with only a json member
    ]
    assert len(rows) == len(expected) + 3  # nothing lost, nothing duplicated
    assert {r["detector_id"] for r in rows} == {rows[0]["detector_id"]}

    # the summary is read back from the same Parquet
    for status, n in Counter(r["status"] for r in rows).items():
        assert f"\n  {status} | {n}\n" in text + "\n"
    assert rows[0]["detector_id"] in text


def _run_id(text: str) -> str:
    match = re.match(r"demo scan \w+: run (\S+) \(", text)
    assert match, text[:200]
    return match.group(1)


def test_a_second_demo_run_reuses_every_step(demo: tuple[Path, int, str]) -> None:
    demo_dir, code, text = demo
    assert code == 0
    steps = _mtimes(*(demo_dir / name for name in ("shards", "train", "detector")))
    parquet = _mtimes(*(demo_dir / "scan").glob("scan_date=*"))
    again, text2 = run_demo(demo_dir, size=SMALL)  # in-process scan: nothing is left to run
    assert again == 0
    assert _mtimes(*(demo_dir / name for name in ("shards", "train", "detector"))) == steps  # nothing redone
    # the scan resumed today's finished run: the same run, no shard rewritten
    assert _run_id(text2) == _run_id(text)
    assert parquet and _mtimes(*(demo_dir / "scan").glob("scan_date=*")) == parquet
