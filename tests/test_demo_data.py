"""Demo data generator: determinism, layouts and counts, WebDataset read-back, s3 output, and the learnability
of every simulated fingerprint (logistic regression on simple forensic features)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.synthetic import (
    FAMILIES,
    FEATURE_NAMES,
    DemoConfig,
    fingerprint_features,
    generate,
    list_families,
    make_fake_pair,
    make_image,
)
from pipeline.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _cfg(out: Path | str, **kw) -> DemoConfig:
    base = {"out": str(out), "families": ["upconv", "vqgan"], "n_per_class": 4, "seed": 3, "image_size": 64}
    base.update(kw)
    return DemoConfig.parse(base)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_image_is_deterministic_and_seed_dependent() -> None:
    a = make_image(7, "upconv", 1, 3)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, make_image(7, "upconv", 1, 3))
    assert not np.array_equal(a, make_image(8, "upconv", 1, 3))
    assert not np.array_equal(a, make_image(7, "upconv", 1, 4))
    assert not np.array_equal(make_image(7, "upconv", 0, 3), make_image(7, "diffusion", 0, 3))


def test_univfd_layout_counts_format_and_config(tmp_path: Path) -> None:
    summary = generate(_cfg(tmp_path / "a"))
    root = tmp_path / "a"
    for fam in ("upconv", "vqgan"):
        for cls in ("0_real", "1_fake"):
            files = sorted((root / fam / cls).iterdir())
            assert len(files) == 4
            assert all(f.suffix == ".png" for f in files)
            with Image.open(files[0]) as im:
                assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"
    assert summary["n_images"] == 16
    saved = json.loads((root / "demo_config.json").read_text())
    assert saved["config"]["families"] == ["upconv", "vqgan"]
    assert saved["counts"]["vqgan"] == {"0_real": 4, "1_fake": 4}
    assert "simulation" in saved["note"]
    # same config -> byte-identical corpus
    generate(_cfg(tmp_path / "b"))
    ta, tb = _tree(root), _tree(tmp_path / "b")
    ta.pop("demo_config.json"), tb.pop("demo_config.json")
    assert ta == tb
    # another seed -> other images
    generate(_cfg(tmp_path / "c", seed=4))
    assert (root / "upconv/1_fake/000000.png").read_bytes() != (
        tmp_path / "c/upconv/1_fake/000000.png"
    ).read_bytes()


def test_jpeg_option_applies_to_both_classes(tmp_path: Path) -> None:
    generate(_cfg(tmp_path, families=["diffusion"], format="jpeg", jpeg_quality=90))
    for cls in ("0_real", "1_fake"):
        files = list((tmp_path / "diffusion" / cls).iterdir())
        assert len(files) == 4 and all(f.suffix == ".jpg" for f in files)
        with Image.open(files[0]) as im:
            assert im.format == "JPEG"


def test_shards_layout_reads_back_with_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    generate(
        _cfg(
            tmp_path, layout="wds", families=["upconv", "diffusion", "gan_color"], n_per_class=5, shard_size=7
        )
    )
    shards = sorted(str(p) for p in tmp_path.glob("shard-*.tar"))
    assert [Path(s).name for s in shards] == [f"shard-{i:06d}.tar" for i in range(5)]  # 30 samples / 7
    ds = wds.WebDataset(shards, shardshuffle=False, empty_check=False)
    keys, labels, gens = [], [], []
    for sample in ds:
        meta = json.loads(sample["json"])
        assert set(meta) == {"label", "generator"}
        assert (meta["label"] == 0) == (meta["generator"] == "real")
        with Image.open(io.BytesIO(sample["png"])) as im:
            assert im.size == (64, 64)
        keys.append(sample["__key__"])
        labels.append(meta["label"])
        gens.append(meta["generator"])
    assert len(keys) == 30 and len(set(keys)) == 30
    assert labels.count(0) == 15 and labels.count(1) == 15
    assert {g: gens.count(g) for g in set(gens)} == {"real": 15, "upconv": 5, "diffusion": 5, "gan_color": 5}
    # shuffled: not all reals first, and both classes share the first shard
    assert labels[:15] != [0] * 15 and set(labels[:7]) == {0, 1}


def test_shards_to_s3(s3_server: dict[str, str], s3fs_client, tmp_path: Path) -> None:
    import webdataset as wds

    from pipeline.storage import list_shards, read_bytes

    s3fs_client.mkdir("demo-bucket")
    generate(_cfg("s3://demo-bucket/demo/wds", layout="wds", families=["vqgan"], n_per_class=3, shard_size=4))
    shards = list_shards("s3://demo-bucket/demo/wds")
    assert shards == [f"s3://demo-bucket/demo/wds/shard-{i:06d}.tar" for i in range(2)]
    n = 0
    for i, s in enumerate(shards):
        local = tmp_path / f"{i}.tar"
        local.write_bytes(read_bytes(s))
        for sample in wds.WebDataset([str(local)], shardshuffle=False, empty_check=False):
            n += 1
            assert json.loads(sample["json"])["generator"] in ("real", "vqgan")
    assert n == 6
    assert json.loads(read_bytes("s3://demo-bucket/demo/wds/demo_config.json"))["n_images"] == 6


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="families"):
        _cfg(tmp_path, families=["upconv", "stylegan9"])
    with pytest.raises(ConfigError, match="n_per_class"):
        _cfg(tmp_path, n_per_class=0)
    with pytest.raises(ConfigError, match="layout"):
        _cfg(tmp_path, layout="imagefolder")
    with pytest.raises(ConfigError, match="colour"):
        _cfg(tmp_path, colour="red")


def test_cli_contract(tmp_path: Path) -> None:
    cli = [sys.executable, str(ROOT / "jobs" / "make_demo_data.py")]
    listed = subprocess.run([*cli, "--list-families"], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == list_families()
    done = subprocess.run(
        [*cli, "--out", str(tmp_path / "d"), "--layout", "univfd", "--families", "upconv,gan_color"]
        + ["--n-per-class", "15", "--seed", "1", "--image-size", "64"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_images"] == 60
    assert len(list((tmp_path / "d" / "gan_color" / "1_fake").glob("*.png"))) == 15
    bad = subprocess.run(
        [*cli, "--out", str(tmp_path / "e"), "--families", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "families" in bad.stderr
    assert not (tmp_path / "e").exists()


def test_an_output_that_cannot_be_written_is_one_storage_line(tmp_path: Path) -> None:
    """The storage preflight (README "Exit codes"): a file where the output folder goes is 3, an s3:// output
    behind an endpoint nobody answers is 7; both were a traceback (NotADirectoryError /
    EndpointConnectionError) with exit 1, and nothing is written."""
    from tests.support.s3 import free_port

    cli = [sys.executable, str(ROOT / "jobs" / "make_demo_data.py"), "--n-per-class", "1", "--out"]
    (tmp_path / "a-file").write_text("x")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: refused
    }
    for out, code, says in [
        (str(tmp_path / "a-file"), 3, "output not usable: " + str(tmp_path / "a-file")),
        ("s3://bkt/demo", 7, "output unreachable (cannot connect): s3://bkt/demo"),
    ]:
        done = subprocess.run([*cli, out], capture_output=True, text=True, env=env)
        assert done.returncode == code, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("storage error: " + says), done.stderr
    assert (tmp_path / "a-file").read_text() == "x" and sorted(tmp_path.iterdir()) == [tmp_path / "a-file"]


def test_generation_speed(tmp_path: Path) -> None:
    """A few hundred 128 px images take seconds: 200 PNGs cost ~2 s of CPU here; CPU time (not wall time)
    so a busy shared machine does not make the check flaky."""
    make_image(0, "upconv", 0, 0)  # load the skimage photographs once
    t0 = time.process_time()
    summary = generate(
        _cfg(
            tmp_path / "x",
            families=["upconv", "diffusion", "vqgan", "gan_color"],
            n_per_class=25,
            image_size=128,
        )
    )
    cpu = time.process_time() - t0
    assert summary["n_images"] == 200
    assert cpu < 20, f"{cpu:.1f} s of CPU for 200 images"


# ---- learnability of the fingerprints ----------------------------------------------------------------------
N_SEP = 60


@pytest.fixture(scope="module")
def features() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Forensic features of the 96 px centre crop of N_SEP reals and N_SEP fakes per family (seed 11)."""
    out = {}
    for fam in list_families():
        real = np.stack([fingerprint_features(make_image(11, fam, 0, i), crop=96) for i in range(N_SEP)])
        fake = np.stack([fingerprint_features(make_image(11, fam, 1, i), crop=96) for i in range(N_SEP)])
        out[fam] = (real, fake)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_separable_from_real(features, family: str) -> None:
    real, fake = features[family]
    x = np.vstack([real, fake])
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    p = cross_val_predict(
        clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba"
    )
    auc = roc_auc_score(y, p[:, 1])
    assert auc >= 0.9, f"{family}: cross-validated AUC {auc:.3f}"


