"""A detector's heads on stored features [ours]: what a re-score runs instead of the detector. Only detectors
whose heads read ONE frozen feature per image qualify (genscan's linear method, imported UnivFD and
ClipBased); the checkpoint's heads are read from its safetensors file, no backbone is built.

`spec_differences` is the detector's side of the store contract (backbone identity, feature kind,
preprocessing); `FeatureHead.check(spec)` refuses, in one line, a store whose features are not the ones its
heads read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.feature_store import BackboneId, FeatureSpec, Preprocessing
from pipeline.models.checkpoint import read_checkpoint
from pipeline.models.detector import (
    FEATURE_NORMALIZED,
    HEAD_PREFIXES,
    check_state_dict,
    head_shapes,
    source_identity,
    tensor_digest,
)
from pipeline.models.meta import CheckpointError, DetectorMeta
from pipeline.models.predictor import score_results
from pipeline.settings import ConfigError

# why a method cannot be re-scored from stored features
REFUSED = {
    "mole": "MoLE adapts the backbone's last blocks, so its heads read features of its own adapted pass, not "
    "the frozen backbone's stored ones",
    "rine": "RINE reads the CLS token of every block (block_cls), the store keeps one feature per image",
}


def spec_differences(cfg: Any, dim: int, backbone: BackboneId, stored: FeatureSpec) -> list[str]:
    """What makes the `stored` features (any precision) not the ones a linear head of detector config `cfg`
    reads (`dim` inputs, on `backbone`); empty: the same."""
    needed = FeatureSpec(
        kind=cfg.head.feature,
        normalized=cfg.head.normalize,
        dim=dim,
        precision=stored.precision,
        backbone=backbone,
        preprocessing=Preprocessing(
            image_size=cfg.image_size, preprocess=cfg.preprocess, mean=cfg.mean, std=cfg.std
        ),
        source_detector=stored.source_detector,
    )
    return needed.differences(stored)


class FeatureHead:
    """The real/fake and attribution heads of a linear-on-frozen-feature checkpoint."""

    def __init__(self, uri: str) -> None:
        try:
            meta, tensors = read_checkpoint(uri)
        except (CheckpointError, OSError) as exc:
            raise ConfigError(f"detector: {exc}") from exc
        cfg = meta.config
        assert cfg is not None and meta.backbone is not None  # read_checkpoint checked them
        if cfg.method in REFUSED:
            raise ConfigError(
                f"detector {meta.detector_id}: cannot re-score from stored features: {REFUSED[cfg.method]}"
            )
        if cfg.head.feature not in FEATURE_NORMALIZED:
            raise ConfigError(
                f"detector {meta.detector_id}: head feature {cfg.head.feature} is not a stored kind"
            )
        shapes = head_shapes(cfg)
        heads = {k: v for k, v in tensors.items() if k.startswith(HEAD_PREFIXES)}
        try:
            check_state_dict(shapes, heads, what=f"detector {uri}: its stored head")
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from exc
        self.meta: DetectorMeta = meta
        self.cfg = cfg
        self.heads = {k: v.to(torch.float32) for k, v in heads.items()}
        self.dim = int(shapes["head_fake.weight"][1])  # the stored feature's size the heads read
        bb = meta.backbone
        identity = source_identity(
            bb, lambda: tensor_digest((k, v) for k, v in tensors.items() if not k.startswith(HEAD_PREFIXES))
        )
        self.backbone = BackboneId(
            identity=identity, arch=bb.arch, pretrained=bb.pretrained, kind=bb.kind, sha256=bb.sha256
        )

    @property
    def detector_id(self) -> str:
        return str(self.meta.detector_id)

    def differences(self, stored: FeatureSpec) -> list[str]:
        """What makes the `stored` features not the ones these heads read; empty: the same."""
        return spec_differences(self.cfg, self.dim, self.backbone, stored)

    def check(self, spec: FeatureSpec, where: str) -> None:
        """ConfigError (one line) unless `spec`'s features are exactly what these heads read."""
        diff = self.differences(spec)
        if diff:
            raise ConfigError(
                f"detector {self.detector_id} does not read the features stored in {where}: {'; '.join(diff)}"
            )

    def predict(self, feats: np.ndarray) -> dict[str, Any]:
        """The scan's per-row results (`pipeline.models.predictor.score_results`) from (N, D) features, the
        logits float32 as the scan's head computes them."""
        x = torch.from_numpy(np.ascontiguousarray(feats, np.float32).reshape(-1, self.dim))
        h = self.heads
        with torch.inference_mode():
            logits = torch.nn.functional.linear(x, h["head_fake.weight"], h["head_fake.bias"]).squeeze(-1)
            scores = torch.nn.functional.linear(x, h["head_gen.weight"], h["head_gen.bias"]).softmax(dim=-1)
        return score_results(logits.numpy(), scores.numpy(), self.cfg, self.meta)
