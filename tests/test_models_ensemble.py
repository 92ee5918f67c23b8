"""Several detectors in one pass (pipeline.models.ensemble): UnivFD-, RINE- and ClipBased-style imports plus a
MoLE detector on ONE tiny backbone file. Shared pass == each detector alone; which blocks ran how often;
frozen modules deduplicated; per-detector decisions and the fused score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models import create_detector, load_detector, save_detector
from pipeline.models.checks import randomize_adapters, rel_err
from pipeline.models.ensemble import InputSpec, load_detector_set
from pipeline.models.fusion import fuse
from pipeline.models.preprocess import prepare_image
from pipeline.settings import ConfigError
from tests.support.peer_detectors import imported_set, jpeg


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return imported_set(tmp_path_factory.mktemp("set"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSCAN_CACHE", str(tmp_path / "cache"))


def _images(n: int = 5) -> list:
    return [jpeg(90 + 13 * i, 140 - 11 * i, seed=i) for i in range(n)]


def _alone(path: Path, images: list) -> np.ndarray:
    det, _ = load_detector(path)
    det.set_fused(True)
    x = np.stack([prepare_image(im, det.config) for im in images])
    from pipeline.models.preprocess import to_model_input

    with torch.no_grad():
        return det(to_model_input(x, det.config)).logit.numpy()


def test_shared_pass_equals_each_detector_alone(ckpts: dict[str, Path]) -> None:
    names = ["univfd", "rine", "mole", "clipbased"]
    dset = load_detector_set([str(ckpts[n]) for n in names], fusion="mean_prob")
    desc = dset.describe()
    # one backbone file, one size: one group; three preprocessings (images of both kinds below: a side under
    # 96 px, where center_crop_pad and center_crop differ, and a shorter side of exactly 96, where all agree)
    assert [s.key for s in dset.inputs] == ["center_crop_pad@96", "center_crop@96", "resize_crop@96"]
    assert [len(g["detectors"]) for g in desc["groups"]] == [4]
    assert desc["groups"][0]["shared_blocks"] == 2 and desc["groups"][0]["depth"] == 4
    images = _images()
    batches = {s: np.stack([prepare_image(im, s) for im in images]) for s in dset.inputs}
    res = dset.predict(batches)
    assert res["logit"].shape == (5, 4) and res["detector_ids"] == dset.detector_ids
    for j, n in enumerate(names):
        ref = _alone(ckpts[n], images)
        assert rel_err(torch.from_numpy(res["logit"][:, j]), torch.from_numpy(ref)) <= 1e-5, n
    np.testing.assert_allclose(
        res["fused_logit"], fuse(res["logit"], "mean_prob", axis=1), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(res["fused_is_fake"], res["fused_logit"] > 0)
    np.testing.assert_array_equal(res["is_fake"][:, 0], res["logit"][:, 0] > 0)  # univfd: logit_gt
    np.testing.assert_array_equal(res["is_fake"][:, 2], res["p_fake"][:, 2] >= 0.5)  # mole: p_fake_ge
    assert res["logit"].std(axis=0).min() > 0  # every detector responds to the images


def test_blocks_run_once_per_group_and_frozen_modules_are_shared(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    names = ["univfd", "rine", "mole"]
    shared = load_detector_set([str(ckpts[n]) for n in names])
    u, r, m = (mm.det for mm in shared.members)
    blocks_u = u.visual.transformer.resblocks
    assert (
        r.visual.transformer.resblocks[0] is blocks_u[0] and m.visual.transformer.resblocks[1] is blocks_u[1]
    )
    assert r.visual.transformer.resblocks[3] is blocks_u[3]  # no adaptation in either
    assert m.visual.transformer.resblocks[3] is not blocks_u[3]  # MoLE's own adapted block
    assert m.visual.conv1 is u.visual.conv1 and m.visual.proj is u.visual.proj

    calls: dict[int, int] = {}
    distinct = {id(b): b for d in (u, r, m) for b in d.visual.transformer.resblocks}
    hooks = [
        b.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
        for b in distinct.values()
    ]
    try:
        big = [jpeg(130, 110, seed=1), jpeg(100, 160, seed=2)]  # >= 96 px on both sides: one pass for all
        shared.predict({sp: np.stack([prepare_image(im, sp) for im in big]) for sp in shared.inputs})
    finally:
        for h in hooks:
            h.remove()
    # blocks 0-1 once for all three; blocks 2-3 once for the two plain members and once for MoLE's own
    assert sum(calls.values()) == 2 + 2 + 2
    assert all(v == 1 for v in calls.values())

    # a detector on another backbone (random init, stored in its checkpoint) runs its own pass
    torch.manual_seed(3)
    save_detector(create_detector("tiny-mole", pretrained=None), tmp_path / "other")
    mixed = load_detector_set([str(ckpts["univfd"]), str(ckpts["rine"]), str(tmp_path / "other")])
    assert [len(g["detectors"]) for g in mixed.describe()["groups"]] == [2, 1]


def test_mistakes(ckpts: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="named twice"):
        load_detector_set([str(ckpts["univfd"]), str(ckpts["univfd"])])
    with pytest.raises(ConfigError, match="fusion must be one of"):
        load_detector_set([str(ckpts["univfd"])], fusion="vote")
    dset = load_detector_set([str(ckpts["univfd"]), str(ckpts["clipbased"])])
    with pytest.raises(ValueError, match="no batch for input resize_crop@96"):
        dset.predict({InputSpec(96, "center_crop_pad"): np.zeros((1, 96, 96, 3), np.uint8)})


def test_two_mole_detectors_share_the_blocks_before_either_adapts(
    ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No plain member: the prefix before the earliest adapted block is shared, each MoLE runs its own
    rest."""
    from pipeline.models import DetectorConfig

    root = tmp_path_factory.mktemp("mole3")
    cfg = DetectorConfig.load("tiny-mole")
    cfg = DetectorConfig.parse(
        {**cfg.model_dump(), "name": "tiny-mole3", "mole": {**cfg.mole.model_dump(), "blocks": 3}},
        source="test",
    )
    bb = str(ckpts["univfd"].parent / "bb.safetensors")
    torch.manual_seed(2)
    det = create_detector(cfg, pretrained=bb)  # adapts blocks 1, 2, 3
    randomize_adapters(det, seed=2)
    save_detector(det, root / "mole3")
    dset = load_detector_set([str(ckpts["mole"]), str(root / "mole3")])
    assert dset.describe()["groups"][0]["shared_blocks"] == 1
    images = [jpeg(120, 100, seed=3), jpeg(70, 130, seed=4)]
    spec = dset.inputs[0]
    res = dset.predict({spec: np.stack([prepare_image(im, spec) for im in images])})
    for j, path in enumerate([ckpts["mole"], root / "mole3"]):
        ref = _alone(path, images)
        assert rel_err(torch.from_numpy(res["logit"][:, j]), torch.from_numpy(ref)) <= 1e-5


