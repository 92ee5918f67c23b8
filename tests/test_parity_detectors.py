"""Parity, measured: imported detectors against references written the way each peer computes, on random-init
tiny backbones (the logits), and each preprocessing against the peer's torchvision transform, pixel for pixel,
on non-square JPEGs smaller and larger than the crop.

References (independent of genscan's code paths):
* UnivFD: ``model.encode_image(x)`` (open_clip) -> ``nn.Linear`` loaded strictly from the peer's dict;
* ClipBased: ``model.visual.proj = None`` then ``encode_image(x, normalize=True)`` -> ``fc``;
* RINE: forward hooks on every ``ln_2`` of ``model.visual.named_modules()``, ``encode_image``, the hooked
  outputs stacked as RINE does in its (L, N, D) layout, then RINE's proj1 / softmax(alpha) / proj2 / head.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from pipeline.models import Predictor, load_detector
from pipeline.models.checks import rel_err
from pipeline.models.config import DetectorConfig
from pipeline.models.constants import CLIP_MEAN, CLIP_STD
from pipeline.models.importer import import_detector
from pipeline.models.preprocess import prepare_image, to_model_input
from tests.support.peer_detectors import RineRef, jpeg, peer_state, save_backbone, save_peer, tiny_clip

SIZES = [(150, 97), (64, 120), (96, 96), (200, 300), (95, 97), (80, 80)]  # (w, h) around the 96 px crop
SIZES_224 = [(300, 200), (180, 250), (640, 427), (224, 225), (100, 300), (223, 223), (225, 224)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSCAN_CACHE", str(tmp_path / "cache"))


def peer_transform(mode: str, size: int) -> T.Compose:
    """The peers' test transforms: UnivFD validate.py / RINE get_transforms (CenterCrop only), ClipBased
    main.py 'Clip224' (Resize(BICUBIC) + CenterCrop); then ToTensor + Normalize(CLIP mean/std)."""
    steps: list = [T.CenterCrop(size)]
    if mode == "resize_crop":
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((size, size))]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)])


def pil_part(mode: str, size: int) -> T.Compose:
    steps: list = [T.CenterCrop(size)]
    if mode == "resize_crop":
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((size, size))]
    return T.Compose(steps)


# ---------------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("mode", ["center_crop_pad", "resize_crop"])
@pytest.mark.parametrize("size", [224, 96])
def test_preprocessing_equals_peer_transform_pixel_for_pixel(mode: str, size: int) -> None:
    cfg = DetectorConfig.parse(
        {"name": "p", "method": "linear", "arch": "ViT-Tiny-16-96", "image_size": size, "preprocess": mode},
        source="test",
    )
    sizes = SIZES_224 if size == 224 else SIZES
    for i, (w, h) in enumerate(sizes):
        img = jpeg(w, h, seed=i)
        ours = prepare_image(img, cfg)
        theirs = np.asarray(pil_part(mode, size)(img))
        assert ours.shape == theirs.shape == (size, size, 3)
        assert np.array_equal(ours, theirs), f"{mode} {w}x{h}: {int((ours != theirs).sum())} values differ"
        x_ours = to_model_input(ours, cfg)[0]
        x_theirs = peer_transform(mode, size)(img)
        assert torch.allclose(x_ours, x_theirs, atol=1e-6, rtol=0), f"{mode} {w}x{h}"
    if mode == "center_crop_pad":  # a smaller side really is zero-padded (not resized) as torchvision does
        small = prepare_image(jpeg(size - 30, size + 40, seed=9), cfg)
        assert (small[:, :15] == 0).all() and (small[:, -15:] == 0).all() and small[:, 15:-15].any()


def test_genscan_center_crop_differs_from_torchvision_only_below_size() -> None:
    """The trained detectors' ``center_crop`` equals CenterCrop for images at least S on both sides and
    resizes smaller ones (so the new ``center_crop_pad`` mode is needed for the peers)."""
    cfg = DetectorConfig.load("tiny-linear")
    assert np.array_equal(
        prepare_image(jpeg(150, 97, 0), cfg), np.asarray(T.CenterCrop(96)(jpeg(150, 97, 0)))
    )
    assert not np.array_equal(
        prepare_image(jpeg(64, 120, 1), cfg), np.asarray(T.CenterCrop(96)(jpeg(64, 120, 1)))
    )


# ---------------------------------------------------------------------------------------------- logits
class Hook:
    def __init__(self, module: nn.Module) -> None:
        self.output: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self.fn)

    def fn(self, _m, _i, out) -> None:
        self.output = out


def ref_univfd(model: nn.Module, sd: dict, x: torch.Tensor) -> torch.Tensor:
    fc = nn.Linear(model.visual.output_dim, 1)
    fc.load_state_dict(sd)  # strict, as UnivFD's validate.py: model.fc.load_state_dict(state_dict)
    return fc(model.encode_image(x)).flatten()


def ref_clipbased(model: nn.Module, sd: dict, x: torch.Tensor) -> torch.Tensor:
    model.visual.proj = None
    fc = nn.Linear(model.visual.ln_post.normalized_shape[0], 1)
    fc.load_state_dict({k.removeprefix("fc."): v for k, v in sd.items()})
    return fc(model.encode_image(x, normalize=True)).flatten()


def ref_rine(model: nn.Module, sd: dict, x: torch.Tensor, nproj: int, dim: int) -> torch.Tensor:
    hooks = [Hook(m) for name, m in model.visual.named_modules() if "ln_2" in name]
    depth, width = len(hooks), model.visual.ln_post.normalized_shape[0]
    trainable = RineRef(depth, width, nproj, dim)
    trainable.load_state_dict(sd)
    trainable.eval()
    model.encode_image(x)
    # open_clip runs batch-first; OpenAI clip (RINE's backbone) runs (L, N, D): restore that layout, then
    # RINE's own expression torch.stack([h.output for h in hooks], dim=2)[0, :, :, :]
    g = torch.stack([h.output.transpose(0, 1) for h in hooks], dim=2)[0, :, :, :]
    g = trainable.proj1(g.float())
    z = torch.softmax(trainable.alpha, dim=1) * g
    z = torch.sum(z, dim=1)
    z = trainable.proj2(z)
    return trainable.head(z).flatten()


@pytest.mark.parametrize(
    "kind,config", [("univfd", "univfd-tiny"), ("clipbased", "clipbased-tiny"), ("rine", "rine-tiny")]
)
def test_imported_logits_equal_peer_reference(kind: str, config: str, tmp_path: Path) -> None:
    model = tiny_clip(seed=3)
    bb = save_backbone(model, tmp_path / "bb.safetensors")
    sd = peer_state(kind)
    f = save_peer(
        tmp_path / "weights.pth", sd, nesting="model" if kind == "clipbased" else "raw", module=True
    )
    import_detector(kind, f, tmp_path / "ckpt", config=config, backbone_weights=str(bb))
    det, meta = load_detector(tmp_path / "ckpt")
    cfg = det.config
    images = [jpeg(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    # genscan: prepare_image -> uint8 -> Predictor (the scanner's model call)
    ours = Predictor(det, meta).predict(np.stack([prepare_image(im, cfg) for im in images]))
    # the peer: its torchvision transform -> its forward
    x = torch.stack([peer_transform(cfg.preprocess, cfg.image_size)(im) for im in images])
    with torch.no_grad():
        if kind == "univfd":
            ref = ref_univfd(model, sd, x)
        elif kind == "clipbased":
            ref = ref_clipbased(model, sd, x)
        else:
            ref = ref_rine(model, sd, x, cfg.rine.nproj, cfg.rine.proj_dim)
    err = rel_err(torch.from_numpy(ours["logit"]), ref)
    assert err <= 1e-5, f"{kind}: relative error {err:.2e}"
    assert ref.abs().max() > 1e-3 and ref.std() > 0  # the reference is not degenerate
    # the decision rule of the peers: fake when logit > 0 (sigmoid > 0.5)
    assert np.array_equal(ours["is_fake"], (ref > 0).numpy()) or np.abs(ref.numpy()).min() < 1e-6


def test_rine_reads_ln2_output_of_every_block(tmp_path: Path) -> None:
    """The feature itself: one ln_2 CLS token per block (equal to a hook's view), and the last block's ln_2,
    whose output feeds only that block's MLP, moves the RINE logit."""
    model = tiny_clip(seed=4)
    bb = save_backbone(model, tmp_path / "bb.safetensors")
    import_detector(
        "rine",
        save_peer(tmp_path / "w.pth", peer_state("rine")),
        tmp_path / "c",
        config="rine-tiny",
        backbone_weights=str(bb),
    )
    det, _ = load_detector(tmp_path / "c")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = det(x).logit.clone()
        blocks = det.visual.transformer.resblocks
        grabbed: list[torch.Tensor] = []
        h = blocks[0].ln_2.register_forward_hook(lambda m, i, o: grabbed.append(o[:, 0].clone()))
        det(x)
        h.remove()
        feats: list[torch.Tensor] = []
        from pipeline.models.detector import run_blocks

        run_blocks(det.visual.transformer, det.visual._embeds(x), 0, det.depth, feats)
        assert len(feats) == det.depth and torch.equal(feats[0], grabbed[0])
        blocks[-1].ln_2.bias.add_(1.0)
        assert not torch.allclose(det(x).logit, base)


@pytest.mark.parametrize("mode", ["center_crop_pad", "resize_crop"])
def test_scan_decode_gives_the_peer_pixels(mode: str) -> None:
    """The scan's CPU decode (bytes -> uint8) with an imported detector's mode equals the peer's transform of
    the decoded JPEG (a full scan with an imported RINE checkpoint was also run by hand: identical p_fake)."""
    from pipeline.scan.decode import decode_image

    for i, (w, h) in enumerate(SIZES):
        buf = io.BytesIO()
        jpeg(w, h, seed=i).save(buf, format="PNG")  # lossless carrier of the decoded JPEG's pixels
        res = decode_image(buf.getvalue(), image_size=96, resize_mode=mode)
        assert res.status == "ok", res.error
        theirs = np.asarray(pil_part(mode, 96)(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        assert np.array_equal(res.pixels, theirs), f"{mode} {w}x{h}"
