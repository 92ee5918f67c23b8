"""Predictor: the row view of THE inference engine (``pipeline.models.ensemble.DetectorSet``; its module
docstring has the device feed and the precision rule) -> plain numpy results, the scanner's model call.

``Predictor(det, meta, device=, dtype=, batch_size=)`` is a one-member set: the single-detector case.
``Predictor.load(uris, fusion=...)`` views a loaded set: its rows carry the FUSED scores, the attributing
member's attribution (``pipeline.models.fusion.attributor``) and every member's own scores (``member_*``
columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.models import decision
from pipeline.models.config import DetectorConfig
from pipeline.models.constants import REAL_LABEL, UNKNOWN_LABEL
from pipeline.models.detector import Detector
from pipeline.models.ensemble import DetectorSet, DType, Images, load_detector_set
from pipeline.models.fusion import attributor
from pipeline.models.meta import DetectorMeta


class Predictor:
    """Scores uint8 images through a ``DetectorSet`` (fused MoLE path, ``torch.inference_mode``, autocast to
    ``dtype`` when it is not float32, the CUDA feed).

    ``top_generator``: the argmax of ``generator_scores`` over ["real", *generators]; "unknown" when the max
    probability is below ``meta.unknown_threshold`` [ours]. With no generators (a binary-only detector) it is
    "real" / "unknown" from ``is_fake``."""

    def __init__(
        self,
        det: Detector,
        meta: DetectorMeta,
        device: str | torch.device = "cpu",
        dtype: DType = "float32",
        batch_size: int | None = None,
    ) -> None:
        self._bind(DetectorSet([(det, meta)], device=device, dtype=dtype, batch_size=batch_size))

    @classmethod
    def load(cls, uris: Sequence[str], **kwargs: Any) -> Predictor:
        """Load the checkpoints as one set (``load_detector_set``: fusion, device, dtype, ...) and view its
        rows (one member: that detector's own rows)."""
        pred = cls.__new__(cls)
        pred._bind(load_detector_set(uris, **kwargs))
        return pred

    def _bind(self, engine: DetectorSet) -> None:
        self.engine = engine
        self.device, self.dtype, self.batch_size = engine.device, engine.dtype, engine.batch_size
        self.attributing = engine.members[attributor([m.meta.labels for m in engine.members])]
        self.meta, self.cfg = self.attributing.meta, self.attributing.det.config

    def predict(self, *inputs: Images) -> dict[str, Any]:
        """One uint8 (N, S, S, 3) batch per input of the set (``DetectorSet.inputs`` order; numpy, or a
        tensor on the CPU or on this device) -> p_fake, logit, is_fake, top_generator, generator_scores
        (N, 1+G) (columns = ["real", *generators]); plus ``features`` (N, D) float32, the frozen backbone's
        feature, when a member has a tap (``Detector.set_tap`` / ``DetectorSet.set_tap``). Several members:
        the fused p_fake / logit / is_fake and ``member_logit`` / ``member_p_fake`` / ``member_is_fake``
        (N, K)."""
        res = self.engine.predict(dict(zip(self.engine.inputs, inputs, strict=True)))
        scores = res["generator_scores"][self.attributing.detector_id]
        if len(self.engine.members) == 1:
            out = score_results(np.ascontiguousarray(res["logit"][:, 0]), scores, self.cfg, self.meta)
        else:
            out = {
                "p_fake": res["fused_p_fake"],
                "logit": res["fused_logit"],
                "is_fake": res["fused_is_fake"],
                "top_generator": top_generators(scores, res["fused_is_fake"], self.meta),
                "generator_scores": scores,
                "member_logit": res["logit"],
                "member_p_fake": res["p_fake"],
                "member_is_fake": res["is_fake"],
            }
        return {**out, **{k: res[k] for k in ("features", "head_features") if k in res}}


def score_results(
    logit: np.ndarray, scores: np.ndarray, cfg: DetectorConfig, meta: DetectorMeta
) -> dict[str, Any]:
    """A detector's logits (N,) and attribution softmax (N, 1+G) -> the scan's per-row results (p_fake, logit,
    is_fake by the config's decision rule and the meta's threshold, top_generator, generator_scores): the one
    rule for the Predictor and a feature-store re-score (`pipeline.features.head`); the detector set applies
    the same `pipeline.models.decision` functions per member."""
    is_fake = decision.is_fake(logit, meta.threshold, cfg.decision)
    return {
        "p_fake": decision.sigmoid(logit),
        "logit": logit.astype(np.float32),
        "is_fake": is_fake,
        "top_generator": top_generators(scores, is_fake, meta),
        "generator_scores": scores.astype(np.float32),
    }


def top_generators(scores: np.ndarray, is_fake: np.ndarray, meta: DetectorMeta) -> list[str]:
    """The attribution label per image: the most likely of ["real", *generators] ("unknown" below the
    checkpoint's unknown_threshold); for a detector without generators "unknown" when fake, else "real"."""
    if meta.generators:
        labels = meta.labels
        best = scores.argmax(axis=1)
        conf = scores.max(axis=1)
        return [
            UNKNOWN_LABEL if c < meta.unknown_threshold else labels[b]
            for b, c in zip(best, conf, strict=True)
        ]
    return [UNKNOWN_LABEL if f else REAL_LABEL for f in is_fake]