# ------------------------------------------------------------------------------ the one engine, its row view
def _prepared(images: list, spec) -> np.ndarray:
    return np.stack([prepare_image(im, spec) for im in images])


@pytest.mark.parametrize("name", ["mole", "rine"])
def test_single_predictor_is_a_one_member_set_and_matches_a_plain_forward(
    ckpts: dict[str, Path], name: str
) -> None:
    """Bit-for-bit on CPU fp32: Predictor(det, meta) == the one-member set's member output == det(x) with
    the logistic / softmax computed here."""
    from pipeline.models import Predictor
    from pipeline.models.ensemble import DetectorSet
    from pipeline.models.preprocess import to_model_input

    det, meta = load_detector(ckpts[name])
    x = _prepared(_images(), det.config)
    det.set_fused(True)  # the inference path (the unfused one agrees to fp32 rounding: test_models_mole)
    with torch.inference_mode():
        ref = det(to_model_input(x, det.config))
    ref_logit = ref.logit.float().numpy()
    ref_scores = ref.gen_logits.float().softmax(dim=-1).numpy()
    ref_p = 1.0 / (1.0 + np.exp(-ref_logit.astype(np.float64)))

    out = Predictor(det, meta).predict(x)
    raw = DetectorSet([(det, meta)]).predict({InputSpec(96, det.config.preprocess): x})
    did = raw["detector_ids"][0]
    assert np.array_equal(out["logit"], ref_logit) and out["logit"].dtype == np.float32
    assert np.array_equal(raw["logit"][:, 0], ref_logit)
    assert np.array_equal(out["generator_scores"], ref_scores)
    assert np.array_equal(raw["generator_scores"][did], ref_scores)
    np.testing.assert_allclose(out["p_fake"], ref_p, rtol=1e-6)
    assert np.array_equal(out["p_fake"], raw["p_fake"][:, 0])
    assert np.array_equal(out["is_fake"], raw["is_fake"][:, 0])
    assert not any(k.startswith("member_") for k in out)  # the single detector's documented keys only
    assert ref_logit.std() > 0
    if not det.mole_blocks:  # a tap set on the detector after the Predictor was built: its features come too
        from pipeline.models.detector import frozen_feature

        pred = Predictor(det, meta)
        det.set_tap("pre_proj")
        with torch.inference_mode():
            v = det.visual
            ref_feat = frozen_feature(v, v.transformer(v._embeds(to_model_input(x, det.config))), "pre_proj")
        np.testing.assert_allclose(pred.predict(x)["features"], ref_feat.numpy(), rtol=1e-5, atol=1e-6)
        det.set_tap(None)


