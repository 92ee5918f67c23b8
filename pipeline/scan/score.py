"""The model stage of the scan: a callable class over dict batches wrapping `pipeline.models.Predictor` (one
detector or a set) [ours].

Ray's batch-inference pattern: the detector is loaded ONCE in `__init__` (one per actor), `__call__` scores a
batch. Only rows with status "ok" go through the model; the others pass through with NaN scores. The `pixels`
column (and `encoded`, the JPEG bytes the read side shipped for device decode) is dropped from the output
(large and no longer needed). No Ray here — tests call it directly.

Device decode (`decode_on="gpu"`, pipeline.scan.gpu_decode): ok rows with non-empty `encoded` bytes are
decoded batched on the scorer's device and center-cropped there; a row the device cannot decode gets the CPU
decoder's result (its status row, or its pixels). Their `_decode_s` gains the device decode time per row.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.feature_store import BackboneId, FeatureSpec, Preprocessing
from pipeline.logs import get_logger
from pipeline.models.fusion import DEFAULT_FUSION

log = get_logger("pipeline.scan.score")


class Scorer:
    """One detector (`detector="CKPT"`) or several (`"A,B,C"`: one backbone pass per shared backbone, fused by
    `fusion`), scored by one `pipeline.models.Predictor`. inputs: the (image_size, preprocess) list the read
    stage decodes (the driver's `pipeline.scan.detectors.RunDetectors.inputs`); checked against a loaded
    set."""

    def __init__(
        self,
        detector: str,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int = 1,
        decode_on: str = "cpu",
        fusion: str = DEFAULT_FUSION,
        inputs: list[tuple[int, str]] | None = None,
        features: str | None = None,
        features_precision: str = "float16",
    ) -> None:
        import torch

        from pipeline.models.predictor import Predictor
        from pipeline.scan.detectors import FUSED_THRESHOLD, set_id

        if device == "cpu":
            torch.set_num_threads(torch_threads)
        self.predictor = Predictor.load(detector.split(","), fusion=fusion, device=device, dtype=dtype)
        dset, meta = self.predictor.engine, self.predictor.meta
        loaded = [(sp.image_size, sp.preprocess) for sp in dset.inputs]
        several = len(dset.members) > 1
        # one detector: the read stage may decode with the scan's resize_mode instead of the checkpoint's
        if several and inputs is not None and [tuple(i) for i in inputs] != loaded:
            raise ValueError(
                f"the detectors loaded need inputs {loaded}, the read stage decodes {inputs} "
                "(a checkpoint changed since the driver read it)"
            )
        self.member_ids = list(dset.detector_ids) if several else [str(meta.detector_id)]
        self.fusion: str | None = dset.fusion if several else None
        self.detector_id = set_id(self.member_ids, dset.fusion) if several else str(meta.detector_id)
        self.threshold = FUSED_THRESHOLD if several else float(meta.threshold)
        self.n_inputs = len(loaded)
        src = dset.set_tap(features) if features is not None else None  # whose frozen features are kept
        tapped = (src.det, src.meta, (inputs or loaded)[dset.inputs.index(src.spec)]) if src else None
        spec = feature_spec(*tapped, features, features_precision) if tapped else None
        self.feature_spec = spec.model_dump_json() if spec else None  # tagged on every row
        self.feature_dim = spec.dim if spec else 0
        # the (attributing) detector's labels: the rows' generator_scores keys
        self.labels = meta.labels
        self.decoder = None
        if decode_on == "gpu":
            from pipeline.scan.gpu_decode import DeviceDecoder

            self.decoder = DeviceDecoder(self.predictor.device, int(self.predictor.cfg.image_size))
        self._device_decode_seen = False
        self.ready_at = time.time()  # wall clock: the driver measures throughput from model-ready on
        log.info(
            "scorer_ready",
            detector_id=self.detector_id,
            members=self.member_ids,
            fusion=self.fusion,
            device=device,
            dtype=self.predictor.dtype,
            threads=torch_threads,
            gpu_batch=self.predictor.batch_size,
            decode_on=decode_on,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._device_decode_seen and len(
            _shipped_rows(batch, np.flatnonzero(batch["status"] == "ok"))
        ):
            self._device_decode_seen = True  # once per actor: shows a run really decodes on the device
            log.info("device_decode_active", device=str(self.predictor.device))
        out = score_batch(
            self.predictor,
            batch,
            n_labels=len(self.labels),
            decoder=self.decoder,
            n_inputs=self.n_inputs,
            n_members=len(self.member_ids),
        )
        n = len(out["status"])
        out["_actor_ready"] = np.full(n, self.ready_at, np.float64)
        tag_scored_by(out, self.detector_id, self.threshold, self.member_ids)
        if self.feature_spec is not None:
            if "_feature" not in out or out["_feature"].shape != (n, self.feature_dim):  # no row scored
                out["_feature"] = np.full((n, self.feature_dim), np.nan, np.float32)
            out["_feature_spec"] = np.full(n, self.feature_spec, dtype=object)
        return out


def tag_scored_by(
    rows: dict[str, np.ndarray], detector_id: str, threshold: float, members: list[str]
) -> None:
    """Tag scored rows with what scored them, as the scorer loaded it (even if the object at a detector URI
    changed since the driver read its meta): the (set's) id and (fused) threshold, and the members (the keys
    of the detector_* maps). The rows' detector_id / threshold columns are these, never the driver's
    reading."""
    n = len(rows["status"])
    rows["_detector_id"] = np.full(n, detector_id, dtype=object)
    rows["_threshold"] = np.full(n, threshold, np.float32)
    rows["_members"] = np.full(n, ",".join(members), dtype=object)


def feature_spec(det: Any, meta: Any, inp: tuple[int, str], kind: str, precision: str) -> FeatureSpec:
    """The `pipeline.feature_store.FeatureSpec` of the features a scorer keeps: `det`'s frozen backbone, the
    feature kind, the preprocessing `inp` the read stage decodes with (and the config's mean/std)."""
    from pipeline.models.detector import FEATURE_NORMALIZED

    c, bb = det.config, det.backbone
    dim = (
        int(det.visual.proj.shape[1]) if kind == "embedding" else int(det.visual.ln_post.normalized_shape[0])
    )
    return FeatureSpec(
        kind=kind,  # type: ignore[arg-type]  # ScanConfig validated it
        normalized=FEATURE_NORMALIZED[kind],
        dim=dim,
        precision=precision,  # type: ignore[arg-type]
        backbone=BackboneId(
            identity=det.backbone_identity(),
            arch=bb.arch,
            pretrained=bb.pretrained,
            kind=bb.kind,
            sha256=bb.sha256,
        ),
        preprocessing=Preprocessing(image_size=inp[0], preprocess=inp[1], mean=c.mean, std=c.std),
        source_detector=str(meta.detector_id),
    )


def _shipped_rows(batch: dict[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
    encoded = batch.get("encoded")
    if encoded is None or not len(ok):
        return np.zeros(0, np.int64)
    return ok[np.fromiter((len(encoded[i] or b"") > 0 for i in ok), bool, len(ok))]


def score_batch(
    predictor: Any,
    batch: dict[str, np.ndarray],
    n_labels: int,
    decoder: Any = None,
    n_inputs: int = 1,
    n_members: int = 1,
) -> dict[str, np.ndarray]:
    """Score the ok rows of a prepared batch; returns the batch without its inputs (`pixels`, `pixels_<i>`,
    `encoded`), plus p_fake, logit, is_fake, top_generator ("" when not scored), generator_scores (N,
    n_labels; NaN when not scored), each detector's `_det_logit` / `_det_p_fake` / `_det_is_fake` (N,
    n_members; a single Predictor's own scores) and `_infer_s` (the call's model time shared among its ok
    rows). A set's predictor takes `n_inputs` inputs (`pipeline.scan.prepare.input_column`).
    Rows shipped encoded (only by a decode_on gpu read stage) are decoded first by `decoder` (the scorer's
    `pipeline.scan.gpu_decode.DeviceDecoder`)."""
    from pipeline.scan.prepare import input_column

    extra_cols = [input_column(i) for i in range(1, n_inputs)]
    out = {k: v for k, v in batch.items() if k not in ("pixels", "encoded", *extra_cols)}
    status = np.asarray(batch["status"], dtype=object)
    n = len(status)
    ok = np.flatnonzero(status == "ok")
    parts: list[tuple[np.ndarray, Any]] = []  # (row indices, uint8 NHWC images: numpy or a device tensor)
    shipped = _shipped_rows(batch, ok)
    if len(shipped):
        sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in shipped]
        dec = decoder.decode([bytes(batch["encoded"][i]) for i in shipped], sizes)
        if dec.fallback:  # the CPU decoder's status row for what the device could not decode
            status, error = status.copy(), np.asarray(out["error"], dtype=object).copy()
            for i, r in dec.fallback.items():
                status[shipped[i]], error[shipped[i]] = r.status, r.error or ""
            out["status"], out["error"] = status, error
        decode_s = np.asarray(out["_decode_s"], np.float64).copy()
        decode_s[shipped] += dec.seconds / len(shipped)
        out["_decode_s"] = decode_s
        if len(dec.ok):
            parts.append((shipped[dec.ok], dec.pixels))
        host = np.setdiff1d(ok, shipped, assume_unique=True)
        ok = np.flatnonzero(status == "ok")
    else:
        host = ok
    if len(host):
        parts.insert(0, (host, np.ascontiguousarray(batch["pixels"][host])))
    # each score and each detector's (one Predictor's own: its score as one member); NaN / False: not scored
    kinds = {"p_fake": (np.float32, np.nan), "logit": (np.float32, np.nan), "is_fake": (bool, False)}
    cols = {k: np.full(n, fill, t) for k, (t, fill) in kinds.items()}
    cols["top_generator"] = np.full(n, "", dtype=object)
    cols["generator_scores"] = scores = np.full((n, n_labels), np.nan, np.float32)
    cols.update({f"_det_{k}": np.full((n, n_members), fill, t) for k, (t, fill) in kinds.items()})
    cols["_infer_s"] = infer_s = np.zeros(n, np.float64)
    feats: np.ndarray | None = None  # the frozen features, when the predictor keeps them (NaN: not scored)
    t0 = time.perf_counter()
    for sel, pixels in parts:
        pred = predictor.predict(pixels, *(batch[c][sel] for c in extra_cols))
        for k, (t, _) in kinds.items():
            cols[k][sel] = np.asarray(pred[k], t)
            cols[f"_det_{k}"][sel] = np.asarray(pred.get(f"member_{k}", cols[k][sel, None]), t)
        cols["top_generator"][sel] = np.asarray(list(pred["top_generator"]), dtype=object)
        gs = np.asarray(pred["generator_scores"], np.float32)
        if gs.shape != (len(sel), n_labels):
            raise ValueError(f"generator_scores shape {gs.shape} != ({len(sel)}, {n_labels})")
        scores[sel] = gs
        if "features" in pred:
            f = np.asarray(pred["features"], np.float32)
            if feats is None:
                feats = np.full((n, f.shape[1]), np.nan, np.float32)
            feats[sel] = f
    if len(ok):
        infer_s[ok] = (time.perf_counter() - t0) / len(ok)
    out.update(cols)
    if feats is not None:
        out["_feature"] = feats
    return out
