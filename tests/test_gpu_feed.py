"""The engine's device feed (pipeline.models.ensemble.DetectorSet, also through pipeline.models.Predictor):
CPU results unchanged, dtype resolution, the fused attention path under autocast, a set's chunked feed, and
(behind the gpu marker) the CUDA feed of one detector and of a set against CPU fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models import DetectorConfig, DetectorMeta, Predictor, create_detector
from pipeline.models.checks import randomize_adapters
from pipeline.models.ensemble import DetectorSet, resolve_dtype
from pipeline.models.preprocess import to_model_input
from pipeline.settings import ConfigError

GENS = ["gan", "diffusion"]


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(0)
    d = create_detector("tiny-mole", pretrained=None, generators=GENS)
    randomize_adapters(d)
    with torch.no_grad():
        d.head_fake.weight.normal_(0, 0.3)
        d.head_gen.weight.normal_(0, 0.3)
    return d


def _previous_path(det, images: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The Predictor's forward as it was before the device feed (fp32, CPU): an independent restatement."""
    det.set_fused(True)
    logits, gen = [], []
    with torch.inference_mode():
        for i in range(0, len(images), step):
            out = det(to_model_input(images[i : i + step], det.config, device="cpu"))
            logits.append(out.logit.float().cpu())
            gen.append(out.gen_logits.float().softmax(dim=-1).cpu())
    return torch.cat(logits).numpy(), torch.cat(gen).numpy()


@pytest.mark.parametrize("batch_size", [None, 3])
def test_cpu_scores_bit_identical_to_previous_path(det, batch_size) -> None:
    imgs = np.random.default_rng(1).integers(0, 256, (7, 96, 96, 3), dtype=np.uint8)
    pred = Predictor(det, DetectorMeta(generators=GENS), batch_size=batch_size)
    assert pred.dtype == "float32" and pred.batch_size == batch_size  # CPU: no GPU chunking, no autocast
    out = pred.predict(imgs)
    logit, scores = _previous_path(det, imgs, batch_size or len(imgs))
    assert np.array_equal(out["logit"], logit)
    assert np.array_equal(out["generator_scores"], scores)
    # a uint8 tensor (what the CPU device decoder hands over) gives the same bits as the numpy array
    again = pred.predict(torch.from_numpy(imgs))
    assert np.array_equal(again["logit"], logit)


def test_dtype_resolution() -> None:
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", "cpu")


def test_gpu_batch_size_is_a_config_field() -> None:
    base = DetectorConfig.load("vitl14-mole")
    assert base.gpu_batch_size == 256
    with pytest.raises(ConfigError, match="gpu_batch_size"):
        DetectorConfig.parse({**base.model_dump(), "gpu_batch_size": 0})


def _op_counts(det, x: torch.Tensor, autocast: bool) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with (
        profile(activities=[ProfilerActivity.CPU]) as prof,
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        det(x)
    return {e.key: e.count for e in prof.key_averages()}


def test_fused_mole_keeps_fused_attention(det) -> None:
    """Under autocast (the GPU dtypes) every block's attention is ONE scaled_dot_product_attention call (flash
    / memory-efficient kernels on CUDA); without autocast, nn.MultiheadAttention's fused inference fast
    path."""
    det.set_fused(True)
    depth = len(det.visual.transformer.resblocks)
    x = to_model_input(np.zeros((2, 96, 96, 3), np.uint8), det.config)
    amp = _op_counts(det, x, autocast=True)
    assert amp.get("aten::scaled_dot_product_attention") == depth
    fp32 = _op_counts(det, x, autocast=False)
    assert fp32.get("aten::_native_multi_head_attention") == depth


@pytest.mark.gpu
def test_cuda_feed_matches_cpu_fp32(det) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    imgs = np.random.default_rng(2).integers(0, 256, (37, 96, 96, 3), dtype=np.uint8)
    cpu = Predictor(det, DetectorMeta(generators=GENS)).predict(imgs)
    cuda_det = create_detector("tiny-mole", pretrained=None, generators=GENS)
    cuda_det.load_state_dict(det.state_dict())
    pred = Predictor(cuda_det, DetectorMeta(generators=GENS), device="cuda", batch_size=8)  # 5 chunks
    assert pred.dtype in ("bfloat16", "float16")
    for images in (imgs, torch.from_numpy(imgs).cuda()):
        out = pred.predict(images)
        np.testing.assert_allclose(out["p_fake"], cpu["p_fake"], atol=3e-2)
    f32 = Predictor(cuda_det, DetectorMeta(generators=GENS), device="cuda", dtype="float32").predict(imgs)
    np.testing.assert_allclose(f32["logit"], cpu["logit"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_chunked_feed_of_a_set_matches_one_cpu_call(det, device) -> None:
    """Two members, two preprocessings (rows where their inputs agree share a pass, the others do not), fed
    in chunks of 4 rows (on CUDA: pinned uploads one chunk ahead): per-member and fused scores equal one
    unchunked fp32 CPU call."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(4)
    base = DetectorConfig.load("tiny-linear")
    lin = create_detector(
        DetectorConfig.parse({**base.model_dump(), "preprocess": "resize_crop"}), pretrained=None
    )
    frozen = {k.replace(".base_mlp", ""): v for k, v in det.visual.state_dict().items()}
    lin.visual.load_state_dict({k: frozen[k] for k in lin.visual.state_dict()})  # det's backbone: one group

    def members() -> list:
        out = []
        for d in (det, lin):
            c = create_detector(d.config, pretrained=None)
            c.load_state_dict(d.state_dict())
            out.append((c, DetectorMeta(generators=list(d.config.generators))))
        return out

    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 256, (21, 96, 96, 3), dtype=np.uint8)
    other = imgs.copy()
    other[::3] = rng.integers(0, 256, (7, 96, 96, 3), dtype=np.uint8)  # rows where the inputs differ
    ref_set = DetectorSet(members())
    ref = ref_set.predict(dict(zip(ref_set.inputs, (imgs, other), strict=True)))
    fed = DetectorSet(members(), device=device, dtype="float32", batch_size=4)
    assert [len(g.members) for g in fed.groups] == [2] and len(fed.inputs) == 2
    got = fed.predict(dict(zip(fed.inputs, (imgs, other), strict=True)))
    tol = 1e-5 if device == "cpu" else 1e-3
    np.testing.assert_allclose(got["logit"], ref["logit"], rtol=tol, atol=tol)
    np.testing.assert_allclose(got["fused_logit"], ref["fused_logit"], rtol=tol, atol=tol)
    assert ref["logit"].std(axis=0).min() > 0


def test_predictor_applies_the_detector_decision_rule(det) -> None:
    """`decision: logit_gt` (imported UnivFD/RINE/ClipBased detectors) decides on the logit itself."""
    from pipeline.models.decision import logit_of

    cfg = det.config.model_copy(update={"decision": "logit_gt"})
    d2 = create_detector(cfg, pretrained=None)
    d2.load_state_dict(det.state_dict())
    imgs = np.random.default_rng(3).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    base = Predictor(det, DetectorMeta(generators=GENS)).predict(imgs)
    thr = float(np.median(base["p_fake"]))
    out = Predictor(d2, DetectorMeta(generators=GENS, threshold=thr)).predict(imgs)
    assert np.array_equal(out["logit"], base["logit"])
    assert out["is_fake"].tolist() == (base["logit"].astype(np.float64) > logit_of(thr)).tolist()