def test_set_rows_carry_each_members_own_predictor_scores(ckpts: dict[str, Path]) -> None:
    """A set's member_* columns are what each member's own single Predictor gives; its row p_fake / logit /
    is_fake are the fusion of those; its attribution is the attributing member's."""
    from pipeline.models import Predictor
    from pipeline.models.fusion import attributor

    names = ["univfd", "mole", "clipbased"]
    images = _images()
    pset = Predictor.load([str(ckpts[n]) for n in names], fusion="mean_logit")
    out = pset.predict(*(_prepared(images, s) for s in pset.engine.inputs))
    singles = [Predictor.load([str(ckpts[n])]) for n in names]
    for j, single in enumerate(singles):
        own = single.predict(_prepared(images, single.engine.inputs[0]))
        np.testing.assert_allclose(out["member_logit"][:, j], own["logit"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["member_p_fake"][:, j], own["p_fake"], rtol=1e-5, atol=1e-7)
        assert np.array_equal(out["member_is_fake"][:, j], own["is_fake"])
    np.testing.assert_allclose(out["logit"], out["member_logit"].mean(axis=1), rtol=1e-6, atol=1e-6)
    assert np.array_equal(out["is_fake"], out["logit"] > 0)
    first = singles[attributor([s.meta.labels for s in singles])]
    own = first.predict(_prepared(images, first.engine.inputs[0]))
    np.testing.assert_allclose(out["generator_scores"], own["generator_scores"], rtol=1e-5, atol=1e-6)
    assert pset.meta.detector_id == first.meta.detector_id


def test_training_validation_runs_the_engine_and_leaves_the_training_forward(ckpts: dict[str, Path]) -> None:
    """predict_stream (training validation, the linear fit) scores through the engine's fused inference path:
    it equals the unfused training forward to fp32 rounding, applies the texture mask to the model input, and
    leaves the model's MoLE mode as it found it."""
    from pipeline.models.preprocess import to_model_input
    from pipeline.train.feed import SkipCounter
    from pipeline.train.masking import mask_textured
    from pipeline.train.validate import predict_stream

    det, _ = load_detector(ckpts["mole"])
    det.set_fused(False)  # as training runs it
    x = _prepared(_images(6), det.config)
    batch = {
        "image": x,
        "label": np.arange(6) % 2,
        "cls": np.zeros(6, np.int64),
        "row": np.arange(6),
        "ok": np.array([True, True, False, True, True, True]),
        "error": np.array(["", "", "unreadable", "", "", ""], dtype=object),
    }
    keep = batch["ok"]
    for mask in (None, (16, 0.5)):
        with torch.no_grad():
            xin = to_model_input(x[keep], det.config)
            ref = det(xin if mask is None else mask_textured(xin, *mask))
        got = predict_stream(det, [batch], torch.device("cpu"), SkipCounter(), features=True, mask=mask)
        assert not det.fused  # the training forward is still the unfused one
        assert got["row"].tolist() == [0, 1, 3, 4, 5]
        np.testing.assert_allclose(got["logit"], ref.logit.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["features"], ref.features.numpy(), rtol=1e-5, atol=1e-5)
        sm = ref.gen_logits.softmax(-1).numpy()
        np.testing.assert_allclose(got["generator_scores"], sm, rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        got["logit"], predict_stream(det, [batch], torch.device("cpu"), SkipCounter())["logit"]
    )


def test_a_set_with_several_preprocessings_taps_each_rows_own_features(ckpts: dict[str, Path]) -> None:
    """The set's frozen features (`set_tap`) are, row for row, the tapped member's own: also when the members'
    preprocessings agree on some rows and not on others, so a chunk runs as several passes (each pass's tap
    belongs to its rows only)."""
    from pipeline.models.detector import frozen_feature
    from pipeline.models.preprocess import to_model_input

    dset = load_detector_set([str(ckpts["univfd"]), str(ckpts["mole"])], fusion="mean_prob")
    assert len(dset.inputs) == 2  # center_crop_pad and center_crop: they differ below 96 px, agree at 96
    images = [jpeg(96, 150, seed=1), jpeg(80, 120, seed=2), jpeg(130, 96, seed=3), jpeg(70, 140, seed=4)]
    batches = {s: _prepared(images, s) for s in dset.inputs}
    tapped = dset.set_tap("embedding")
    assert tapped is not None and tapped.detector_id == dset.detector_ids[0]  # univfd adapts no block
    res = dset.predict(batches)

    det, _ = load_detector(ckpts["univfd"])
    with torch.inference_mode():
        v = det.visual
        x = to_model_input(_prepared(images, det.config), det.config)
        ref = frozen_feature(v, v.transformer(v._embeds(x)), "embedding").numpy()
    np.testing.assert_allclose(res["features"], ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref[0], ref[1])  # the rows' features differ: a row given another's would show
