"""Predictor: preprocessing + fused forward + thresholds -> plain numpy results (the scanner's model call)."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import numpy as np
import torch

from pipeline.models.checkpoint import DetectorMeta
from pipeline.models.detector import Detector
from pipeline.models.preprocess import to_model_input

DType = Literal["float32", "float16", "bfloat16"]
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
UNKNOWN = "unknown"


class Predictor:
    """Wraps a detector for inference: fused MoLE path, ``torch.inference_mode``, autocast to ``dtype`` when it
    is not float32 (CUDA; on CPU autocast works too but bf16/fp16 is slower than fp32 on these machines).

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
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if meta.generators != det.config.generators:
            raise ValueError(f"meta.generators {meta.generators} != detector labels {det.config.generators}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.meta = meta
        self.cfg = det.config
        self.labels = ["real", *meta.generators]
        self.det = det.to(self.device).eval()
        self.det.set_fused(True)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.dtype])

    def predict(self, images: np.ndarray) -> dict[str, Any]:
        """np.uint8 (N, S, S, 3) already cropped to cfg.image_size -> p_fake, logit, is_fake, top_generator,
        generator_scores (N, 1+G) (columns = ["real", *meta.generators])."""
        n = len(images)
        step = self.batch_size or max(n, 1)
        logits, gen = [], []
        with torch.inference_mode(), self._autocast():
            for i in range(0, n, step):
                x = to_model_input(images[i : i + step], self.cfg, device=self.device)
                out = self.det(x)
                logits.append(out.logit.float().cpu())
                gen.append(out.gen_logits.float().softmax(dim=-1).cpu())
        logit = torch.cat(logits).numpy() if logits else np.zeros(0, np.float32)
        scores = torch.cat(gen).numpy() if gen else np.zeros((0, len(self.labels)), np.float32)
        p_fake = (1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)
        is_fake = p_fake >= self.meta.threshold
        if self.meta.generators:
            best = scores.argmax(axis=1)
            conf = scores.max(axis=1)
            top = [
                UNKNOWN if c < self.meta.unknown_threshold else self.labels[b]
                for b, c in zip(best, conf, strict=True)
            ]
        else:
            top = [UNKNOWN if f else "real" for f in is_fake]
        return {
            "p_fake": p_fake,
            "logit": logit.astype(np.float32),
            "is_fake": is_fake,
            "top_generator": top,
            "generator_scores": scores.astype(np.float32),
        }
