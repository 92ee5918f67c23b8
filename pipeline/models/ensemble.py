"""THE inference engine: ``DetectorSet`` (one detector or several, ``load_detector_set(uris, fusion=...)``);
``pipeline.models.predictor.Predictor`` is its row view. The scan, evaluation, calibration, training
validation and the linear method all score through it.

Detectors whose backbone (architecture + weights identity), input size and normalisation agree form one
*backbone group* and share the frozen computation for every image on which their preprocessed arrays agree
(UnivFD's ``center_crop_pad`` and genscan's ``center_crop`` agree on every image at least S px on both
sides; ``resize_crop`` agrees with them only when the shorter side is S): the patch embedding and every block
before the first block any member adapts run once; members that adapt nothing (UnivFD, ClipBased, RINE,
genscan linear) also share the remaining blocks (RINE's ln_2 CLS tokens are read off that same pass); each
MoLE member runs only its own blocks from the first adapted one on. So UnivFD + RINE + vitl14-mole (MoLE on
the last 5 of 24 blocks) cost about 24 + 5 block passes instead of 3 x 24. The frozen modules the members
share are also deduplicated in memory (one copy of the embedding and of every block no member adapts).

Each detector keeps its own threshold and decision rule; the fused score is one of the six ClipBased fusion
rules (``pipeline.models.fusion``) over the members' logits, fake when the fused p_fake > ``FUSED_THRESHOLD``
(fused logit > 0).

Inputs: ``DetectorSet.inputs`` lists the distinct preprocessing inputs (``InputSpec``: image_size +
preprocess, what the scan's decode needs); ``predict`` takes one uint8 (N, S, S, 3) batch per spec, the same
N images in the same order in each (numpy, or a tensor on the CPU or already on the set's device).

Precision (``resolve_dtype`` / ``autocast``, the one rule of every model call): fp32 without autocast, else
torch.autocast to the dtype; ``auto`` = bf16 on GPUs with native bf16, fp16 on older ones, fp32 on CPU.

Device feed [ours] (``DetectorSet._feed``): on CPU the input path is the plain one (uint8 -> float32 ->
normalise, one call per ``batch_size`` images; None = the whole call at once). On CUDA every input is split
into ``batch_size`` chunks (default: the smallest ``gpu_batch_size`` of the members' configs); each chunk is
copied into pinned host memory and sent with ``non_blocking`` on a separate copy stream while the previous
chunk computes, converted to float and normalised ON the device. Results stay on the device until the last
chunk, then come back in one copy (one synchronisation per call). Inputs that already sit on the device (the
scorer's GPU JPEG decode) skip the copy.

Attention: open_clip 3.3's blocks use ``nn.MultiheadAttention(batch_first=True)`` called with
``need_weights=False``. Without autocast (fp32) its inference fast path (``_native_multi_head_attention``)
runs; under autocast the fast path is off and ``F.multi_head_attention_forward`` calls
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA). MoLE wraps only the MLP, so the
fused MoLE path keeps either attention path (tests/test_gpu_feed.py checks the SDPA op is in the trace).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from pipeline.logs import get_logger
from pipeline.models.checkpoint import load_detector
from pipeline.models.decision import is_fake, logit_of, sigmoid
from pipeline.models.detector import Detector, DetectorOutput, run_blocks
from pipeline.models.fusion import DEFAULT_FUSION, FUSED_THRESHOLD, check_fusion, fuse
from pipeline.models.meta import DetectorMeta
from pipeline.models.preprocess import to_model_input
from pipeline.settings import ConfigError

log = get_logger("pipeline.models.ensemble")

DType = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {n: getattr(torch, n) for n in ("float32", "float16", "bfloat16")}
Images = np.ndarray | torch.Tensor  # uint8 (N, S, S, 3)


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


class InputSpec(NamedTuple):
    """One preprocessing input: what decode must produce for a detector (the scan's `(image_size,
    preprocess)` pair, named)."""

    image_size: int
    preprocess: str

    @property
    def key(self) -> str:
        return f"{self.preprocess}@{self.image_size}"


@dataclass
class Member:
    detector_id: str
    det: Detector
    meta: DetectorMeta

    @property
    def spec(self) -> InputSpec:
        return InputSpec(self.det.config.image_size, self.det.config.preprocess)


@dataclass
class BackboneGroup:
    """Members on the same frozen backbone, input size and normalisation. Members whose preprocessing
    differs (e.g. UnivFD's ``center_crop_pad`` and a MoLE detector's ``center_crop``) still share the pass
    for every image on which their preprocessed arrays are identical (for those two modes: every image at
    least S px on both sides); the other images run once per preprocessing."""

    members: list[Member] = field(default_factory=list)

    @property
    def specs(self) -> list[InputSpec]:
        """The members' preprocessing inputs, each once, in first-use order."""
        return list(dict.fromkeys(m.spec for m in self.members))

    @property
    def primary(self) -> Member:
        """The member whose frozen modules the pass uses: one that adapts nothing when there is one."""
        return min(self.members, key=lambda m: len(m.det.mole_blocks))

    @property
    def shared_blocks(self) -> int:
        """Blocks computed once for every member: those before the first block any member adapts (the depth
        when none adapts one)."""
        first_adapted = [min(m.det.mole_blocks, default=m.det.depth) for m in self.members]
        return min(first_adapted)


def _group_key(det: Detector) -> tuple[Any, ...]:
    c = det.config
    return (det.backbone_identity(), c.image_size, tuple(c.mean), tuple(c.std))


def _share_frozen(primary: Detector, member: Detector) -> None:
    """Point ``member``'s frozen modules at ``primary``'s (same weights by group identity): one copy in
    memory."""
    pv, mv = primary.visual, member.visual
    modules = ("conv1", "ln_pre", "ln_post", "patch_dropout")
    for name in (*modules, "class_embedding", "positional_embedding", "proj"):
        setattr(mv, name, getattr(pv, name))
    adapted = set(primary.mole_blocks) | set(member.mole_blocks)
    for i in range(member.depth):
        if i not in adapted:
            mv.transformer.resblocks[i] = pv.transformer.resblocks[i]


class DetectorSet:
    """N detectors (N = 1: the single-detector case), one pass per backbone group, per-detector and fused
    scores."""

    def __init__(
        self,
        members: Sequence[tuple[Detector, DetectorMeta]],
        *,
        fusion: str = DEFAULT_FUSION,
        device: str | torch.device = "cpu",
        dtype: DType = "float32",
        batch_size: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        head_features: bool = False,
    ) -> None:
        """``transform``: applied to every normalised model input (training's texture mask, ``None`` in the
        scan); ``head_features``: ``predict`` also returns each member's head input (``head_features``)."""
        if not members:
            raise ConfigError("detector set: no detectors given")
        self.fusion = check_fusion(fusion)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.cuda = self.device.type == "cuda"
        # CPU: None = the whole call at once; CUDA: the members' per-GPU batch
        self.batch_size = batch_size or (
            min(d.config.gpu_batch_size for d, _ in members) if self.cuda else None
        )
        self.transform, self.head_features = transform, head_features
        self.members: list[Member] = []
        for det, meta in members:
            did = meta.detector_id or det.config.name
            if any(m.detector_id == did for m in self.members):
                raise ConfigError(f"detector set: {did} is named twice")
            if meta.generators != det.config.generators:
                raise ValueError(f"{did}: meta.generators {meta.generators} != detector labels")
            det = det.to(self.device).eval()
            det.set_fused(True)  # the fused MoLE inference path
            self.members.append(Member(did, det, meta))
        self.detector_ids = [m.detector_id for m in self.members]
        # the distinct preprocessing inputs ``predict`` needs, in first-use order
        self.inputs: list[InputSpec] = list(dict.fromkeys(m.spec for m in self.members))
        groups: dict[tuple[Any, ...], BackboneGroup] = {}
        for m in self.members:
            key = _group_key(m.det) if len(self.members) > 1 else (m.detector_id,)
            groups.setdefault(key, BackboneGroup()).members.append(m)
        self.groups = list(groups.values())
        for g in self.groups:
            for m in g.members:
                if m is not g.primary:
                    _share_frozen(g.primary.det, m.det)
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        if len(self.members) > 1:
            log.info("detector_set", **self.describe())

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        return {
            "detectors": self.detector_ids,
            "fusion": self.fusion,
            "fused_threshold": FUSED_THRESHOLD,
            "inputs": [s.key for s in self.inputs],
            "groups": [
                {
                    "backbone": g.primary.det.backbone_identity(),  # a stored backbone is hashed here
                    "inputs": [sp.key for sp in g.specs],
                    "detectors": [m.detector_id for m in g.members],
                    "shared_blocks": g.shared_blocks,
                    "depth": g.primary.det.depth,
                }
                for g in self.groups
            ],
        }

    def set_tap(self, kind: str) -> Member:
        """Also return the frozen backbone's ``kind`` feature from ``predict`` (``features``), ONCE for the
        set: read off the pass of the first listed member that adapts no block (its backbone group's shared
        frozen pass). ConfigError when every member adapts blocks (MoLE). Returns that member."""
        for m in self.members:
            m.det.set_tap(None)
        plain = [m for m in self.members if not m.det.mole_blocks]
        if not plain:
            raise ConfigError(
                "features: every detector of the set adapts the backbone's blocks (MoLE); keeping the frozen "
                "backbone's features needs a linear, UnivFD, ClipBased or RINE member"
            )
        plain[0].det.set_tap(kind)
        return plain[0]

    # ------------------------------------------------------------------ device feed
    def _upload(self, chunk: Images) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Start the host -> device copy of one uint8 chunk on the copy stream (pinned, non-blocking); returns
        (device tensor, copy-done event, the pinned source, kept alive until the chunk is consumed)."""
        if not self.cuda:  # the plain path: to_model_input converts the chunk
            return chunk, None, None  # type: ignore[return-value]
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

    def _feed(self, inputs: list[Images]) -> Iterator[tuple[int, list[Images], list[Images]]]:
        """Per ``batch_size`` rows: (first row, every input's chunk as given, the same chunk for the model).
        CPU: the chunk itself (``to_model_input`` converts it). CUDA: a uint8 tensor on the device, uploaded
        one chunk ahead: chunk k+1's copy is started when the generator resumes, i.e. once the caller has
        queued chunk k's kernels, so the copy overlaps that compute."""
        n = len(inputs[0])
        if n == 0:
            return
        step = self.batch_size or n
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        nxt = [self._upload(a[:step]) for a in inputs]
        for lo in range(0, n, step):
            cur = nxt
            for x_u8, done, _pinned in cur:
                if done is not None and compute is not None:
                    compute.wait_event(done)
                    x_u8.record_stream(compute)  # allocated on the copy stream, consumed on this one
            yield lo, [a[lo : lo + step] for a in inputs], [x for x, _, _ in cur]
            if lo + step < n:  # queued behind chunk k's kernels: the copy overlaps its compute
                nxt = [self._upload(a[lo + step : lo + 2 * step]) for a in inputs]

    # ------------------------------------------------------------------ inference
    def _forward(self, group: BackboneGroup, images: Images) -> dict[str, DetectorOutput]:
        """One shared pass of ``group``'s members over one preprocessed uint8 batch."""
        members, p = group.members, group.primary.det
        x = to_model_input(images, p.config, device=self.device)  # float + mean/std on the device
        if self.transform is not None:
            x = self.transform(x)
        if len(members) == 1:
            return {m.detector_id: m.det(x) for m in members}
        pv = p.visual
        k, depth = group.shared_blocks, p.depth
        # RINE members read the ln_2 CLS token of every block
        cls: list[torch.Tensor] | None = [] if any(m.det.neck is not None for m in members) else None
        tokens = run_blocks(pv.transformer, pv._embeds(x), 0, k, cls)
        outs: dict[str, DetectorOutput] = {}
        plain = [m for m in members if not m.det.mole_blocks]
        if plain:  # the primary adapts nothing here, so its blocks k.. are the frozen ones
            tail = run_blocks(pv.transformer, tokens, k, depth, cls)  # appends blocks k.. to the CLS list
            for m in plain:
                outs[m.detector_id] = m.det.output_from(tail, cls)
        for m in members:
            if m.det.mole_blocks:
                own = run_blocks(m.det.visual.transformer, tokens, k, depth, None)
                outs[m.detector_id] = m.det.output_from(own, None)
        return outs

    def _group_outputs(
        self, g: BackboneGroup, given: dict[InputSpec, Images], model_in: dict[InputSpec, Images]
    ) -> Iterator[tuple[slice | np.ndarray, dict[str, DetectorOutput]]]:
        """(rows of the chunk, outputs) pieces covering every row of the chunk for every member of ``g``: rows
        on which several preprocessings gave identical arrays (compared on the inputs as given, before the
        upload) run those members in one pass."""
        specs = g.specs
        n = len(given[specs[0]])
        if len(specs) == 1:
            yield slice(0, n), self._forward(g, model_in[specs[0]])
            return
        host = {s: _host(given[s]) for s in specs}
        # label[r, j] = the first spec whose array equals spec j's on row r
        label = np.tile(np.arange(len(specs)), (n, 1))
        for j in range(1, len(specs)):
            for i in range(j):
                eq = (host[specs[i]] == host[specs[j]]).reshape(n, -1).all(axis=1)
                take = eq & (label[:, j] == j)
                label[take, j] = label[take, i]
        for sig in np.unique(label, axis=0):
            rows = np.flatnonzero((label == sig).all(axis=1))
            for cls in np.unique(sig):
                wanted = {specs[j] for j in np.flatnonzero(sig == cls)}
                mem = [m for m in g.members if m.spec in wanted]
                x = model_in[specs[cls]]
                sel = torch.as_tensor(rows, device=x.device) if isinstance(x, torch.Tensor) else rows
                yield rows, self._forward(BackboneGroup(mem), x[sel])

    def predict(self, batches: Mapping[InputSpec, Images]) -> dict[str, Any]:
        """``batches``: one uint8 (N, S, S, 3) batch per ``InputSpec`` in ``inputs``.

        Returns ``detector_ids``; ``logit``/``p_fake`` float32 and ``is_fake`` bool, each (N, K) in
        detector_ids order (each detector's own threshold and decision rule); ``generator_scores``
        {detector_id: (N, 1+G)}; ``fused_logit``/``fused_p_fake`` float32 and ``fused_is_fake`` bool (N,);
        ``features`` (N, D) when a member is tapped (``set_tap``); ``head_features`` {detector_id: (N, F)}
        when the set was built with ``head_features``."""
        arrays: list[Images] = []
        for spec in self.inputs:
            arr = batches.get(spec)
            if arr is None:
                raise ValueError(
                    f"predict: no batch for input {spec.key} (needs {[s.key for s in self.inputs]})"
                )
            arrays.append(arr)
        sizes = {len(a) for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"predict: batches differ in length {sorted(sizes)}")
        n, ids, dev = sizes.pop(), self.detector_ids, self.device
        # whose frozen features are returned: the first member with a tap (set_tap, or Detector.set_tap)
        tap = next((m for m in self.members if m.det.tap is not None), None)
        # results stay on the device until every chunk is done, then come back in one copy each
        logits = torch.zeros((n, len(ids)), dtype=torch.float32, device=dev)
        gen = {
            m.detector_id: torch.zeros((n, len(m.meta.labels)), dtype=torch.float32, device=dev)
            for m in self.members
        }
        heads: dict[str, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] = {}
        with torch.inference_mode(), autocast(dev, self.dtype):
            for lo, given, model_in in self._feed(arrays):
                given_by_spec = dict(zip(self.inputs, given, strict=True))
                model_in_by_spec = dict(zip(self.inputs, model_in, strict=True))
                for g in self.groups:
                    for rows, outs in self._group_outputs(g, given_by_spec, model_in_by_spec):
                        at = (
                            slice(lo + rows.start, lo + rows.stop)
                            if isinstance(rows, slice)
                            else torch.as_tensor(lo + rows, device=dev)
                        )
                        for did, out in outs.items():
                            logits[at, ids.index(did)] = out.logit.float()
                            gen[did][at] = out.gen_logits.float().softmax(dim=-1)
                            if self.head_features:
                                _put(heads, did, at, out.features, n)
                        if tap is not None and tap.detector_id in outs:  # its tap fills .tapped
                            _put(feats, "tap", at, outs[tap.detector_id].tapped, n)
        logit = logits.cpu().numpy()
        decided = np.zeros((n, len(ids)), bool)
        for j, m in enumerate(self.members):
            decided[:, j] = is_fake(logit[:, j], m.meta.threshold, m.det.config.decision)
        fused = fuse(logit, self.fusion, axis=1) if n else np.zeros(0)
        out: dict[str, Any] = {
            "detector_ids": ids,
            "logit": logit,
            "p_fake": sigmoid(logit),
            "is_fake": decided,
            "generator_scores": {i: s.cpu().numpy() for i, s in gen.items()},
            "fused_logit": fused.astype(np.float32),
            "fused_p_fake": sigmoid(fused),
            "fused_is_fake": fused > logit_of(FUSED_THRESHOLD),
        }
        if tap is not None:
            out["features"] = feats["tap"].cpu().numpy() if feats else np.zeros((n, 0), np.float32)
        if self.head_features:
            out["head_features"] = {i: t.cpu().numpy() for i, t in heads.items()}
        return out


def _host(images: Images) -> np.ndarray:
    return images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)


def _put(
    acc: dict[str, torch.Tensor], key: str, at: slice | torch.Tensor, value: torch.Tensor, n: int
) -> None:
    """Write ``value`` (rows ``at``) into the (n, D) float32 accumulator ``acc[key]`` (NaN until written)."""
    if key not in acc:
        acc[key] = torch.full((n, value.shape[1]), float("nan"), dtype=torch.float32, device=value.device)
    acc[key][at] = value.float()


def load_detector_set(uris: Sequence[str], *, fusion: str = DEFAULT_FUSION, **kwargs: Any) -> DetectorSet:
    """Load every checkpoint (load_detector: hashes, keys, shapes) and build the set (``kwargs``: the
    ``DetectorSet`` keywords: device, dtype, batch_size)."""
    check_fusion(fusion)  # before any weights are read
    return DetectorSet([load_detector(u) for u in uris], fusion=fusion, **kwargs)
