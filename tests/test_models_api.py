"""Configs, preprocessing, features, sklearn heads, Predictor and the CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import DetectorConfig, DetectorMeta, Predictor, create_detector, list_configs
from pipeline.models.checks import randomize_adapters
from pipeline.models.constants import CLIP_MEAN, CLIP_STD
from pipeline.models.preprocess import prepare_image, to_model_input
from pipeline.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"tiny-mole", "tiny-linear", "vitb32-mole", "vitb16-mole", "vitl14-mole", "vitl14-linear"}


# ------------------------------------------------------------------------------------------------ configs
def test_shipped_configs_parse_and_constants_match_open_clip() -> None:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert set(list_configs()) >= SHIPPED
    for name in list_configs():
        cfg = DetectorConfig.load(name)
        assert cfg.name == name
        if cfg.pretrained == "openai":
            assert cfg.arch.endswith("-quickgelu")
    assert tuple(CLIP_MEAN) == tuple(OPENAI_DATASET_MEAN) and tuple(CLIP_STD) == tuple(OPENAI_DATASET_STD)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    base = DetectorConfig.load("tiny-mole").model_dump()
    with pytest.raises(ConfigError, match="mole.expert_rank"):
        DetectorConfig.parse({**base, "mole": {**base["mole"], "expert_rank": [4]}})
    with pytest.raises(ConfigError, match="top_k=4 exceeds"):
        DetectorConfig.parse({**base, "mole": {**base["mole"], "top_k": 4}})
    with pytest.raises(ConfigError, match="mole: required"):
        DetectorConfig.parse({**base, "mole": None})
    with pytest.raises(ConfigError, match="preprocess"):
        DetectorConfig.parse({**base, "preprocess": "squash"})
    with pytest.raises(ConfigError, match="generators: 'real' is reserved"):
        DetectorConfig.parse({**base, "generators": ["real"]})
    with pytest.raises(ConfigError, match="unknown detector config 'nope'"):
        DetectorConfig.load("nope")
    with pytest.raises(ConfigError, match="mole.blocks: 9 blocks requested, the backbone has 4"):
        create_detector(DetectorConfig.parse({**base, "mole": {**base["mole"], "blocks": 9}}))
    with pytest.raises(ConfigError, match="image_size: 64 but ViT-Tiny-16-96 expects 96"):
        create_detector(DetectorConfig.parse({**base, "image_size": 64}))
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({**base, "name": "mine", "mole": {**base["mole"], "blocks": [0, -1]}}))
    det = create_detector(DetectorConfig.load(str(p)))
    assert det.mole_blocks == [0, 3]


# ------------------------------------------------------------------------------------------------ preprocess
def _cfg(preprocess: str = "center_crop") -> DetectorConfig:
    return DetectorConfig.parse({**DetectorConfig.load("tiny-mole").model_dump(), "preprocess": preprocess})


def test_center_crop_without_resize_and_exif_transpose() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    out = prepare_image(Image.fromarray(arr), _cfg())
    assert out.dtype == np.uint8 and out.shape == (96, 96, 3)
    assert np.array_equal(out, arr[16:112, 32:128])  # pixels untouched: crop only

    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    rotated = np.rot90(arr, k=-1)  # (160, 128, 3) as displayed
    out = prepare_image(Image.open(io.BytesIO(buf.getvalue())), _cfg())
    assert np.array_equal(out, rotated[32:128, 16:112])


def test_resize_crop_and_small_images_match_torchvision() -> None:
    from torchvision import transforms as T

    rng = np.random.default_rng(1)
    tv = T.Compose([T.Resize(96, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(96)])
    for shape, mode in [
        ((100, 200, 3), "resize_crop"),
        ((300, 150, 3), "resize_crop"),
        ((50, 70, 3), "center_crop"),
    ]:
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        assert np.array_equal(prepare_image(img, _cfg(mode)), np.asarray(tv(img))), (shape, mode)
    for mode in ("L", "P", "RGBA", "I;16"):
        img = Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).convert(mode)
        assert prepare_image(img, _cfg()).shape == (96, 96, 3)


def test_to_model_input_normalises_nchw() -> None:
    cfg = _cfg()
    imgs = np.random.default_rng(2).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    x = to_model_input(imgs, cfg)
    ref = (imgs.astype(np.float32) / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    assert x.shape == (2, 3, 96, 96) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), ref.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)
    assert to_model_input(imgs[0], cfg).shape == (1, 3, 96, 96)
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(imgs.astype(np.float32), cfg)
    with pytest.raises(ValueError, match=r"\(N, 96, 96, 3\)"):
        to_model_input(imgs[:, :64], cfg)


# ------------------------------------------------------------------------------------------------ features
def test_features_match_open_clip_forward() -> None:
    """MoLE reads open_clip's own image embedding; linear reads ln_post(CLS) before proj, L2-normalised."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 96)
    mole = create_detector("tiny-mole")
    lin = create_detector("tiny-linear")
    with torch.no_grad():
        assert torch.allclose(mole(x).features, mole.visual(x), atol=1e-6)  # fresh adapters: B = 0
        proj = lin.visual.proj
        lin.visual.proj = None
        pooled = lin.visual(x)
        lin.visual.proj = proj
        ref = torch.nn.functional.normalize(pooled, dim=-1)
        feat = lin(x).features
    assert feat.shape == (2, 128) and torch.allclose(feat, ref, atol=1e-6)
    assert torch.allclose(feat.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_linear_head_from_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    det = create_detector("tiny-linear", generators=["a", "b"])
    x = torch.randn(40, 3, 96, 96)
    with torch.no_grad():
        f = det(x).features.numpy()
    y = (f[:, 0] > np.median(f[:, 0])).astype(int)
    clf = LogisticRegression(C=10.0).fit(f, y)
    det.set_linear_head(clf.coef_, clf.intercept_)
    yg = np.arange(40) % 3
    mc = LogisticRegression(C=10.0).fit(f, yg)
    det.set_generator_head(mc.coef_, mc.intercept_)
    with torch.no_grad():
        out = det(x)
    np.testing.assert_allclose(out.logit.numpy(), clf.decision_function(f), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.gen_logits.softmax(-1).numpy(), mc.predict_proba(f), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="head expects"):
        det.set_linear_head(np.zeros((1, 64)), 0.0)


# ------------------------------------------------------------------------------------------------ predictor
def test_predictor_outputs_thresholds_and_unknown() -> None:
    torch.manual_seed(0)
    gens = ["gan", "diffusion"]
    det = create_detector("tiny-mole", generators=gens)
    randomize_adapters(det)
    with torch.no_grad():
        det.head_fake.weight.normal_(0, 0.3)
        det.head_gen.weight.normal_(0, 0.3)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    det.set_fused(False)
    with torch.no_grad():
        ref = det(to_model_input(imgs, det.config))
    meta = DetectorMeta(generators=gens, threshold=0.5, unknown_threshold=0.0)
    pred = Predictor(det, meta, batch_size=2)
    assert det.fused  # the predictor runs the fused path
    out = pred.predict(imgs)
    p_ref = torch.sigmoid(ref.logit).numpy()
    np.testing.assert_allclose(out["p_fake"], p_ref, rtol=1e-5, atol=1e-7)
    assert p_ref.min() > 0.0 and p_ref.max() < 1.0
    np.testing.assert_allclose(out["logit"], ref.logit.numpy(), rtol=1e-5, atol=1e-6)
    scores = ref.gen_logits.softmax(-1).numpy()
    np.testing.assert_allclose(out["generator_scores"], scores, rtol=1e-5, atol=1e-6)
    assert out["generator_scores"].shape == (5, 3) and out["generator_scores"].dtype == np.float32
    assert out["top_generator"] == [["real", *gens][i] for i in scores.argmax(1)]
    assert out["is_fake"].tolist() == (p_ref >= 0.5).tolist()

    def midpoint(v: np.ndarray) -> float:
        """A threshold between two observed values (no ties at rounding level)."""
        s = np.sort(v)
        return float((s[2] + s[3]) / 2)

    thr, unk = midpoint(p_ref), midpoint(scores.max(1))
    out2 = Predictor(det, DetectorMeta(generators=gens, threshold=thr, unknown_threshold=unk)).predict(imgs)
    assert out2["is_fake"].tolist() == (p_ref >= thr).tolist()
    assert [t == "unknown" for t in out2["top_generator"]] == (scores.max(1) < unk).tolist()
    assert Predictor(det, DetectorMeta(generators=gens)).predict(imgs[:0])["p_fake"].shape == (0,)
    with pytest.raises(ValueError, match="dtype"):
        Predictor(det, meta, dtype="float64")
    with pytest.raises(ValueError, match="generators"):
        Predictor(det, DetectorMeta(generators=["x"]))


def test_predictor_bfloat16_autocast_close_to_fp32() -> None:
    torch.manual_seed(0)
    det = create_detector("tiny-mole")
    randomize_adapters(det)
    imgs = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    a = Predictor(det, DetectorMeta()).predict(imgs)
    b = Predictor(det, DetectorMeta(), dtype="bfloat16").predict(imgs)
    assert b["logit"].dtype == np.float32
    np.testing.assert_allclose(b["logit"], a["logit"], atol=0.1)


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENSCAN_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.models", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The same CLI's main() in this process (torch is loaded here already: a subprocess would load it
    again)."""
    from pipeline.models.__main__ import main

    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "the following arguments are required: cmd"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["check-fused", "tiny-mole", "--batch", "0"], "argument --batch: expected an integer >= 1, got '0'"),
        (["check-fused", "tiny-mole", "--top-k", "-1"], "argument --top-k: expected an integer >= 1"),
        (["check-fused", "tiny-linear"], "tiny-linear: check-fused needs a MoLE config"),
    ],
)
def test_cli_usage_mistakes_are_one_config_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """argparse's usage + error (two lines), a reshape traceback (--batch 0) and a ValueError traceback (a
    non-MoLE config) were what `python -m pipeline.models` printed for these."""
    from pipeline.models.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("configuration error: ") and says in err, err


@pytest.mark.slow
def test_cli_list_describe_check_fused(capsys: pytest.CaptureFixture[str]) -> None:
    # `python -m pipeline.models` as a user runs it: the subcommands that load no torch, and the exit code of
    # a bad config name; the torch subcommands through the same main() in this process
    r = _cli("list")
    assert r.returncode == 0 and {line.split("\t")[0] for line in r.stdout.splitlines()} >= SHIPPED
    r = _cli("describe", "no-such-config", "--json")
    assert r.returncode == 2 and "describe config: unknown detector config 'no-such-config'" in r.stderr

    d = json.loads(_cli_in_process(capsys, "describe", "tiny-mole", "--json"))
    # tiny-mole: last 2 blocks of width 128, shared r8 + 3 experts r8, router 128x3; heads on the 64-d
    # embedding
    adapter = 2 * (2 * 128 * (8 + 24) + 128 * 3)
    assert d["adapter_params"] == adapter and d["head_params"] == 65 + 65
    assert d["trainable_params"] == adapter + 130
    assert d["total_params"] == d["clip_params"] + adapter + 130 > d["visual_params"] > d["trainable_params"]
    assert d["trainable_pct_total"] == pytest.approx(100 * d["trainable_params"] / d["total_params"])
    assert d["trainable_pct_visual"] == pytest.approx(100 * d["trainable_params"] / d["visual_params"])

    c = json.loads(_cli_in_process(capsys, "check-fused", "tiny-mole", "--json", "--top-k", "2"))
    assert 0 <= c["max_rel_err"] <= 1e-5 and c["top_k"] == 2 and c["adapter_effect_rel"] > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-mole", "tiny-linear", "rine-tiny", "clipbased-tiny", "vitb32-mole"])
def test_describe_counts_what_a_built_detector_holds(name: str) -> None:
    """describe builds on the meta device (no weights): its counts are those of the detector built for
    real."""
    from pipeline.models.checks import describe

    cfg = DetectorConfig.load(name)
    built = create_detector(cfg, pretrained=None).param_counts()
    assert {k: v for k, v in describe(cfg).items() if k in built} == built


def test_vitl14_mole_trains_0_08_percent() -> None:
    """The real ViT-L-14 (QuickGELU) architecture, counted on the meta device (describe)."""
    from pipeline.models.checks import describe

    d = describe(DetectorConfig.load("vitl14-mole"))
    assert d["clip_params"] == pytest.approx(427.6e6, rel=1e-3)
    assert d["visual_base_params"] == pytest.approx(304.0e6, rel=1e-3)
    assert d["adapted_blocks"] == [19, 20, 21, 22, 23]
    assert d["adapter_params"] == 5 * (2 * 1024 * (8 + 3 * 8) + 1024 * 3) == 343_040
    assert d["trainable_pct_total"] == pytest.approx(0.08, abs=0.002)
