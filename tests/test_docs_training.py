"""docs/training.md, run as a new user runs it (tests/support/docs_run.py: every ```bash block in order, with
the substitutions listed there; its data at 6 images per class and family): the demo data, the three training
methods on Ray Train (the test run's shared head), recalibration and evaluation with the robustness sweeps;
then the few-shot block against what it assumes exists: `s3://bucket/scan`, a scan that kept its features
(a tiny linear detector's, in process, on the shared moto S3 server), and `picked.csv`, labels of its rows.
Each block exits 0, and what it wrote is read back."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pyarrow.dataset as ds
import pytest

from tests.support.docs_run import REPO, Block, Workspace, check, run_block, runnable, workspace
from tests.support.features import feature_scan, genscan_detector, read_rows
from tests.support.hygiene import write_corpus

BLOCKS = runnable(REPO / "docs" / "training.md")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, shared_s3_ray: dict) -> Workspace:
    import s3fs

    ws = workspace(
        tmp_path_factory.mktemp("training"), shared_s3_ray, "docs-training", {"--n-per-class": "6"}
    )
    s3fs.S3FileSystem().mkdir(ws.bucket("bucket"))
    corpus = write_corpus(str(ws.root / "corpus"))
    det = genscan_detector(ws.root / "scanning-detector", "tiny-linear", backbone=None, seed=5)
    scan = f"s3://{ws.bucket('bucket')}/scan"
    feature_scan(corpus.root, scan, det, features="pre_proj", scan_date=dt.date.today().isoformat())
    ok = sorted(k for k, r in read_rows(scan).items() if r["status"] == "ok")
    with open(ws.root / "picked.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["shard", "key", "label"])
        out.writerows((shard, key, i % 2) for i, (shard, key) in enumerate(ok))
    return ws


@pytest.fixture(scope="module")
def ran(ws: Workspace) -> dict[str, object]:
    out: dict[str, object] = {}
    for block in BLOCKS:
        out[block.where] = proc = run_block(block, ws)
        if proc.returncode != 0:
            break
    return out


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_training_block_runs(ran: dict[str, object], block: Block) -> None:
    assert block.where in ran, f"{block.where} not reached: an earlier block failed"
    check(ran[block.where], block)  # type: ignore[arg-type]


def test_what_the_training_blocks_wrote(ws: Workspace, ran: dict[str, object]) -> None:
    assert len(ran) == len(BLOCKS) and all(p.returncode == 0 for p in ran.values())  # type: ignore[attr-defined]
    for name in ("tiny-mole-upconv", "tiny-linear-upconv", "tiny-mpft-upconv", "tiny-mole-upconv-fpr1"):
        meta = json.loads((ws.root / "ckpt" / name / "detector.json").read_text())
        assert meta["generators"] == ["upconv"], name
    recal = json.loads((ws.root / "ckpt" / "tiny-mole-upconv-fpr1" / "detector.json").read_text())
    base = json.loads((ws.root / "ckpt" / "tiny-mole-upconv" / "detector.json").read_text())
    # detector_id names the weights, the same after recalibration; the threshold is the calibrated one
    # (docs/queries.md reads it from the rows' `threshold` column)
    assert recal["detector_id"] == base["detector_id"] and recal["notes"].get("calibration")
    report = (ws.root / "eval" / "mole.md").read_text()
    assert "upconv" in report and "vqgan" in report  # the held-out family is evaluated too
    assert any((ws.root / "eval" / "mole_plots").glob("*.png"))

    # the few-shot block: a linear detector from the stored features re-scored every scanned row
    fs_rows = ds.dataset(f"{ws.bucket('bucket')}/rescore", format="parquet", filesystem=_s3()).to_table()
    scanned = read_rows(f"s3://{ws.bucket('bucket')}/scan")
    ok = {k for k, r in scanned.items() if r["status"] == "ok"}
    assert {(r["shard"], r["key"]) for r in fs_rows.to_pylist() if r["status"] == "ok"} == ok


def _s3():
    import s3fs

    return s3fs.S3FileSystem()
