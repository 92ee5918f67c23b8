"""The feature store on Ray: `ray job submit` of jobs/scan_bucket.py --features (the scorer actors keep the
features, the writer actors write each shard's part before its marker) and of jobs/rescore.py --engine ray
(one CPU task per shard) on the run's shared Ray head. The Ray re-score equals the in-process one row for row,
and both equal the Ray scan's logits within float16's bound."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.rescore import main as rescore_main
from pipeline.feature_store import logit_bound, read_part
from tests.support.features import genscan_detector, read_rows, tiny_backbone_file
from tests.support.ray_cluster import SMALL_SCAN, submit_job
from tests.support.shards import corrupt_image_sample, good_samples, no_image_sample, write_shard

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-02-01"
SCORE = ("status", "error", "logit", "p_fake", "is_fake", "top_generator", "detector_id", "sha256")


@pytest.mark.slow
def test_ray_scan_keeps_features_and_ray_rescore_equals_local(tmp_path, shared_s3_ray) -> None:
    head = shared_s3_ray["head"]
    corpus = tmp_path / "in"
    for i in range(3):
        write_shard(
            str(corpus / f"shard-{i:06d}.tar"), good_samples(5, seed=i, prefix=f"{i}_", size=(120, 100))
        )
    write_shard(
        str(corpus / "shard-000003.tar"),
        [*good_samples(2, seed=7, prefix="3_"), corrupt_image_sample("3_bad"), no_image_sample("3_none")],
    )
    bb = tiny_backbone_file(tmp_path / "bb.safetensors")
    det = genscan_detector(tmp_path / "lin", "tiny-linear", backbone=bb)
    scan = str(tmp_path / "scan")
    args = [sys.executable, str(REPO / "jobs" / "scan_bucket.py"), "--input", str(corpus), "--output", scan]
    args += [
        "--detector",
        det,
        "--scan-date",
        DAY,
        "--features",
        "pre_proj",
        "--batch-size",
        "8",
        *SMALL_SCAN,
    ]
    res = submit_job(head, args, timeout_s=300)
    assert res.status == "SUCCEEDED" and res.driver_exit_code in (0, None), res.logs[-4000:]
    parts = sorted((Path(scan) / "_features" / f"scan_date={DAY}").glob("*.parquet"))
    assert [p.stem for p in parts] == [f"shard-00000{i}" for i in range(4)]

    ray_out = str(tmp_path / "ray")
    res = submit_job(
        head,
        [sys.executable, str(REPO / "jobs" / "rescore.py"), "--engine", "ray", "--task-cpus", "2"]
        + ["--scan", scan, "--detector", det, "--output", ray_out],
        timeout_s=300,
    )
    assert res.status == "SUCCEEDED" and res.driver_exit_code in (0, None), res.logs[-4000:]
    assert "tasks_submitted" in res.logs
    local_out = str(tmp_path / "local")
    assert rescore_main(["--scan", scan, "--detector", det, "--output", local_out]) == 0

    full, by_ray, local = read_rows(scan), read_rows(ray_out), read_rows(local_out)
    assert set(full) == set(by_ray) == set(local) and len(full) == 19
    for k in full:
        assert {c: by_ray[k][c] for c in SCORE} == {c: local[k][c] for c in SCORE}
    from safetensors.torch import load_file

    w = load_file(str(Path(det) / "detector.safetensors"))["head_fake.weight"].double().numpy().reshape(-1)
    feats = {}
    for p in parts:
        part = read_part(str(p))
        feats.update({(p.stem, k): v for k, v in zip(part.keys, part.features(), strict=True)})
    assert set(feats) == {k for k, r in full.items() if r["status"] == "ok"}
    for k, v in feats.items():
        bound = float(logit_bound(w, v[None], None, "float16")[0]) + 1e-5 * (1 + abs(full[k]["logit"]))
        assert abs(full[k]["logit"] - by_ray[k]["logit"]) <= bound
    assert np.isfinite([r["logit"] for r in by_ray.values() if r["status"] == "ok"]).all()
