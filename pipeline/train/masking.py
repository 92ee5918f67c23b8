"""Texture-aware patch masking — our documented reading of MPFT (METHODS.md §3) [ours].

The MPFT abstract says only: fine-tune CLIP-ViT while masking textured areas, so the model cannot rely on
generator-specific texture and must learn deviations from the real-image distribution. Everything concrete
here is [ours]:
- texture score of a patch (the backbone's patch size, so a masked patch is exactly one ViT token) = mean
  gradient magnitude (central differences of the luminance) inside the patch;
- the top-ρ most textured patches of EACH image are masked (ties broken by patch index, lowest first);
- a masked patch is set to the dataset mean, i.e. 0 after CLIP normalisation;
- applied during TRAINING only, to real and fake images alike; evaluation and scanning never mask.
"""

from __future__ import annotations

import math

import torch

# ITU-R BT.601 luma weights; the texture score is computed on luminance.
_LUMA = (0.299, 0.587, 0.114)


def patch_texture_scores(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) float images (any affine scaling, e.g. CLIP-normalised) -> (N, H//patch, W//patch) mean
    gradient magnitude per patch. H and W must be multiples of `patch`."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(pixels.shape)}")
    n, _, h, w = pixels.shape
    if patch <= 0 or h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = pixels.float()
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    luma = (x * weights).sum(dim=1, keepdim=True)
    padded = torch.nn.functional.pad(luma, (1, 1, 1, 1), mode="replicate")
    gx = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2.0
    gy = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2.0
    mag = torch.sqrt(gx * gx + gy * gy)
    return torch.nn.functional.avg_pool2d(mag, kernel_size=patch, stride=patch).view(
        n, h // patch, w // patch
    )


def texture_mask(pixels: torch.Tensor, patch: int, ratio: float) -> torch.Tensor:
    """Bool mask (N, H//patch, W//patch): True for the round(ratio * n_patches) most textured patches of each
    image (ties -> lower patch index first). ratio in [0, 1]."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    scores = patch_texture_scores(pixels, patch)
    n, gh, gw = scores.shape
    n_patches = gh * gw
    k = int(math.floor(ratio * n_patches + 0.5))
    mask = torch.zeros(n, n_patches, dtype=torch.bool, device=scores.device)
    if k > 0:
        flat = scores.reshape(n, n_patches)
        # stable sort on -score keeps the lower index first among equal scores
        order = torch.sort(-flat, dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, order, True)
    return mask.view(n, gh, gw)


def apply_patch_mask(pixels: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Return a copy of `pixels` with every masked patch set to 0 (the dataset mean after CLIP normalisation)
    in all channels."""
    n, _, h, w = pixels.shape
    if mask.shape != (n, h // patch, w // patch):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match images {tuple(pixels.shape)} / patch {patch}"
        )
    full = mask.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2).unsqueeze(1)
    return torch.where(full, torch.zeros_like(pixels), pixels)


def mask_textured(pixels: torch.Tensor, patch: int, ratio: float) -> torch.Tensor:
    """Training transform: mask the top-`ratio` most textured patches of each (CLIP-normalised) image."""
    if ratio <= 0:
        return pixels
    return apply_patch_mask(pixels, texture_mask(pixels, patch, ratio), patch)
