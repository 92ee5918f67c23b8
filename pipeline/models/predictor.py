"""Predictor: preprocessing + fused forward + thresholds -> plain numpy results (the scanner's model call).

Device feed [ours]: on CPU the input path is the plain one (uint8 -> float32 -> normalise, fp32, one call per
``batch_size`` images). On CUDA the uint8 batch is split into ``batch_size`` chunks (default: the detector
config's ``gpu_batch_size``); each chunk is copied into pinned host memory and sent with ``non_blocking`` on a
separate copy stream while the previous chunk computes, converted to float and normalised ON the device, and
run under autocast (bf16 where the GPU supports it natively, else fp16, when ``dtype="auto"``). Results stay
on the device until the last chunk, then come back in one copy (one synchronisation per call). Inputs that
already sit on the device (the scorer's GPU JPEG decode) skip the copy.

Attention: open_clip 3.3's blocks use ``nn.MultiheadAttention(batch_first=True)`` called with
``need_weights=False``. Without autocast (fp32) its inference fast path (``_native_multi_head_attention``)
runs; under autocast the fast path is off and ``F.multi_head_attention_forward`` calls
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA). MoLE wraps only the MLP, so the
fused MoLE path keeps either attention path (tests/test_gpu_feed.py checks the SDPA op is in the trace).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import numpy as np
import torch

from pipeline.models import decision
from pipeline.models.detector import Detector
from pipeline.models.meta import DetectorMeta
from pipeline.models.preprocess import to_model_input

DType = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
UNKNOWN = "unknown"


def resolve_dtype(dtype: str, device: str | torch.device) -> str:
    """``auto`` -> ``bfloat16`` on a CUDA device with native bf16 (Ampere and newer), ``float16`` on older
    GPUs, ``float32`` on CPU (bf16/fp16 autocast is several times slower than fp32 on the CPUs measured
    here)."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {['auto', *sorted(DTYPES)]}, got {dtype!r}")
        return dtype
    dev = torch.device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    return "float32"


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """THE inference precision rule of every model call (scan, evaluation, calibration, training validation):
    no autocast for float32, else torch.autocast to `dtype` on `device`."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


class Predictor:
    """Wraps a detector for inference: fused MoLE path, ``torch.inference_mode``, autocast to ``dtype`` when
    it is not float32 (see the module docstring for the CUDA feed).

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
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {['auto', *sorted(DTYPES)]}, got {dtype!r}")
        if meta.generators != det.config.generators:
            raise ValueError(f"meta.generators {meta.generators} != detector labels {det.config.generators}")
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.cuda = self.device.type == "cuda"
        # CPU: None = the whole call at once (as before); CUDA: the config's per-GPU batch
        self.batch_size = batch_size or (det.config.gpu_batch_size if self.cuda else None)
        self.meta = meta
        self.cfg = det.config
        self.labels = ["real", *meta.generators]
        self.det = det.to(self.device).eval()
        self.det.set_fused(True)
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None

    def predict(self, images: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """uint8 (N, S, S, 3) already cropped to cfg.image_size (numpy, or a tensor on CPU or on this device)
        -> p_fake, logit, is_fake, top_generator, generator_scores (N, 1+G) (columns = ["real", *generators]);
        plus ``features`` (N, D) float32, the frozen backbone's feature, when the detector has a tap
        (``Detector.set_tap``)."""
        feats: list[torch.Tensor] = []
        logit_t, scores_t = (
            self._forward_cuda(images, feats) if self.cuda else self._forward_cpu(images, feats)
        )
        logit = logit_t.numpy() if logit_t is not None else np.zeros(0, np.float32)
        scores = scores_t.numpy() if scores_t is not None else np.zeros((0, len(self.labels)), np.float32)
        out = self._results(logit, scores)
        if self.det.tap is not None:
            out["features"] = torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)
        return out

    def _keep(self, feats: list[torch.Tensor]) -> None:
        if self.det.tap is not None and self.det.tapped is not None:
            feats.append(self.det.tapped.float().cpu())

    def _forward_cpu(
        self, images: np.ndarray | torch.Tensor, feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        n = len(images)
        step = self.batch_size or max(n, 1)
        logits, gen = [], []
        with torch.inference_mode(), autocast(self.device, self.dtype):
            for i in range(0, n, step):
                x = to_model_input(images[i : i + step], self.cfg, device=self.device)
                out = self.det(x)
                logits.append(out.logit.float().cpu())
                gen.append(out.gen_logits.float().softmax(dim=-1).cpu())
                self._keep(feats)
        return (torch.cat(logits), torch.cat(gen)) if logits else (None, None)

    def _upload(self, chunk: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Start the host -> device copy of one uint8 chunk on the copy stream (pinned, non-blocking); returns
        (device tensor, copy-done event, the pinned source, kept alive until the chunk is consumed)."""
        if isinstance(chunk, torch.Tensor) and chunk.is_cuda:  # already on a GPU (the device JPEG decoder's
            return chunk.to(self.device), None, None  # output); "cuda:0" != "cuda", so test is_cuda
        host = torch.from_numpy(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
        pinned = host.contiguous().pin_memory()
        assert self._copy_stream is not None
        with torch.cuda.stream(self._copy_stream):
            dev = pinned.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        return dev, done, pinned

    def _forward_cuda(
        self, images: np.ndarray | torch.Tensor, feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        n = len(images)
        if n == 0:
            return None, None
        step = self.batch_size or n
        chunks = [images[i : i + step] for i in range(0, n, step)]
        logits, gen = [], []
        compute = torch.cuda.current_stream(self.device)
        with torch.inference_mode():
            nxt = self._upload(chunks[0])
            for k in range(len(chunks)):
                x_u8, done, _pinned = nxt
                if done is not None:
                    compute.wait_event(done)
                    x_u8.record_stream(compute)  # allocated on the copy stream, consumed on this one
                with autocast(self.device, self.dtype):
                    out = self.det(to_model_input(x_u8, self.cfg))  # float + mean/std on the device
                    logits.append(out.logit.float())
                    gen.append(out.gen_logits.float().softmax(dim=-1))
                    if self.det.tap is not None and self.det.tapped is not None:
                        feats.append(self.det.tapped.float())
                if k + 1 < len(chunks):  # queued behind chunk k's kernels: the copy overlaps its compute
                    nxt = self._upload(chunks[k + 1])
            if feats:  # with the results: one copy back
                feats[:] = [torch.cat(feats).cpu()]
            return torch.cat(logits).cpu(), torch.cat(gen).cpu()

    def _results(self, logit: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        return score_results(logit, scores, self.cfg, self.meta)


def score_results(logit: np.ndarray, scores: np.ndarray, cfg: Any, meta: DetectorMeta) -> dict[str, Any]:
    """A detector's logits (N,) and attribution softmax (N, 1+G) -> the scan's per-row results (p_fake, logit,
    is_fake by the config's decision rule and the meta's threshold, top_generator, generator_scores): the one
    rule for the Predictor and a feature-store re-score (`pipeline.features.head`); the detector set applies
    the same `pipeline.models.decision` functions per member."""
    is_fake = decision.is_fake(logit, meta.threshold, getattr(cfg, "decision", "p_fake_ge"))
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
        labels = ["real", *meta.generators]
        best = scores.argmax(axis=1)
        conf = scores.max(axis=1)
        return [UNKNOWN if c < meta.unknown_threshold else labels[b] for b, c in zip(best, conf, strict=True)]
    return [UNKNOWN if f else "real" for f in is_fake]
