"""docs/training.md, run as a new user runs it (tests/support/docs_run.py: every ```bash block in order, with
the substitutions listed there; its data at 6 images per class and family, 3 training epochs): the demo data,
the three training methods (in the job's own process, `--engine local`), recalibration and evaluation with the
robustness sweeps. The few-shot block is the README's commands (marked `same as README.md`), run by
tests/test_docs_readme.py. Each block exits 0, and what it wrote is read back."""

from __future__ import annotations

import json
from subprocess import CompletedProcess

import pytest

from tests.support.docs_run import REPO, Block, Workspace, all_ran, check, run_doc, runnable, workspace

BLOCKS = runnable(REPO / "docs" / "training.md")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, shared_s3_ray: dict) -> Workspace:
    # 6 images per class and family, 3 epochs instead of the default 20, in the job's own process
    # (--engine local: Ray Train's start-up is ~20 s a run here; the demo's training step in
    # tests/test_docs_readme.py and tests/test_train_ray.py run the same job on Ray Train): the commands,
    # not the accuracy
    return workspace(
        tmp_path_factory.mktemp("training"),
        shared_s3_ray,
        "docs-training",
        {"--n-per-class": "6"},
        {"jobs/train_detector.py": "--epochs 3 --engine local"},
    )


@pytest.fixture(scope="module")
def ran(ws: Workspace) -> dict[str, CompletedProcess]:
    return run_doc(REPO / "docs" / "training.md", ws)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_training_block_runs(ran: dict[str, CompletedProcess], block: Block) -> None:
    check(ran, block)


def test_what_the_training_blocks_wrote(ws: Workspace, ran: dict[str, CompletedProcess]) -> None:
    assert all_ran(ran, BLOCKS)
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
