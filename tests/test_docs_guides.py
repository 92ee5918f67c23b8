"""docs/demo_data.md and docs/detectors.md, run as a new user runs them (tests/support/docs_run.py: every
```bash block in order, with the substitutions listed there; the demo data at 6 images per class and family).
What detectors.md's scan assumes exists: `s3://bucket/shards/` (three small shards, one in a sub-folder, with
a corrupt image and an image-less sample) and `ckpt/univfd`, `ckpt/rine`, `ckpt/mole` (tiny UnivFD-, RINE- and
MoLE-layout detectors on one tiny backbone file). Each block exits 0, and what it wrote is read back."""

from __future__ import annotations

import json
from subprocess import CompletedProcess

import pyarrow.dataset as ds
import pytest

from tests.support.docs_run import REPO, Block, Workspace, all_ran, check, run_doc, runnable, workspace
from tests.support.features import genscan_detector, tiny_backbone_file
from tests.support.hygiene import write_corpus

DOCS = (REPO / "docs" / "demo_data.md", REPO / "docs" / "detectors.md")
BLOCKS = [b for doc in DOCS for b in runnable(doc)]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, shared_s3_ray: dict) -> Workspace:
    ws = workspace(tmp_path_factory.mktemp("guides"), shared_s3_ray, "docs-guides", {"--n-per-class": "6"})
    ws.fs().mkdir(ws.bucket("bucket"))
    write_corpus(f"s3://{ws.bucket('bucket')}/shards")
    bb = tiny_backbone_file(ws.root / "backbone.safetensors")
    genscan_detector(ws.root / "ckpt" / "univfd", "univfd-tiny", backbone=bb)
    genscan_detector(ws.root / "ckpt" / "rine", "rine-tiny", backbone=bb, scale=1.0)
    genscan_detector(ws.root / "ckpt" / "mole", "tiny-mole", backbone=bb)
    return ws


@pytest.fixture(scope="module")
def ran(ws: Workspace) -> dict[str, CompletedProcess]:
    return {k: v for doc in DOCS for k, v in run_doc(doc, ws).items()}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_guide_block_runs(ran: dict[str, CompletedProcess], block: Block) -> None:
    check(ran, block)


def test_what_the_guide_blocks_wrote(ws: Workspace, ran: dict[str, CompletedProcess]) -> None:
    assert all_ran(ran, BLOCKS)
    # demo_data.md: the UnivFD layout (6 per class and family) and WebDataset shards on S3
    for family in ("upconv", "diffusion"):
        for cls in ("0_real", "1_fake"):
            assert len(list((ws.root / "data" / "demo" / family / cls).glob("*.png"))) == 6
    fs = ws.fs()
    assert fs.glob(f"{ws.bucket('bucket')}/demo/wds/shard-*.tar")
    families = ran[f"demo_data.md:{BLOCKS[0].line}"].stdout.split()
    assert {"upconv", "diffusion", "vqgan"} <= set(families)

    # detectors.md: one scan with three detectors; every row keeps each one's score and the fused one
    rows = ds.dataset(f"{ws.bucket('bucket')}/scan", format="parquet", filesystem=fs).to_table().to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(len(r["detector_p_fake"]) == 3 for r in ok)
    (run_file,) = fs.glob(f"{ws.bucket('bucket')}/scan/_run/*/detector.json")
    run = json.loads(fs.cat(run_file))
    assert len(run["members"]) == 3 and run["fusion"] == "soft_or_prob"
