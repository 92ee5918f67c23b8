"""The training job as the subject: `ray job submit` to a real Ray head, data and checkpoint on a real (moto)
S3 server over HTTP; Ray Train's TorchTrainer runs the worker loop on one CPU worker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jobs.evaluate import main as evaluate_main
from pipeline.data.demo import DemoConfig, generate
from pipeline.models import load_detector
from tests.support.ray_cluster import submit_job
from tests.support.shards import make_bucket

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "jobs" / "train_detector.py")]


def test_train_job_from_s3_bucket_on_ray_head(shared_s3_ray: dict, tmp_path: Path) -> None:
    import s3fs

    bucket = make_bucket("train")
    generate(DemoConfig(out=f"{bucket}/data/train", layout="wds", families=["upconv"], n_per_class=24, seed=0, shard_size=16))
    generate(DemoConfig(out=f"{bucket}/data/test", families=["upconv", "vqgan"], n_per_class=8, seed=1))
    ckpt = f"{bucket}/ckpt/mole"
    args = [*TRAIN, "--data", f"{bucket}/data/train", "--config", "tiny-mole", "--method", "mole",
            "--train-generators", "upconv", "--out", ckpt, "--epochs", "2", "--augment"]  # fmt: skip
    head = shared_s3_ray["head"]  # the run's shared head, started with this S3 server's settings
    res = submit_job(head, args, timeout_s=300)
    assert res.status == "SUCCEEDED", res.logs[-5000:]
    assert res.driver_exit_code in (0, None)
    assert "ray_train_start" in res.logs  # went through the TorchTrainer wrapper
    # a bad request fails fast with exit code 2 and the field named, before any Ray work
    bad = submit_job(head, [*TRAIN, "--data", f"{bucket}/data/train", "--out", ckpt, "--mask-ratio", "3"], timeout_s=120)
    assert bad.status == "FAILED" and "mask_ratio" in bad.logs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    names = sorted(Path(p).name for p in fs.ls(ckpt.removeprefix("s3://")))
    assert names == sorted(["_checkpoints", "calibration.json", "detector.json", "detector.safetensors",
                            "driver-stderr.log", "log.jsonl",  # the job's JSON log and Ray's driver output
                            "metrics.jsonl", "train_config.json", "train_summary.json"])  # fmt: skip
    # the per-epoch training states went through Ray Train's checkpointing into the same bucket
    states = fs.glob(f"{ckpt.removeprefix('s3://')}/_checkpoints/run-*/checkpoint_*/state.json")
    assert len(states) == 2 and {json.loads(fs.cat(p))["epoch"] for p in states} == {1, 2}
    epochs = [json.loads(x) for x in fs.cat(f"{ckpt}/metrics.jsonl").decode().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    summary = json.loads(fs.cat(f"{ckpt}/train_summary.json"))
    assert summary["train_counts"]["real"] + summary["val_counts"]["real"] == 24
    _, meta = load_detector(ckpt)
    assert meta.generators == ["upconv"] and meta.notes["train_data"] == f"{bucket}/data/train"
    assert evaluate_main(["--data", f"{bucket}/data/test", "--detector", ckpt, "--json", str(tmp_path / "r.json")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["per_generator"]["upconv"]["n_fake"] == 8 and rep["attribution"]["held_out_generators"] == ["vqgan"]