def _median(feats: np.ndarray, name: str) -> float:
    return float(np.median(feats[:, FEATURE_NAMES.index(name)]))


def test_families_leave_their_own_signature(features) -> None:
    """Each family moves the statistic it is built to move, so held-out families test generalisation rather
    than the same trace under another name."""
    sig = {}
    for fam, (real, fake) in features.items():
        sig[fam] = {n: _median(fake, n) - _median(real, n) for n in FEATURE_NAMES}
    others = {f: [g for g in FAMILIES if g != f] for f in FAMILIES}
    # transposed-conv upsampling: period-2 spectral peaks, far above every other family's
    assert sig["upconv"]["log_period2_peak"] > 3.0
    assert sig["upconv"]["log_period2_peak"] > 3 * max(
        abs(sig[f]["log_period2_peak"]) for f in others["upconv"]
    )
    # f8 autoencoders (VQ decoding, latent diffusion): period-8 structure, absent from the other two
    for fam in ("vqgan", "diffusion"):
        assert sig[fam]["log_period8_peaks"] > 1.5, fam
    for fam in ("upconv", "gan_color"):
        assert sig[fam]["log_period8_peaks"] < 1.0, fam
    # diffusion: high-frequency roll-off under a noise floor -> the only family with a smaller |Laplacian|
    assert sig["diffusion"]["log_fft_band_4"] < -1.0
    assert sig["diffusion"]["log_mean_abs_laplacian"] < -0.3
    assert min(sig[f]["log_mean_abs_laplacian"] for f in others["diffusion"]) > 0.0
    # GAN colour statistics: the largest saturation shift and clear chroma noise
    assert sig["gan_color"]["mean_saturation"] > max(sig[f]["mean_saturation"] for f in others["gan_color"])
    assert sig["gan_color"]["log_chroma_residual"] > 0.5


