"""The benchmarks behind results/*.md keep running against the product they measure: each one's real code path
at a tiny size (timings are not asserted; what the run counted and compared is). A benchmark nothing runs
breaks silently when the product's API moves under it (benchmarks/driver.py did). The benchmarks whose
smallest run needs a Ray cluster or job processes (demo_jobs.py, demo_training.py, the Ray parts of
incremental.py, scan_pipeline.py and train.py) are exercised here only in their Ray-free parts."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary folders a benchmark makes (tempfile) go under the test's tmp_path."""
    folder = tmp_path / "tempfile"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))


@pytest.fixture
def torch_threads() -> Iterator[int]:
    """The process's torch thread count, restored after a benchmark that sets its own."""
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)


@pytest.fixture
def tiny_detector(tmp_path: Path) -> str:
    from pipeline.models import create_detector, save_detector

    path = tmp_path / "det"
    torch.manual_seed(0)
    save_detector(create_detector("tiny-mole", pretrained=None), path)
    return str(path)


def test_detectors_shared_pass_agrees_with_one_pass_per_detector(tmp_path: Path, torch_threads: int) -> None:
    bench = _load("detectors")
    argv = ["--sizes", "tiny", "--batch", "2", "--repeats", "1", "--device", "cpu"]
    assert bench.main([*argv, "--threads", "1", "--out", str(tmp_path)]) == 0
    (run,) = json.loads((tmp_path / "detectors.json").read_text())["runs"]
    assert run["detectors"] == ["univfd-like@bench", "rine-like@bench", "mole@bench"]
    assert run["max_rel_diff_shared_vs_separate"] <= 1e-5
    # tiny-mole adapts blocks 2 and 3 of 4: the set runs 4 shared blocks + MoLE's own 2, not 3 x 4
    assert (run["depth"], run["shared_blocks"]) == (4, 2)
    assert run["block_passes"] == {"shared": 6, "separate": 12}
    assert run["param_bytes"]["shared"] < run["param_bytes"]["separate"]
    assert (
        "| tiny (ViT-Tiny-16-96, 2/4 blocks shared by all) | cpu | 2 |"
        in (tmp_path / "detectors.md").read_text()
    )


def test_multiscan_joint_scan_agrees_with_one_scan_per_detector(tmp_path: Path, torch_threads: int) -> None:
    bench = _load("multiscan")
    argv = ["--sizes", "tiny", "--images", "8", "--rounds", "1", "--warmup", "0", "--batch", "4"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    (r,) = json.loads((tmp_path / "multiscan.json").read_text())["results"]
    # the joint scan writes each image once; the three separate scans write it three times
    assert (r["detectors"], r["rows_together"], r["rows_separate"]) == (3, 8, 24)
    assert r["max_rel_logit_diff"] <= 1e-5  # every detector's logit in the joint scan equals its own scan's
    assert len(r["ratios_per_round"]["wall_s"]) == 1
    assert "| ViT-Tiny-16-96 @ 96 | 8 |" in (tmp_path / "multiscan.md").read_text()


def test_provenance_reads_each_corpus_through_the_scans_read_stage(tmp_path: Path) -> None:
    bench = _load("provenance")
    argv = ["--images", "2", "--rounds", "1", "--size", "64", "--shard-rows", "10"]
    bench.main([*argv, "--out", str(tmp_path)])
    res = json.loads((tmp_path / "provenance.json").read_text())
    verdicts = {name: r["verdicts"] for name, r in res["results"].items()}
    assert verdicts == {
        "plain_jpeg": ["none"],
        "plain_png": ["none"],
        "c2pa_jpeg": ["ai_declared"],
        "a1111_png": ["ai_declared"],
    }
    for r in res["results"].values():
        assert r["images"] == 2 and r["v3_bytes_per_row"] > r["v2_bytes_per_row"] > 0
    assert set(res["headline"]) >= {"no_metadata_overhead_pct", "c2pa_reader_ms_per_image"}
    assert (tmp_path / "provenance.md").read_text().startswith("# Provenance reading cost")


def test_incremental_carry_path_carries_unchanged_shards_and_scores_the_rest(
    tmp_path: Path, tiny_detector: str
) -> None:
    bench = _load("incremental")
    res = bench.carry_path(tmp_path, tiny_detector, 4, 1)
    (night2,) = res["runs"]
    # 4 shards of 1 image; 5 %: one rewritten, one added -> 3 carried, 2 scored, 5 in all
    assert (night2["shards"], night2["shards_carried"], night2["rows"], night2["rows_scored"]) == (5, 3, 5, 2)
    inc = night2["incremental"]
    assert (inc["planned_carry"], inc["planned_scan"], inc["added"], inc["changed"]) == (3, 2, 1, 1)
    assert res["copy_local"]["n"] == 3  # each carried shard's marker records its copy


def test_scan_pipeline_encoder_and_dataloader_modes_see_every_image(
    tmp_path: Path, torch_threads: int
) -> None:
    bench = _load("scan_pipeline")
    from pipeline.models import DetectorConfig, Predictor, load_detector

    shards_dir = bench.make_data(16, 8, 64, tmp_path)  # 4 families x 2 per class x real/fake
    shards = sorted(str(s) for s in shards_dir.glob("*.tar"))
    size = DetectorConfig.load("tiny-mole").image_size
    det, meta = load_detector(str(bench.make_detector("tiny-mole", tmp_path)))
    pred = Predictor(det, meta, device="cpu")
    pixels = bench.decode_all(shards, size)
    assert (len(shards), pixels.shape) == (2, (16, size, size, 3))
    assert bench.bench_encoder(pred, pixels, 8) > 0
    _, n = bench.bench_dataloader(pred, shards, size, 8, workers=0)
    assert n == 16


def test_train_baseline_data_and_model_step_run_on_the_products_api(
    tmp_path: Path, torch_threads: int
) -> None:
    bench = _load("train")
    bench.UNIQUE = 20  # distinct images written; the rest hard-link them
    data = bench.make_images(tmp_path / "data", 40)
    d = bench.inmemory_data(str(data))
    n_train, n_val = len(d["train_pixels"]), len(d["val_pixels"])
    assert n_train + n_val == 40 and n_val >= 1 and len(d["labels"]) == n_train
    assert d["labels"].sum() == (d["classes"] == 1).sum()  # one generator ("bench"): class 1 is every fake
    assert d["train_pixels"].shape[1:] == (3, d["det_cfg"].image_size, d["det_cfg"].image_size)
    assert d["train_pixels"].dtype == torch.float32 and np.isfinite(d["train_pixels"].numpy()).all()
    r = bench.model_rate("tiny-mole", 4, 1)
    assert (r["config"], r["batch"], r["steps"]) == ("tiny-mole", 4, 1) and r["images_per_s"] > 0
