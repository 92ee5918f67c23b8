"""Detector files as the peers (UnivFD, ClipBased, RINE) release them, on random-init tiny open_clip
backbones, for the import, parity and ensemble tests: torch zip pickles of OrderedDicts with storages tagged
cuda:0, ClipBased's nestings and ``module.`` prefixes; structured non-square JPEGs as parity inputs; and one
set of imported detectors plus a MoLE on a single backbone file (`imported_set`)."""

from __future__ import annotations

import collections
import io
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from pipeline.models.config import register_arch_configs

TINY = "ViT-Tiny-16-96"


def tiny_clip(seed: int = 0) -> nn.Module:
    """A random-init tiny open_clip CLIP whose LayerNorms are perturbed too (ln_2 outputs are not trivial)."""
    register_arch_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY, pretrained=None)
    with torch.no_grad():
        for m in model.visual.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(0.2 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return model.eval()


def save_backbone(model: nn.Module, path: Path) -> Path:
    """Whole-CLIP-style ``visual.*`` keys, as open_clip's own safetensors files carry them."""
    save_file({f"visual.{k}": v.contiguous() for k, v in model.visual.state_dict().items()}, str(path))
    return path


class RineRef(nn.Module):
    """RINE's trainable part laid out as mever-team/rine src/models.py builds it (the parameter names of the
    released ckpt files come from here)."""

    def __init__(self, depth: int, width: int, nproj: int, proj_dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.randn([1, depth, proj_dim]))
        p1: list[nn.Module] = [nn.Dropout()]
        for i in range(nproj):
            p1 += [nn.Linear(width if i == 0 else proj_dim, proj_dim), nn.ReLU(), nn.Dropout()]
        self.proj1 = nn.Sequential(*p1)
        p2: list[nn.Module] = [nn.Dropout()]
        for _ in range(nproj):
            p2 += [nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout()]
        self.proj2 = nn.Sequential(*p2)
        self.head = nn.Sequential(
            nn.Linear(proj_dim, proj_dim),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(proj_dim, proj_dim),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(proj_dim, 1),
        )


def peer_state(
    kind: str, *, width: int = 128, embed: int = 64, depth: int = 4, nproj: int = 2, dim: int = 16
):
    torch.manual_seed(1)
    if kind == "univfd":
        fc = nn.Linear(embed, 1)
        return collections.OrderedDict(fc.state_dict())
    if kind == "clipbased":
        fc = nn.Linear(width, 1)
        return collections.OrderedDict((f"fc.{k}", v) for k, v in fc.state_dict().items())
    ref = RineRef(depth, width, nproj, dim)
    return collections.OrderedDict((k, v) for k, v in ref.state_dict().items())


def _cuda_tagger(obj: Any) -> str:
    return "cuda:0"


def save_peer(path: Path, sd: dict, *, nesting: str = "raw", module: bool = False, cuda: bool = True) -> Path:
    """torch.save like the peers: a zip pickle; ``cuda`` tags every storage 'cuda:0' as the released files
    are (a CPU host can read them only with map_location)."""
    if module:
        sd = collections.OrderedDict((f"module.{k}", v) for k, v in sd.items())
    obj: Any = sd if nesting == "raw" else {nesting: sd, "epoch": 7}
    import torch.serialization as ser

    if cuda:
        ser.register_package(0, _cuda_tagger, lambda o, loc: None)
    try:
        torch.save(obj, path)
    finally:
        ser._package_registry[:] = [p for p in ser._package_registry if p[1] is not _cuda_tagger]
    return path


def jpeg(w: int, h: int, seed: int) -> Image.Image:
    """A decoded non-square JPEG with structure (gradients + noise), no EXIF."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def imported_set(root: Path) -> dict[str, Path]:
    """UnivFD-, RINE- and ClipBased-style files imported over ONE tiny backbone file, plus a MoLE detector on
    blocks 2, 3 of the same file (adapters and fake head randomised so it is not the backbone alone); name ->
    checkpoint directory under `root`."""
    from pipeline.models import create_detector, save_detector
    from pipeline.models.checks import randomize_adapters
    from pipeline.models.importer import import_detector

    bb = save_backbone(tiny_clip(seed=5), root / "bb.safetensors")
    out = {}
    for kind in ("univfd", "rine", "clipbased"):
        f = save_peer(root / f"{kind}.pth", peer_state(kind))
        import_detector(kind, f, root / kind, config=f"{kind}-tiny", backbone_weights=str(bb))
        out[kind] = root / kind
    torch.manual_seed(0)
    mole = create_detector("tiny-mole", pretrained=str(bb))
    randomize_adapters(mole, seed=1)
    with torch.no_grad():
        mole.head_fake.weight.normal_(0, 1)
    save_detector(mole, root / "mole")
    out["mole"] = root / "mole"
    return out
