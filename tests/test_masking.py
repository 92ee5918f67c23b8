from __future__ import annotations

import pytest
import torch

from pipeline.train.masking import apply_patch_mask, mask_textured, patch_texture_scores, texture_mask


def _constructed() -> tuple[torch.Tensor, set[tuple[int, int]]]:
    """A 4x4-patch image (patch 8): flat everywhere except three patches with a checkerboard of
    decreasing contrast; the two strongest are the intended 'most textured' ones."""
    img = torch.zeros(1, 3, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checker = ((yy + xx) % 2).float()
    for (r, c), amp in {(0, 3): 3.0, (2, 1): 2.0, (3, 3): 0.5}.items():
        img[0, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = amp * checker
    return img, {(0, 3), (2, 1)}


def test_mask_selects_most_textured_patches() -> None:
    img, expected = _constructed()
    mask = texture_mask(img, patch=8, ratio=2 / 16)
    assert mask.shape == (1, 4, 4)
    assert {tuple(ix) for ix in mask[0].nonzero().tolist()} == expected
    scores = patch_texture_scores(img, 8)[0]
    assert scores[0, 3] > scores[2, 1] > scores[3, 3] > scores[1, 1]


def test_ratio_counts_and_per_image() -> None:
    img, _ = _constructed()
    batch = torch.cat([img, img.flip(-1)])
    for ratio, k in [(0.0, 0), (0.25, 4), (0.5, 8), (1.0, 16)]:
        m = texture_mask(batch, 8, ratio)
        assert m.view(2, -1).sum(1).tolist() == [k, k]
    m = texture_mask(batch, 8, 1 / 16)
    assert m[0, 0, 3] and m[1, 0, 0]  # flipped image: the strongest patch moved to column 0


def test_apply_sets_masked_patches_to_mean_only() -> None:
    img, _ = _constructed()
    img = img + 1.0
    out = mask_textured(img, 8, 2 / 16)
    assert torch.all(out[0, :, 0:8, 24:32] == 0) and torch.all(out[0, :, 16:24, 8:16] == 0)
    untouched = torch.ones(1, 3, 32, 32, dtype=torch.bool)
    untouched[..., 0:8, 24:32] = False
    untouched[..., 16:24, 8:16] = False
    assert torch.equal(out[untouched], img[untouched])
    assert torch.equal(img, mask_textured(img, 8, 0.0))


def test_bad_arguments() -> None:
    img, _ = _constructed()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        texture_mask(img, 10, 0.3)
    with pytest.raises(ValueError, match="ratio"):
        texture_mask(img, 8, 1.5)
    with pytest.raises(ValueError, match="does not match"):
        apply_patch_mask(img, torch.zeros(1, 2, 2, dtype=torch.bool), 8)
