"""The feature store, end to end on real scans (the scan job's config -> run_scan, in process) of a tiny
open_clip
backbone saved as a weights file:

* a scan with --features keeps one feature per scored image (none for rows with no image), equal to an
  independent open_clip reference within float16's bound, with the backbone's identity, kind and
  preprocessing;
* parity: jobs/rescore.py's logits equal the full scan's with the same detector within the precision's stated
  bound (`pipeline.feature_store.logit_bound`), for a genscan linear and an imported ClipBased-SID detector,
  in float16 and int8; every sample accounted for; the output is a normal scan partition;
* refusals (one line, exit 2): MoLE, RINE, another backbone, another feature kind, another preprocessing;
  no stored features (exit 3); bad parts (truncated, missing, another backbone's) become shard_error rows;
* a detector set keeps the shared backbone's features once.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.cli.rescore import main as rescore_main
from pipeline.feature_store import FeatureSpec, logit_bound, read_part
from pipeline.features.rescore import RescoreConfig
from pipeline.output import read_json
from pipeline.settings import ConfigError
from tests.support.features import (
    clipbased_detector,
    feature_scan,
    genscan_detector,
    read_features,
    read_rows,
    tiny_backbone_file,
)
from tests.support.scan_batches import check_table
from tests.support.shards import corrupt_image_sample, good_samples, no_image_sample, write_shard

DAY = "2026-01-05"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("features")
    cache = root / "cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("GENSCAN_CACHE", str(cache))
    corpus = root / "in"
    for i in range(3):
        write_shard(
            str(corpus / f"shard-{i:06d}.tar"),
            good_samples(6, seed=i, prefix=f"{i}_", size=(130 + 7 * i, 110), fmt="jpg" if i % 2 else "png"),
        )
    write_shard(
        str(corpus / "shard-000003.tar"),
        [
            *good_samples(3, seed=9, prefix="3_", size=(100, 120)),
            corrupt_image_sample("3_bad"),
            no_image_sample("3_none"),
        ],
    )
    bb = tiny_backbone_file(root / "backbone.safetensors", seed=0)
    other = tiny_backbone_file(root / "backbone-1.safetensors", seed=1)
    w = {
        "root": root,
        "corpus": str(corpus),
        "bb": bb,
        "lin": genscan_detector(root / "lin", "tiny-linear", backbone=bb, seed=0),
        "cb": clipbased_detector(root / "cb", bb),
    }
    for name, det, prec in (
        ("scan_lin", "lin", "float16"),
        ("scan_cb", "cb", "float16"),
        ("scan_int8", "lin", "int8"),
    ):
        w[name] = str(root / name)
        run = feature_scan(w["corpus"], w[name], w[det], features="pre_proj", precision=prec, scan_date=DAY)
        assert run["status"] == "succeeded"
    w["lin_other"] = genscan_detector(root / "lin-other", "tiny-linear", backbone=other, seed=0)
    w["scan_other"] = str(root / "scan_other")
    feature_scan(w["corpus"], w["scan_other"], w["lin_other"], features="pre_proj", scan_date=DAY)
    yield w
    mp.undo()


def _rescore(capsys, *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = rescore_main(list(args))
    # the console's lines, without its progress bar ("rescore: 50%|...", redrawn with \r)
    lines = re.split(r"[\r\n]", capsys.readouterr().err)
    err = [re.sub(r"^rescore: [^\]]*\]", "", ln) for ln in lines]
    err = [ln for ln in err if ln.strip()]
    return code, err


def _head(ckpt: str) -> tuple[np.ndarray, float]:
    from safetensors.torch import load_file

    t = load_file(str(Path(ckpt) / "detector.safetensors"))
    return t["head_fake.weight"].double().numpy().reshape(-1), float(t["head_fake.bias"])


# ---------------------------------------------------------------------------------------------- the store
def test_scan_keeps_one_feature_per_scored_image_equal_to_open_clip(world) -> None:
    import open_clip
    from safetensors.torch import load_file

    from pipeline.models import DetectorConfig
    from pipeline.models.preprocess import prepare_image

    rows = read_rows(world["scan_lin"])
    feats = read_features(world["scan_lin"])
    ok = {k for k, r in rows.items() if r["status"] == "ok"}
    assert set(feats) == ok and len(ok) == 21  # 3 x 6 + 3: no feature for the corrupt / image-less rows
    assert {r["status"] for k, r in rows.items() if k not in ok} == {"decode_error", "no_image"}
    part = read_part(str(Path(world["scan_lin"]) / "_features" / f"scan_date={DAY}" / "shard-000003.parquet"))
    sha = hashlib.sha256(world["bb"].read_bytes()).hexdigest()
    assert part.spec.backbone.identity == f"ViT-Tiny-16-96:sha256:{sha}"
    assert (part.spec.kind, part.spec.normalized, part.spec.dim, part.spec.precision) == (
        "pre_proj",
        True,
        128,
        "float16",
    )
    assert (part.spec.preprocessing.preprocess, part.spec.preprocessing.image_size) == ("center_crop", 96)
    marker = read_json(str(Path(world["scan_lin"]) / "_shards" / DAY / "shard-000003.json"))
    assert marker["features"]["rows"] == 3
    # independent reference: open_clip's tower from the weights file, ClipBased's proj = None + L2 norm
    model = open_clip.create_model("ViT-Tiny-16-96", pretrained=None)
    visual = model.visual
    visual.load_state_dict({k.removeprefix("visual."): v for k, v in load_file(str(world["bb"])).items()})
    visual.proj = None
    visual.eval()
    cfg = DetectorConfig.load("tiny-linear")
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    keys, images = [], []
    for tar in sorted(Path(world["corpus"]).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.rsplit(".", 1)
                if (tar.stem, key) in ok and ext in ("png", "jpg"):
                    img = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
                    keys.append((tar.stem, key))
                    images.append(prepare_image(img, cfg))
    x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        ref = torch.nn.functional.normalize(visual(x), dim=-1).numpy()
    got = np.stack([feats[k] for k in keys])
    assert np.all(np.abs(got - ref) <= 2.0**-11 * np.abs(ref) + 2.0**-24 + 1e-6)


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    ("scan", "det", "precision"),
    [("scan_lin", "lin", "float16"), ("scan_cb", "cb", "float16"), ("scan_int8", "lin", "int8")],
)
def test_rescore_equals_full_scan_within_the_precision_bound(
    world, tmp_path, capsys, scan, det, precision
) -> None:
    out = str(tmp_path / "re")
    code, err = _rescore(capsys, "--scan", world[scan], "--detector", world[det], "--output", out)
    assert code == 0, err
    full, re_ = read_rows(world[scan]), read_rows(out)
    assert set(full) == set(re_)  # every sample accounted for, the image-less rows included
    w, _ = _head(world[det])
    parts = {}
    for f in sorted((Path(world[scan]) / "_features" / f"scan_date={DAY}").glob("*.parquet")):
        p = read_part(str(f))
        assert p.spec.precision == precision
        for k, v, s in zip(
            p.keys, p.features(), p.scale if p.scale is not None else [None] * len(p.keys), strict=True
        ):
            parts[(f.stem, k)] = (v, s)
    worst, same = 0.0, ("status", "error", "sha256", "width")  # what rescoring must not change
    for k, a in full.items():
        b = re_[k]
        assert {c: a[c] for c in same} == {c: b[c] for c in same}
        if a["status"] != "ok":
            assert b["logit"] is None and b["p_fake"] is None
            continue
        v, s = parts[k]
        bound = float(logit_bound(w, v[None], None if s is None else np.array([s]), precision)[0])
        slack = 1e-5 * (1 + abs(a["logit"]))  # float32 accumulation in two different orders
        assert abs(a["logit"] - b["logit"]) <= bound + slack, (k, a["logit"], b["logit"], bound)
        worst = max(worst, abs(a["logit"] - b["logit"]))
        assert b["detector_id"] == a["detector_id"] and b["detector_logit"] == [
            (a["detector_id"], b["logit"])
        ]
    assert worst > 0 or precision == "float16"  # int8 rounding shows
    for f in (Path(out) / f"scan_date={DAY}").glob("*.parquet"):
        check_table(pq.read_table(f))
    run_dir = Path(out) / "_run" / DAY
    RescoreConfig.model_validate(read_json(str(run_dir / "config.json")))
    spec = FeatureSpec.model_validate(read_json(str(run_dir / "features.json"))["spec"])
    assert spec.precision == precision and read_json(str(run_dir / "run.json"))["status"] == "succeeded"


def test_int8_bound_is_wider_than_float16(world) -> None:
    w, _ = _head(world["lin"])
    f16 = read_features(world["scan_lin"])
    bounds = {}
    for name in ("scan_lin", "scan_int8"):
        d = Path(world[name]) / "_features" / f"scan_date={DAY}"
        p = read_part(str(d / "shard-000000.parquet"))
        bounds[name] = logit_bound(w, p.features(), p.scale, p.spec.precision)
        size = (d / "shard-000000.parquet").stat().st_size
        bounds[name + "_bytes"] = size
    assert np.all(bounds["scan_int8"] > bounds["scan_lin"])
    assert bounds["scan_int8_bytes"] < bounds["scan_lin_bytes"]
    assert len(f16) == 21


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("det", "needle"),
    [
        ("mole", "MoLE adapts the backbone"),
        ("rine", "RINE reads the CLS token of every block"),
        ("other_backbone", "backbone: stored ViT-Tiny-16-96:sha256:"),
        ("univfd", "feature: stored pre_proj (normalized True, 128-d), detector embedding"),
        ("cb", "preprocessing: stored center_crop@96"),
    ],
)
def test_a_detector_that_does_not_read_the_store_is_refused(world, tmp_path, capsys, det, needle) -> None:
    ckpts = {
        "mole": lambda: genscan_detector(tmp_path / "m", "tiny-mole", backbone=world["bb"]),
        "rine": lambda: genscan_detector(tmp_path / "r", "rine-tiny", backbone=world["bb"], scale=1.0),
        "other_backbone": lambda: world["lin_other"],
        "univfd": lambda: genscan_detector(tmp_path / "u", "univfd-tiny", backbone=world["bb"]),
        "cb": lambda: world["cb"],
    }
    out = tmp_path / "out"
    code, err = _rescore(
        capsys, "--scan", world["scan_lin"], "--detector", ckpts[det](), "--output", str(out)
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("configuration error: "), err
    assert needle in err[0], err
    assert not (out / f"scan_date={DAY}").exists()


def test_a_checkpoint_whose_head_does_not_match_its_config_is_one_line(world, tmp_path, capsys) -> None:
    """A hand-edited linear checkpoint (its id re-hashed, so only the head's shape is wrong) is refused with
    the checkpoint layer's state-dict message, naming the tensor and both shapes."""
    import json

    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "edited"
    shutil.copytree(world["lin"], ckpt)
    tensors = load_file(str(ckpt / "detector.safetensors"))
    tensors["head_gen.weight"] = tensors["head_gen.weight"][:-1].clone()
    save_file(tensors, str(ckpt / "detector.safetensors"))
    meta = json.loads((ckpt / "detector.json").read_text())
    digest = hashlib.sha256((ckpt / "detector.safetensors").read_bytes()).hexdigest()
    meta["detector_id"] = meta["detector_id"].split("@")[0] + "@" + digest[:12]
    (ckpt / "detector.json").write_text(json.dumps(meta))
    code, err = _rescore(
        capsys, "--scan", world["scan_lin"], "--detector", str(ckpt), "--output", str(tmp_path / "o")
    )
    assert code == 2 and len(err) == 1, err
    assert "its stored head does not match the detector: wrong shapes (1): head_gen.weight" in err[0], err


def test_no_stored_features_is_not_found(world, tmp_path, capsys) -> None:
    scan = tmp_path / "scan"
    shutil.copytree(world["scan_lin"], scan)
    shutil.rmtree(scan / "_features")
    code, err = _rescore(
        capsys, "--scan", str(scan), "--detector", world["lin"], "--output", str(tmp_path / "o")
    )
    assert code == 3 and len(err) == 1 and "no stored features" in err[0] and "--features" in err[0], err


def test_bad_parts_become_shard_error_rows_never_wrong_scores(world, tmp_path, capsys) -> None:
    scan = tmp_path / "scan"
    shutil.copytree(world["scan_lin"], scan)
    parts = scan / "_features" / f"scan_date={DAY}"
    data = (parts / "shard-000000.parquet").read_bytes()
    (parts / "shard-000000.parquet").write_bytes(data[: len(data) // 2])  # truncated
    (parts / "shard-000002.parquet").unlink()  # missing
    foreign = Path(world["scan_other"]) / "_features" / f"scan_date={DAY}" / "shard-000003.parquet"
    shutil.copy(foreign, parts / "shard-000003.parquet")  # same keys, another backbone
    out = tmp_path / "o"
    code, err = _rescore(capsys, "--scan", str(scan), "--detector", world["lin"], "--output", str(out))
    assert code == 1 and len(err) == 1 and "error budget exceeded" in err[0] and "3 of 4 shards" in err[0], (
        err
    )
    out2 = tmp_path / "o2"
    args = [
        "--scan",
        str(scan),
        "--detector",
        world["lin"],
        "--output",
        str(out2),
        "--max-shard-error-rate",
        "1",
    ]
    code, err = _rescore(capsys, *args)
    assert code == 0, err
    rows = read_rows(str(out2))
    errors = {s: r["error"] for (s, k), r in rows.items() if r["status"] == "shard_error"}
    assert set(errors) == {"shard-000000", "shard-000002", "shard-000003"}
    assert "unreadable" in errors["shard-000000"] and "truncated" in errors["shard-000000"]
    assert "missing" in errors["shard-000002"] and "--features" in errors["shard-000002"]
    assert "backbone: stored ViT-Tiny-16-96:sha256:" in errors["shard-000003"]
    assert all(r["logit"] is None for (s, k), r in rows.items() if s != "shard-000001")
    full = read_rows(world["scan_lin"])
    good = {k: r for k, r in rows.items() if k[0] == "shard-000001"}
    assert len(good) == 6 and all(r["status"] == "ok" for r in good.values())
    assert all(abs(r["logit"] - full[k]["logit"]) < 1e-2 for k, r in good.items())
    # the first readable part decides the store's spec: a foreign one there refuses the whole run
    shutil.copy(foreign.parent / "shard-000001.parquet", parts / "shard-000001.parquet")
    code, err = _rescore(
        capsys, "--scan", str(scan), "--detector", world["lin"], "--output", str(tmp_path / "o3")
    )
    assert code == 2 and len(err) == 1 and "backbone: stored" in err[0], err


# ---------------------------------------------------------------------------------------------- scans
def test_a_detector_set_keeps_the_shared_backbones_features_once(world, tmp_path) -> None:
    mole = genscan_detector(tmp_path / "m", "tiny-mole", backbone=world["bb"])
    out = str(tmp_path / "set")
    run = feature_scan(world["corpus"], out, f"{mole},{world['lin']}", features="pre_proj", scan_date=DAY)
    assert run["status"] == "succeeded"
    got, ref = read_features(out), read_features(world["scan_lin"])
    assert set(got) == set(ref)
    for k, v in ref.items():  # the linear member's frozen pass (fp32 noise of a different batch at most)
        np.testing.assert_allclose(got[k], v, rtol=2.0**-9, atol=1e-6)
    parts = sorted((Path(out) / "_features" / f"scan_date={DAY}").glob("*.parquet"))
    assert len(parts) == 4
    spec = read_part(str(parts[0])).spec
    assert spec.source_detector == read_json(str(Path(world["lin"]) / "detector.json"))["detector_id"]


def test_features_from_a_mole_only_scan_are_refused(world, tmp_path) -> None:
    mole = genscan_detector(tmp_path / "m", "tiny-mole", backbone=world["bb"])
    with pytest.raises(ConfigError, match="MoLE detector adapts the backbone's blocks"):
        feature_scan(world["corpus"], str(tmp_path / "o"), mole, features="embedding", scan_date=DAY)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("backbone", ["file", "stored"])
def test_train_linear_from_stored_features_and_rescore_with_it(world, tmp_path, capsys, backbone) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from pipeline.cli.train_detector import main as train_main

    scan = world["scan_lin"]
    if backbone == "stored":  # random-init backbone kept inside the scanning detector's checkpoint
        det = genscan_detector(tmp_path / "stored", "tiny-linear", backbone=None, seed=5)
        scan = str(tmp_path / "scan")
        feature_scan(world["corpus"], scan, det, features="pre_proj", scan_date=DAY)
    feats = read_features(scan)
    picked = [k for k in sorted(feats) if k[0] in ("shard-000000", "shard-000001")]
    label = {k: int(k[1].split("_")[1]) % 2 for k in picked}  # good_samples: even real, odd famA
    labels = tmp_path / "labels.csv"
    lines = ["shard,key,label,generator"] + [
        f"{s},{k},{label[(s, k)]},{'famA' if label[(s, k)] else ''}" for s, k in picked
    ]
    lines += [
        "shard-000003,3_none,1,famA",
        "shard-000009,nope,0,",
    ]  # no image / unknown shard: skipped, counted
    labels.write_text("\n".join(lines) + "\n")
    ckpt = tmp_path / "new"
    capsys.readouterr()
    args = ["--method", "linear", "--features-from", scan, "--labels", str(labels), "--config", "tiny-linear"]
    assert train_main([*args, "--out", str(ckpt)]) == 0, capsys.readouterr().err
    meta = read_json(str(ckpt / "detector.json"))
    src = meta["notes"]["trained_from_features"]
    assert (src["examples"], src["skipped_without_feature"], src["scan_date"]) == (len(picked), 2, DAY)
    assert [tuple(e[:2]) for e in src["example_keys"]] == picked and meta["generators"] == ["famA"]
    # independent reference: scikit-learn's own decision function on the same stored features
    x = np.stack([feats[k] for k in picked]).astype(np.float64)
    y = np.array([label[k] for k in picked])
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(scaler.transform(x), y)
    out = tmp_path / "re"
    code, err = _rescore(capsys, "--scan", scan, "--detector", str(ckpt), "--output", str(out))
    assert code == 0, err
    rows = read_rows(str(out))
    got = np.array([rows[k]["logit"] for k in picked])
    np.testing.assert_allclose(got, ref.decision_function(scaler.transform(x)), rtol=1e-4, atol=1e-4)
    assert all(rows[k]["top_generator"] in ("real", "famA", "unknown") for k in picked)


def test_train_from_features_refuses_what_it_cannot_use(world, tmp_path, capsys) -> None:
    from pipeline.cli.train_detector import main as train_main

    labels = tmp_path / "l.csv"
    labels.write_text("shard,key,label\nshard-000000,0_000000,0\nshard-000000,0_000002,0\n")
    base = ["--method", "linear", "--features-from", world["scan_lin"], "--out", str(tmp_path / "c")]
    capsys.readouterr()
    assert train_main([*base, "--labels", str(labels)]) == 2
    assert "need both real (0) and fake (1)" in capsys.readouterr().err
    labels.write_text("shard,key,label\nshard-000000,0_000000,0\nshard-000000,0_000001,1\n")
    assert train_main([*base, "--labels", str(labels), "--config", "univfd-tiny"]) == 2
    assert "does not read the stored features" in capsys.readouterr().err
    assert train_main([*base, "--labels", str(labels), "--method", "mole"]) == 2
    assert not (tmp_path / "c").exists()


def test_labels_keep_zero_padded_keys_as_written(tmp_path) -> None:
    """webdataset keys are often all digits ("00000012"): the labels file's keys and shards are names, so they
    must match the scan's keys as written, not as numbers."""
    from pipeline.features.train import read_labels

    labels = tmp_path / "l.csv"
    labels.write_text("shard,key,label,generator\n000001,00000012,fake,7\n000001,00000013,0,\n")
    t = read_labels(str(labels))
    assert [(r["shard"], r["key"], r["label"], r["generator"]) for r in t] == [
        ("000001", "00000012", 1, "7"),
        ("000001", "00000013", 0, None),
    ]


# ---------------------------------------------------------------------------------------------- benchmark
def test_benchmark_runs_small_and_reports_within_bound(tmp_path) -> None:
    """benchmarks/features.py on the tiny backbone into a temp results dir: its files hold every figure the
    README links, and each precision's measured error is within its stated bound."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    args = [
        "--shards",
        "2",
        "--per-shard",
        "4",
        "--runs",
        "2",
        "--arch",
        "ViT-Tiny-16-96",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "GENSCAN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "features.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "features.json").read_text())
    assert [r["precision"] for r in res["runs"]] == ["float16", "int8"]
    assert set(res["precision"]) == {"float16", "int8"}
    assert all(e["within_bound"] and e["rows"] == 8 for e in res["precision"].values())
    assert res["gpu_hours_saved_per_billion"] is None  # results/gpu.md has no GPU measurement
    md = (tmp_path / "features.md").read_text()
    assert "Headline" in md and "Not computed" in md


def test_rescore_output_is_read_by_the_filter_and_the_report(world, tmp_path, capsys) -> None:
    from pipeline.cli.filter_shards import main as filter_main
    from pipeline.cli.report import main as report_main

    out = str(tmp_path / "re")
    assert _rescore(capsys, "--scan", world["scan_lin"], "--detector", world["lin"], "--output", out)[0] == 0
    assert report_main(["--scan", out, "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").exists()
    capsys.readouterr()
    args = ["--scan", out, "--input", world["corpus"], "--output", str(tmp_path / "clean"), "--dry-run"]
    assert filter_main(args) == 0
    import json

    plan = json.loads(capsys.readouterr().out)
    assert plan["totals"]["samples"] == 23 and plan["skipped_shards"] == []


def test_rescore_into_its_own_scan_is_a_config_error(tmp_path, capsys) -> None:
    """Checked before anything is read: into the scan itself with --resume, the scan's own markers were taken
    for finished re-score shards and the run "succeeded" re-scoring nothing (exit 0)."""
    scan = tmp_path / "scan"
    for output in (scan, scan / "rescore"):
        argv = ["--scan", str(scan), "--detector", str(tmp_path / "det"), "--output", str(output), "--resume"]
        assert rescore_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "output must not be the scan folder or inside it" in err, err
    assert not scan.exists()


def test_resume_with_other_features_is_refused(world, tmp_path) -> None:
    out = str(tmp_path / "scan")
    feature_scan(world["corpus"], out, world["lin"], features="pre_proj", scan_date=DAY)
    from pipeline.cli.scan_bucket import build_config, parse_args
    from pipeline.scan.job import run_scan

    args = ["--input", world["corpus"], "--output", out, "--detector", world["lin"], "--scan-date", DAY]
    with pytest.raises(ConfigError, match="features_precision: --resume of scan_date="):
        run_scan(
            build_config(
                parse_args([*args, "--resume", "--features", "pre_proj", "--features-precision", "int8"])
            )
        )


def test_a_shard_without_scored_images_has_an_empty_part_and_rescores(world, tmp_path, capsys) -> None:
    corpus = tmp_path / "in"
    write_shard(str(corpus / "shard-000000.tar"), [corrupt_image_sample("a"), no_image_sample("b")])
    write_shard(str(corpus / "shard-000001.tar"), good_samples(8, seed=4, prefix="g", size=(120, 100)))
    scan = str(tmp_path / "scan")
    feature_scan(str(corpus), scan, world["lin"], features="pre_proj", scan_date=DAY)
    empty = read_part(str(Path(scan) / "_features" / f"scan_date={DAY}" / "shard-000000.parquet"))
    assert empty.keys == [] and empty.features().shape == (0, 128)
    out = str(tmp_path / "re")
    assert _rescore(capsys, "--scan", scan, "--detector", world["lin"], "--output", out)[0] == 0
    rows = read_rows(out)
    assert {k: r["status"] for k, r in rows.items() if k[0] == "shard-000000"} == {
        ("shard-000000", "a"): "decode_error",
        ("shard-000000", "b"): "no_image",
    }
    assert sum(r["status"] == "ok" for r in rows.values()) == 8


def test_rescore_resume_skips_marked_shards_and_refuses_another_detector(world, tmp_path, capsys) -> None:
    out = tmp_path / "re"
    base = ["--scan", world["scan_lin"], "--output", str(out)]
    assert _rescore(capsys, *base, "--detector", world["lin"])[0] == 0
    code, err = _rescore(capsys, *base, "--detector", world["lin"])
    # the scan's wording for the same mistake (pipeline.output.check_new_run; tests/test_scan_units.py)
    assert code == 2 and err == [
        f"configuration error: output: {out} already has scan_date={DAY} (run.json, markers or Parquet); "
        "pass --resume to continue it, or choose another --output or --scan-date. Nothing was deleted."
    ], err
    marker = out / "_shards" / DAY / "shard-000001.json"
    part = out / f"scan_date={DAY}" / "shard-000001.parquet"
    kept = (out / f"scan_date={DAY}" / "shard-000000.parquet").read_bytes()
    marker.unlink()
    part.unlink()
    assert _rescore(capsys, *base, "--detector", world["lin"], "--resume")[0] == 0
    assert marker.exists() and part.exists()
    assert (out / f"scan_date={DAY}" / "shard-000000.parquet").read_bytes() == kept  # marked: not redone
    other = genscan_detector(
        tmp_path / "lin2", "tiny-linear", backbone=world["bb"], seed=7
    )  # reads the store
    code, err = _rescore(capsys, *base, "--detector", other, "--resume")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"configuration error: detector: --resume of scan_date={DAY} in {out} with a ")
    assert "different detector" in err[0] and "start a new run without --resume" in err[0], err


def test_stored_features_stay_out_of_the_scan_rows_readers(world) -> None:
    """`_features/` sits under the scan output: open_scan (Arrow discovery of <out>) and the documented glob
    read the scan rows only, with the scan schema."""
    import duckdb

    from pipeline.output import SCHEMA, open_scan, parquet_glob

    rows = read_rows(world["scan_lin"])
    ds = open_scan(world["scan_lin"])
    assert ds.count_rows() == len(rows) == 23
    assert all(f.name in (*SCHEMA.names, "scan_date") for f in ds.schema)
    n = (
        duckdb.connect()
        .execute(f"SELECT count(*) FROM read_parquet('{parquet_glob(world['scan_lin'])}')")
        .fetchone()[0]
    )
    assert n == 23


def test_an_incremental_night_carries_each_shards_features_with_it(world, tmp_path, capsys) -> None:
    """Night 2 with --incremental (same detector, same --features): the unchanged shards are carried with
    their features parts (byte-identical), the added shard is scanned and gets its own; the night re-scores
    like a full night. A night keeping other features (int8) never carries from it: a full scan."""
    corpus = tmp_path / "in"
    shutil.copytree(world["corpus"], corpus)
    scan = str(tmp_path / "scan")
    night1 = feature_scan(str(corpus), scan, world["lin"], features="pre_proj", scan_date="2026-01-05")
    assert night1["status"] == "succeeded"
    write_shard(str(corpus / "shard-000009.tar"), good_samples(4, seed=19, prefix="9_", size=(100, 120)))
    inc = ["--incremental"]
    night2 = feature_scan(
        str(corpus), scan, world["lin"], features="pre_proj", scan_date="2026-01-06", extra=inc
    )
    assert night2["incremental"]["source_scan_date"] == "2026-01-05", night2["incremental"]
    day1, day2 = (
        Path(scan) / "_features" / "scan_date=2026-01-05",
        Path(scan) / "_features" / "scan_date=2026-01-06",
    )
    carried = {p.name for p in day1.glob("*.parquet")}
    assert night2["totals"]["shards_carried"] == len(carried) > 0
    assert {p.name for p in day2.glob("*.parquet")} == carried | {"shard-000009.parquet"}
    for name in carried:
        assert (day2 / name).read_bytes() == (day1 / name).read_bytes()
    code, err = _rescore(
        capsys,
        "--scan",
        scan,
        "--scan-date",
        "2026-01-06",
        "--detector",
        world["lin"],
        "--output",
        str(tmp_path / "re"),
    )
    assert code == 0, err
    night3 = feature_scan(
        str(corpus),
        scan,
        world["lin"],
        features="pre_proj",
        precision="int8",
        scan_date="2026-01-07",
        extra=inc,
    )
    assert night3["totals"]["shards_carried"] == 0 and night3["incremental"].get("full_scan_reason"), night3
