"""The streaming feed's plain stages (listing, split, read/decode/augment, local executor) and the per-epoch
training state, without Ray; plus a local training run over a source with an unreadable image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.synthetic import DemoConfig, generate
from pipeline.models import DetectorConfig
from pipeline.train.config import TrainConfig
from pipeline.train.feed import (
    DecodeSpec,
    DecodeStage,
    SkipCounter,
    epoch_order,
    iter_local,
    listing_chunk,
    make_plan,
    train_spec,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("feed")
    generate(DemoConfig(out=str(root / "d"), families=["upconv"], n_per_class=12, seed=3))
    first = sorted((root / "d" / "upconv" / "1_fake").iterdir())[0]
    (first.parent / "000_bad.png").write_bytes(b"not an image at all")  # listed like any file; unreadable
    first.unlink()
    return root / "d"


def _cfg(data: Path, **kw: object) -> TrainConfig:
    return TrainConfig.parse({"data": str(data), "out": "unused", **kw})


def test_plan_lists_without_decoding_and_records_a_reproducible_split(corpus: Path) -> None:
    p1, p2 = make_plan(_cfg(corpus)), make_plan(_cfg(corpus))  # the corrupt file does not stop the listing
    assert p1.n_train + p1.n_val == 24 and p1.counts["val"] == {"real": 2, "upconv": 2}
    assert p1.split == p2.split and p1.split["seed"] == 0
    keys_tr, keys_va = set(p1.train.column("key").to_pylist()), set(p1.val.column("key").to_pylist())
    assert not keys_tr & keys_va
    p3 = make_plan(_cfg(corpus, seed=1))
    assert p3.split["val_keys_sha256"] != p1.split["val_keys_sha256"]
    assert p1.train.column("cls").to_pylist() == [lab for lab in p1.train.column("label").to_pylist()]


def test_decode_stage_counts_unreadable_images_and_seeds_augmentation_per_sample(corpus: Path) -> None:
    cfg = _cfg(corpus, augment=True, augment_blur_prob=0.5, augment_jpeg_prob=0.5)
    det_cfg = DetectorConfig.load("tiny-mole")
    plan = make_plan(cfg)
    stage = DecodeStage(train_spec(cfg, det_cfg))
    n = plan.n_train
    rows = listing_chunk(plan.train, np.array([0]), chunk_rows=n, seed=cfg.seed, epoch=0)
    out = stage(rows)
    skips = SkipCounter()
    ok = skips.add(out)
    assert out["image"].shape == (n, 96, 96, 3) and out["image"].dtype == np.uint8
    bad_in_train = any(k.endswith("_bad.png") for k in plan.train.column("key").to_pylist())
    assert skips.n == int((~ok).sum()) == int(bad_in_train)
    if skips.n:
        assert "UnidentifiedImageError" in skips.examples[0] and not out["image"][~ok].any()
    # the same (seed, epoch, key) gives the same pixels whatever the batch it is decoded in
    first = {k: v[:3] for k, v in rows.items()}
    again = stage({k: v[::-1] for k, v in first.items()})
    np.testing.assert_array_equal(again["image"][::-1], out["image"][:3])
    # another epoch draws other augmentations (same keys)
    rows1 = listing_chunk(plan.train, np.array([0]), chunk_rows=n, seed=cfg.seed, epoch=1)
    by_row0 = dict(zip(out["row"].tolist(), out["image"], strict=True))
    out1 = stage(rows1)
    differ = [
        not np.array_equal(by_row0[r], im)
        for r, im in zip(out1["row"].tolist(), out1["image"], strict=True)
        if out1["ok"][list(out1["row"]).index(r)]
    ]
    assert sum(differ) >= len(differ) // 2
    # and the epoch's order is a permutation of the listing
    assert sorted(rows1["row"].tolist()) == list(range(n)) and rows1["row"].tolist() != rows["row"].tolist()


def test_local_executor_yields_every_row_once_in_the_epoch_order(corpus: Path) -> None:
    plan = make_plan(_cfg(corpus))
    stage = DecodeStage(DecodeSpec(det_cfg=DetectorConfig.load("tiny-mole")))
    rows = np.concatenate([b["row"] for b in iter_local(plan.train, stage, batch_size=5, seed=0, epoch=2)])
    assert sorted(rows.tolist()) == list(range(plan.n_train))
    assert rows.tolist() == epoch_order(plan.n_train, 0, 2).tolist()  # in order, past the read-ahead


def test_training_state_round_trip(tmp_path: Path) -> None:
    from pipeline.train.state import TrainState, read_state, write_state

    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=1)
    sched.step(0.5)
    params = dict(lin.named_parameters())
    st = TrainState(
        epoch=3,
        history=[{"epoch": i} for i in (1, 2, 3)],
        params=params,
        best=((0.9, 0.8), 2, {k: v.detach() * 2 for k, v in params.items()}),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        split={"seed": 0},
    )
    write_state(tmp_path, st)
    assert not any(p.suffix in (".pt", ".pkl", ".pth") for p in tmp_path.iterdir())
    back = read_state(tmp_path)
    assert back.epoch == 3 and [h["epoch"] for h in back.history] == [1, 2, 3] and back.best[1] == 2
    torch.testing.assert_close(back.params["weight"], params["weight"].detach())
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(back.optimizer)
    torch.testing.assert_close(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    sched2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2, mode="max", patience=1)
    sched2.load_state_dict(back.scheduler)
    assert sched2.best == sched.best and sched2.num_bad_epochs == sched.num_bad_epochs


def test_local_training_skips_unreadable_images_and_resumes(corpus: Path, tmp_path: Path, capsys) -> None:
    import re

    from pipeline.cli.train_detector import main

    out = tmp_path / "ck"
    base = ["--data", str(corpus), "--out", str(out), "--engine", "local", "--batch-size", "8"]
    assert main([*base, "--epochs", "1"]) == 0
    s1 = json.loads((out / "train_summary.json").read_text())
    assert (
        s1["skipped"]["train"]["n"] + s1["skipped"]["eval"]["n"] >= 1
    )  # the corrupt file: counted, no crash
    assert re.search(r"train:.* 1/1 ", capsys.readouterr().err)  # the progress line, epochs done / total
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"train:.* 2/2 ", err) and "img/s" in err and "Traceback" not in err, err
    s2 = json.loads((out / "train_summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and s2["resumes"] == [{"after_epoch": 1, "world_size": 1}]
    assert rows[0] == {k: v for k, v in s1["final"].items() if k != "best_epoch"}  # epoch 1 kept, not redone


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_feed_and_bf16_step_on_cuda() -> None:
    """uint8 -> pinned -> non-blocking copy -> normalised on the GPU equals the CPU path; a bf16-autocast
    training step of tiny-mole gives finite fp32 losses and gradients."""
    from pipeline.models import create_detector
    from pipeline.train.feed import to_device
    from pipeline.train.validate import train_autocast

    det_cfg = DetectorConfig.load("tiny-mole").model_copy(update={"generators": ["g"]})
    imgs = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    dev = torch.device("cuda")
    x = to_device(imgs, det_cfg, dev)
    assert x.device.type == "cuda" and x.dtype == torch.float32
    torch.testing.assert_close(x.cpu(), to_device(imgs, det_cfg, torch.device("cpu")), rtol=1e-6, atol=1e-6)
    det = create_detector(det_cfg, pretrained=None).to(dev).train()
    with train_autocast(dev):
        out = det(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit.float(), torch.ones(4, device=dev))
    loss.backward()
    grads = [p.grad for p in det.parameters() if p.requires_grad and p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
