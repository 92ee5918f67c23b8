"""The README and docs/hygiene.md, run as a new user runs them (tests/support/docs_run.py: every ```bash block
in order, with the substitutions listed there), after its first command, `make demo` (`jobs/scan_bucket.py
--demo` -> `pipeline.cli.demo.run_demo`), at a small size on the test run's shared Ray head.

The demo: its real steps (demo shards with a broken shard and a corrupt sample, a training set, a tiny
detector trained by the training job on Ray Train, the scan with the Ray executor, the DuckDB summary). Every
sample of the shards it wrote (counted here from the tar files) is one row of the scan, the broken inputs are
status rows, the summary shows the Parquet's counts, and a second run reuses every step's output and reports
the same run.

The README's blocks then run against what the doc assumes exists: `s3://bucket/shards/` (the demo's readable
shards), `s3://bucket/detectors/mole` (the demo's detector), `s3://bucket/detectors/linear` (a tiny linear
detector, random-init backbone kept in its checkpoint), `picked.csv` (labels of the corpus rows) and the
demo's own output in `demo/`. docs/hygiene.md's nightly walkthrough then runs on `s3://corpus/shards/` (every
demo shard, the unreadable one too) with `s3://models/detector` (the demo's detector), and its quarantine
block reads the README's `demo/clean`. docs/schema.md's queries run on the README's `s3://bucket/scan`. Each
block exits 0, and what it wrote is read back."""

from __future__ import annotations

import csv
import json
import re
import tarfile
from collections import Counter
from pathlib import Path
from subprocess import CompletedProcess

import pyarrow as pa
import pytest

from pipeline.cli.demo import DemoSize, labels_table, run_demo
from pipeline.engine.scan import RayScanExecutor
from tests.support.docs_run import REPO, Block, Workspace, all_ran, check, run_doc, runnable, workspace
from tests.support.features import genscan_detector

# 4 families x (4 reals + 4 fakes) = 32 samples in 4 shards of 8; 2 families x 8 x 2 training images; 1 epoch
SMALL = DemoSize(scan_per_class=4, shard_size=8, train_per_class=8, epochs=1)
DOCS = (REPO / "README.md", REPO / "docs" / "hygiene.md", REPO / "docs" / "schema.md")
BLOCKS = [b for doc in DOCS for b in runnable(doc)]

pytestmark = pytest.mark.slow


def _tar_keys(path: Path) -> list[str]:
    """Sample keys of a tar (the member name up to its first dot), in order, without repeats."""
    with tarfile.open(path) as tf:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tf.getmembers() if m.isreg()))