def _folded_trace(family: str, seed: int, n: int = 30) -> np.ndarray:
    """The fingerprint (fake - its content) averaged over every 8x8 cell position of n images."""
    acc = np.zeros((8, 8, 3))
    for i in range(n):
        content, fake = make_fake_pair(seed, family, i, 64)
        acc += (fake.astype(np.float64) - content).reshape(8, 8, 8, 8, 3).mean(axis=(0, 2))
    acc /= n
    return (acc - acc.mean()).ravel()


def test_grid_locked_traces_are_fixed_per_family_and_distinct() -> None:
    """Like a generator's weights, a family's periodic trace is the same in data made with other seeds, and
    different families leave different (uncorrelated) traces."""
    a = {f: _folded_trace(f, 0) for f in FAMILIES}
    b = {f: _folded_trace(f, 1) for f in FAMILIES}
    for f in FAMILIES:
        assert np.corrcoef(a[f], b[f])[0, 1] > 0.6, f
        for g in FAMILIES:
            if g != f:
                assert abs(np.corrcoef(a[f], b[g])[0, 1]) < 0.4, (f, g)


def test_fakes_share_the_real_content_distribution() -> None:
    """Fake content comes from the real sampler: mean brightness alone does not tell the classes apart (the
    fingerprint, not the content, separates them)."""
    for fam in FAMILIES:
        real = np.array([make_image(5, fam, 0, i, 64).mean() for i in range(80)])
        fake = np.array([make_image(5, fam, 1, i, 64).mean() for i in range(80)])
        auc = roc_auc_score(np.r_[np.zeros(80), np.ones(80)], np.r_[real, fake])
        assert 0.35 < auc < 0.65, f"{fam}: brightness alone separates the classes (AUC {auc:.2f})"


@pytest.mark.slow
def test_random_feature_probe_reads_the_upconv_trace() -> None:
    """The frozen random-init tiny-mole backbone already exposes the checkerboard to a linear head, with
    centre crops and with grid-aligned random crops + flips (held-out seed; 40 + 40 images)."""
    from pipeline.data.learnability import random_probe_ap

    ap = random_probe_ap("upconv", 40)
    assert ap["centre"] >= 0.9 and ap["grid8_flip"] >= 0.9, ap
