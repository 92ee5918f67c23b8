"""The model stage of the scan: a callable class over dict batches wrapping `pipeline.models.Predictor` [ours].

Ray's batch-inference pattern: the detector is loaded ONCE in `__init__` (one per actor), `__call__` scores a
batch. Only rows with status "ok" go through the model; the others pass through with NaN scores. The `pixels`
column is dropped from the output (it is large and no longer needed). No Ray here — tests call it directly.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.logs import get_logger

log = get_logger("pipeline.scan.score")


class Scorer:
    def __init__(self, detector: str, device: str = "cpu", dtype: str = "float32", torch_threads: int | None = 1,
                 batch_size: int | None = None) -> None:  # fmt: skip
        import torch

        from pipeline.models import Predictor, load_detector

        if torch_threads and device == "cpu":
            torch.set_num_threads(torch_threads)
        det, meta = load_detector(detector)
        self.meta = meta
        self.labels = ["real", *meta.generators]
        self.predictor = Predictor(det, meta, device=device, dtype=dtype)
        self.batch_size = batch_size
        self.ready_at = time.time()  # wall clock: the driver measures throughput from model-ready on
        log.info("scorer_ready", detector_id=meta.detector_id, device=device, dtype=dtype, threads=torch_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = score_batch(self.predictor, batch, n_labels=len(self.labels), batch_size=self.batch_size)
        out["_actor_ready"] = np.full(len(out["status"]), self.ready_at, np.float64)
        return out


def score_batch(predictor: Any, batch: dict[str, np.ndarray], n_labels: int,
                batch_size: int | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Score the ok rows of a prepared batch; returns the batch without `pixels`, plus p_fake, logit, is_fake,
    top_generator ("" when not scored), generator_scores (N, n_labels; NaN when not scored) and `_infer_s`
    (the call's model time shared among its ok rows)."""
    out = {k: v for k, v in batch.items() if k != "pixels"}
    status = np.asarray(batch["status"], dtype=object)
    n = len(status)
    ok = np.flatnonzero(status == "ok")
    p_fake = np.full(n, np.nan, np.float32)
    logit = np.full(n, np.nan, np.float32)
    is_fake = np.zeros(n, bool)
    top = np.full(n, "", dtype=object)
    scores = np.full((n, n_labels), np.nan, np.float32)
    infer_s = np.zeros(n, np.float64)
    if len(ok):
        pixels = np.ascontiguousarray(batch["pixels"][ok])
        step = batch_size or len(ok)
        t0 = time.perf_counter()
        for start in range(0, len(ok), step):
            sel = ok[start : start + step]
            pred = predictor.predict(pixels[start : start + step])
            p_fake[sel] = np.asarray(pred["p_fake"], np.float32)
            logit[sel] = np.asarray(pred["logit"], np.float32)
            is_fake[sel] = np.asarray(pred["is_fake"], bool)
            top[sel] = np.asarray(list(pred["top_generator"]), dtype=object)
            gs = np.asarray(pred["generator_scores"], np.float32)
            if gs.shape != (len(sel), n_labels):
                raise ValueError(f"generator_scores shape {gs.shape} != ({len(sel)}, {n_labels})")
            scores[sel] = gs
        infer_s[ok] = (time.perf_counter() - t0) / len(ok)
    out.update(p_fake=p_fake, logit=logit, is_fake=is_fake, top_generator=top, generator_scores=scores,
               _infer_s=infer_s)  # fmt: skip
    return out