def _mtimes(*dirs: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def _rows(scan: Path | str, ws: Workspace | None = None) -> pa.Table:
    """Every row of a scan output (local, or s3:// on the workspace's server)."""
    import pyarrow.dataset as ds

    remote = str(scan).startswith("s3://")
    fs = ws.fs() if remote and ws is not None else None
    return ds.dataset(str(scan).removeprefix("s3://"), filesystem=fs, format="parquet").to_table()


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory, shared_s3_ray: dict) -> tuple[Workspace, int, str]:
    """The workspace after `make demo`'s call (the Ray scan executor; the training job on Ray Train), attached
    to the run's shared Ray head (RAY_ADDRESS, as on a cluster), with what the README's blocks assume."""
    ws = workspace(tmp_path_factory.mktemp("readme"), shared_s3_ray, "docs-readme", {"--n-per-class": "6"})
    demo_dir = ws.root / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ADDRESS", shared_s3_ray["head"].address)
        code, text = run_demo(demo_dir, executor=RayScanExecutor(), size=SMALL)

    fs = ws.fs()
    bucket = ws.bucket("bucket")
    fs.mkdir(bucket)
    for tar in sorted((demo_dir / "shards").glob("shard-0*.tar")):
        fs.put(str(tar), f"{bucket}/shards/{tar.name}")
    fs.put(str(demo_dir / "detector"), f"{bucket}/detectors/mole", recursive=True)
    fs.mkdir(ws.bucket("models"))
    fs.mkdir(ws.bucket("corpus"))  # docs/hygiene.md's input: the demo's shards, the unreadable one too
    for tar in sorted((demo_dir / "shards").glob("*.tar")):
        fs.put(str(tar), f"{ws.bucket('corpus')}/shards/{tar.name}")
    fs.put(str(demo_dir / "detector"), f"{ws.bucket('models')}/detector", recursive=True)
    linear = genscan_detector(ws.root / "linear-ckpt", "tiny-linear", backbone=None, seed=5)
    fs.put(linear, f"{bucket}/detectors/linear", recursive=True)
    fs.invalidate_cache()
    truth = labels_table(demo_dir / "shards").to_pylist()
    with open(ws.root / "picked.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["shard", "key", "label"])
        out.writerows(
            (r["shard"], r["key"], int(r["generator"] != "real"))
            for r in truth
            if r["shard"].startswith("shard-0")
        )
    return ws, code, text


@pytest.fixture(scope="module")
def ran(readme: tuple[Workspace, int, str]) -> dict[str, CompletedProcess]:
    """The README's blocks, then docs/hygiene.md's and docs/schema.md's, in one workspace; a doc stops at its
    first failing block."""
    return {k: v for doc in DOCS for k, v in run_doc(doc, readme[0]).items()}


def test_demo_scans_every_sample_it_wrote(readme: tuple[Workspace, int, str]) -> None:
    ws, code, text = readme
    demo_dir = ws.root / "demo"
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


def test_a_second_demo_run_reuses_every_step(
    readme: tuple[Workspace, int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, code, text = readme
    demo_dir = ws.root / "demo"
    assert code == 0
    steps = _mtimes(*(demo_dir / name for name in ("shards", "train", "detector")))
    parquet = _mtimes(*(demo_dir / "scan").glob("scan_date=*"))
    # the same day as the first run (the suite may cross midnight UTC in between: a new day is a new scan)
    day = re.match(r"demo scan \w+: run \S+ \((\d{4}-\d{2}-\d{2})\)", text)
    assert day, text[:200]
    monkeypatch.setattr("pipeline.scan.completion.today_utc", lambda: day.group(1))
    again, text2 = run_demo(demo_dir, size=SMALL)  # in-process scan: nothing is left to run
    assert again == 0
    assert _mtimes(*(demo_dir / name for name in ("shards", "train", "detector"))) == steps  # nothing redone
    # the scan resumed today's finished run: the same run, no shard rewritten
    assert _run_id(text2) == _run_id(text)
    assert parquet and _mtimes(*(demo_dir / "scan").glob("scan_date=*")) == parquet


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_readme_block_runs(ran: dict[str, CompletedProcess], block: Block) -> None:
    check(ran, block)


def test_what_the_readme_blocks_wrote(
    readme: tuple[Workspace, int, str], ran: dict[str, CompletedProcess]
) -> None:
    ws = readme[0]
    assert all_ran(ran, BLOCKS)
    bucket = f"s3://{ws.bucket('bucket')}"
    with open(ws.root / "picked.csv") as f:
        picked = {(r["shard"], r["key"]) for r in csv.DictReader(f)}

    # the cluster scan and the set scan: one ok row per sample of the uploaded shards
    for scan, members in (("scan", 1), ("scan-set", 2)):
        rows = _rows(f"{bucket}/{scan}", ws).to_pylist()
        assert {(r["shard"], r["key"]) for r in rows if r["status"] == "ok"} == picked, scan
        assert len(rows) == len(picked)
        assert all(len(r["detector_p_fake"] or {}) == members for r in rows) if members > 1 else True
    # the stored features, the linear detector trained from them and the re-score of every row
    assert (ws.root / "ckpt" / "new-linear" / "detector.safetensors").is_file()
    rescored = _rows(f"{bucket}/rescore", ws).to_pylist()
    assert {(r["shard"], r["key"]) for r in rescored if r["status"] == "ok"} == picked

    # the detector core's contract: describe's parameter count and check-fused's error, as JSON lines
    (core,) = [b for b in BLOCKS if "check-fused" in b.text]
    described, fused = (json.loads(ln) for ln in ran[core.where].stdout.splitlines())
    assert described["config"] == "vitl14-mole" and 0 < described["trainable_pct_total"] < 0.1
    assert fused["max_rel_err"] < 1e-4
    # the demo's nightly flow: a cleaned copy of every readable demo shard, and its report
    clean = ws.root / "demo" / "clean"
    assert sorted(p.name for p in clean.glob("shard-0*.tar")) == sorted(
        p.name for p in (ws.root / "demo" / "shards").glob("shard-0*.tar")
    )
    assert (ws.root / "demo" / "report" / "report.html").is_file()

    # docs/hygiene.md: tonight's scan covers every demo shard (the unreadable one as a shard_error row); the
    # filter left that shard out (--on-shard-error skip) and wrote the others; the quarantine was listed
    corpus = f"s3://{ws.bucket('corpus')}"
    rows = _rows(f"{corpus}/scan", ws).to_pylist()
    assert len({r["shard"] for r in rows}) == len(list((ws.root / "demo" / "shards").glob("*.tar")))
    assert [r["shard"] for r in rows if r["status"] == "shard_error"] == ["shard-900000"]
    (quarantine,) = [b for b in BLOCKS if "_quarantine" in b.text]
    assert ".json" in ran[quarantine.where].stdout
    # docs/schema.md's queries: the first counts the README scan's rows by status
    (sql,) = [b for b in BLOCKS if b.doc == "schema.md"]
    assert "'ok', 32" in ran[sql.where].stdout.replace("\n", " ")
