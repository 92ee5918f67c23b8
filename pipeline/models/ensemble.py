"""Several detectors in one pass: ``load_detector_set(uris, fusion=...)`` -> ``DetectorSet``.

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
rules (``pipeline.models.fusion``) over the members' logits, fake when the fused logit >
logit(fused_threshold).

Inputs: ``DetectorSet.inputs`` lists the distinct preprocessing inputs (``InputSpec``: image_size +
preprocess, what the scan's decode needs); ``predict`` takes one uint8 (N, S, S, 3) batch per spec, the same
N images in the same order in each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.logs import get_logger
from pipeline.models.checkpoint import load_detector
from pipeline.models.decision import is_fake, logit_of, sigmoid
from pipeline.models.detector import Detector, DetectorOutput, run_blocks
from pipeline.models.fusion import DEFAULT_FUSION, check_fusion, fuse
from pipeline.models.meta import DetectorMeta
from pipeline.models.predictor import DType, autocast, resolve_dtype
from pipeline.models.preprocess import prepare_image, to_model_input
from pipeline.settings import ConfigError

log = get_logger("pipeline.models.ensemble")


@dataclass(frozen=True)
class InputSpec:
    """One preprocessing input: what decode must produce for a detector."""

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


def _primary(members: Sequence[Member]) -> Member:
    """The member whose frozen modules the pass uses: one that adapts nothing when there is one."""
    return min(members, key=lambda m: len(m.det.mole_blocks))


def _shared_blocks(members: Sequence[Member]) -> int:
    """Blocks computed once for every member (before the first adapted block of any member)."""
    return min(m.det.first_adapted_block for m in members)


def distinct_specs(members: list[Member]) -> list[InputSpec]:
    """The members' preprocessing inputs, each once, in first-use order."""
    out: list[InputSpec] = []
    for m in members:
        if m.spec not in out:
            out.append(m.spec)
    return out


@dataclass
class BackboneGroup:
    """Members on the same frozen backbone, input size and normalisation. Members whose preprocessing
    differs (e.g. UnivFD's ``center_crop_pad`` and a MoLE detector's ``center_crop``) still share the pass
    for every image on which their preprocessed arrays are identical (for those two modes: every image at
    least S px on both sides); the other images run once per preprocessing."""

    backbone: str  # identity of the frozen weights
    members: list[Member] = field(default_factory=list)

    @property
    def specs(self) -> list[InputSpec]:
        return distinct_specs(self.members)

    @property
    def primary(self) -> Member:
        return _primary(self.members)

    @property
    def depth(self) -> int:
        return self.primary.det.depth

    @property
    def shared_blocks(self) -> int:
        return _shared_blocks(self.members)


def backbone_identity(det: Detector) -> str:
    """Which frozen weights a detector runs on: the open_clip tag, the weights file's sha256, or (backbone
    stored in the checkpoint) a digest of the frozen tensors themselves (`Detector.backbone_identity`)."""
    return det.backbone_identity()


def _group_key(det: Detector) -> tuple[Any, ...]:
    c = det.config
    return (backbone_identity(det), c.image_size, tuple(c.mean), tuple(c.std))


def _share_frozen(primary: Detector, member: Detector) -> None:
    """Point ``member``'s frozen modules at ``primary``'s (same weights by group identity): one copy in
    memory."""
    pv, mv = primary.visual, member.visual
    for name in ("conv1", "ln_pre", "ln_post", "patch_dropout"):
        setattr(mv, name, getattr(pv, name))
    for name in ("class_embedding", "positional_embedding", "proj"):
        setattr(mv, name, getattr(pv, name))
    adapted = set(primary.mole_blocks) | set(member.mole_blocks)
    for i in range(member.depth):
        if i not in adapted:
            mv.transformer.resblocks[i] = pv.transformer.resblocks[i]


class DetectorSet:
    """N detectors, one pass per backbone group, per-detector and fused scores."""

    def __init__(
        self,
        members: Sequence[tuple[Detector, DetectorMeta]],
        *,
        fusion: str = DEFAULT_FUSION,
        fused_threshold: float = 0.5,
        device: str | torch.device = "cpu",
        dtype: DType = "float32",
        share: bool = True,
        batch_size: int | None = None,
    ) -> None:
        if not members:
            raise ConfigError("detector set: no detectors given")
        self.fusion = check_fusion(fusion)
        if not 0.0 < fused_threshold < 1.0:
            raise ConfigError(f"fused_threshold must be in (0, 1), got {fused_threshold}")
        self.fused_threshold = fused_threshold
        self.device = torch.device(device)
        self.dtype = resolve_dtype(
            dtype, self.device
        )  # "auto": bf16/fp16 on CUDA, fp32 on CPU (as the Predictor)
        self.share = share
        self.batch_size = batch_size
        self.members: list[Member] = []
        for det, meta in members:
            did = meta.detector_id or det.config.name
            if any(m.detector_id == did for m in self.members):
                raise ConfigError(f"detector set: {did} is named twice")
            if meta.generators != det.config.generators:
                raise ValueError(f"{did}: meta.generators {meta.generators} != detector labels")
            det = det.to(self.device).eval()
            det.set_fused(True)  # as the Predictor: the fused MoLE inference path
            self.members.append(Member(did, det, meta))
        groups: dict[tuple[Any, ...], BackboneGroup] = {}
        for m in self.members:
            key = _group_key(m.det) if share else (m.detector_id,)
            if key not in groups:
                groups[key] = BackboneGroup(backbone=backbone_identity(m.det))
            groups[key].members.append(m)
        self.groups = list(groups.values())
        self.tap_member: Member | None = None  # set_tap: whose frozen features predict also returns
        if share:
            for g in self.groups:
                for m in g.members:
                    if m is not g.primary:
                        _share_frozen(g.primary.det, m.det)
        log.info("detector_set", **self.describe())

    # ------------------------------------------------------------------ description
    @property
    def detector_ids(self) -> list[str]:
        return [m.detector_id for m in self.members]

    @property
    def labels(self) -> dict[str, list[str]]:
        """Each detector's attribution labels (["real", *generators])."""
        return {m.detector_id: list(m.meta.labels) for m in self.members}

    @property
    def inputs(self) -> list[InputSpec]:
        """The distinct preprocessing inputs ``predict`` needs, in first-use order."""
        return distinct_specs(self.members)

    def describe(self) -> dict[str, Any]:
        return {
            "detectors": self.detector_ids,
            "fusion": self.fusion,
            "fused_threshold": self.fused_threshold,
            "inputs": [s.key for s in self.inputs],
            "groups": [
                {
                    "backbone": g.backbone,
                    "inputs": [sp.key for sp in g.specs],
                    "detectors": [m.detector_id for m in g.members],
                    "shared_blocks": g.shared_blocks,
                    "depth": g.depth,
                }
                for g in self.groups
            ],
        }

    def set_tap(self, kind: str | None) -> Member | None:
        """Also return the frozen backbone's ``kind`` feature from ``predict`` (``features``), ONCE for the
        set: read off the pass of the first listed member that adapts no block (its backbone group's shared
        frozen pass). ConfigError when every member adapts blocks (MoLE). Returns that member (None: tap
        off)."""
        if self.tap_member is not None:
            self.tap_member.det.set_tap(None)
            self.tap_member = None
        if kind is None:
            return None
        plain = [m for m in self.members if not m.det.mole_blocks]
        if not plain:
            raise ConfigError(
                "features: every detector of the set adapts the backbone's blocks (MoLE); keeping the frozen "
                "backbone's features needs a linear, UnivFD, ClipBased or RINE member"
            )
        plain[0].det.set_tap(kind)
        self.tap_member = plain[0]
        return plain[0]

    def prepare(self, img: Image.Image) -> dict[InputSpec, np.ndarray]:
        """One PIL image -> its uint8 array for every input (the decode rule of
        pipeline.models.preprocess)."""
        return {s: prepare_image(img, s) for s in self.inputs}  # type: ignore[arg-type]

    # ------------------------------------------------------------------ inference
    def _forward(self, members: Sequence[Member], images: np.ndarray) -> dict[str, DetectorOutput]:
        """One shared pass of ``members`` (same backbone group) over one preprocessed uint8 batch."""
        p = _primary(members).det
        x = to_model_input(images, p.config, device=self.device)
        if not self.share or len(members) == 1:
            return {m.detector_id: m.det(x) for m in members}
        pv = p.visual
        k, depth = _shared_blocks(members), p.depth
        need_cls = any(m.det.neck is not None for m in members)
        cls: list[torch.Tensor] | None = [] if need_cls else None
        tokens = run_blocks(pv.transformer, pv._embeds(x), 0, k, cls)
        outs: dict[str, DetectorOutput] = {}
        plain = [m for m in members if not m.det.mole_blocks]
        if plain:  # the primary adapts nothing here, so its blocks k.. are the frozen ones
            cls_all = list(cls) if cls is not None else None
            tail = run_blocks(pv.transformer, tokens, k, depth, cls_all)
            for m in plain:
                outs[m.detector_id] = m.det.heads(m.det.features_from(tail, cls_all))
        for m in members:
            if m.det.mole_blocks:
                own = run_blocks(m.det.visual.transformer, tokens, k, depth, None)
                outs[m.detector_id] = m.det.heads(m.det.features_from(own, None))
        return outs

    def _group_outputs(
        self, g: BackboneGroup, arrays: dict[InputSpec, np.ndarray]
    ) -> list[tuple[np.ndarray, dict[str, DetectorOutput]]]:
        """(row indices, outputs) pieces covering every row of the batch for every member of ``g``: rows on
        which several preprocessings gave identical arrays run those members in one pass."""
        specs = g.specs
        n = len(arrays[specs[0]])
        if len(specs) == 1:
            return [(np.arange(n), self._forward(g.members, arrays[specs[0]]))]
        # label[r, j] = the first spec whose array equals spec j's on row r
        label = np.tile(np.arange(len(specs)), (n, 1))
        for j in range(1, len(specs)):
            for i in range(j):
                eq = (arrays[specs[i]] == arrays[specs[j]]).reshape(n, -1).all(axis=1)
                take = eq & (label[:, j] == j)
                label[take, j] = label[take, i]
        pieces = []
        for sig in np.unique(label, axis=0):
            rows = np.flatnonzero((label == sig).all(axis=1))
            for cls in np.unique(sig):
                wanted = {specs[j] for j in np.flatnonzero(sig == cls)}
                mem = [m for m in g.members if m.spec in wanted]
                pieces.append((rows, self._forward(mem, arrays[specs[cls]][rows])))
        return pieces

    def predict(self, batches: Mapping[InputSpec | str, np.ndarray]) -> dict[str, Any]:
        """``batches``: one uint8 (N, S, S, 3) array per ``InputSpec`` (or its ``key``) in ``inputs``.

        Returns ``detector_ids``; ``logit``/``p_fake`` float32 and ``is_fake`` bool, each (N, K) in
        detector_ids order (each detector's own threshold and decision rule); ``generator_scores``
        {detector_id: (N, 1+G)}; ``fused_logit``/``fused_p_fake`` float32 and ``fused_is_fake`` bool (N,)."""
        arrays: dict[InputSpec, np.ndarray] = {}
        for spec in self.inputs:
            arr = batches.get(spec, batches.get(spec.key))  # type: ignore[call-overload]
            if arr is None:
                raise ValueError(
                    f"predict: no batch for input {spec.key} (needs {[s.key for s in self.inputs]})"
                )
            arrays[spec] = arr
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"predict: batches differ in length {sorted(sizes)}")
        n = sizes.pop()
        step = self.batch_size or max(n, 1)
        ids = self.detector_ids
        logits = np.zeros((n, len(ids)), np.float32)
        gen = {i: np.zeros((n, len(self.labels[i])), np.float32) for i in ids}
        tap = self.tap_member
        feats: np.ndarray | None = None
        with torch.inference_mode(), autocast(self.device, self.dtype):
            for lo in range(0, n, step):
                chunk = {sp: a[lo : lo + step] for sp, a in arrays.items()}
                for g in self.groups:
                    for rows, outs in self._group_outputs(g, chunk):
                        for did, out in outs.items():
                            j = ids.index(did)
                            logits[lo + rows, j] = out.logit.float().cpu().numpy()
                            gen[did][lo + rows] = out.gen_logits.float().softmax(dim=-1).cpu().numpy()
                        if tap is not None and tap.detector_id in outs and tap.det.tapped is not None:
                            f = tap.det.tapped.float().cpu().numpy()
                            if feats is None:
                                feats = np.full((n, f.shape[1]), np.nan, np.float32)
                            feats[lo + rows] = f
        p_fake = sigmoid(logits)
        decided = np.zeros((n, len(ids)), bool)
        for j, m in enumerate(self.members):
            decided[:, j] = is_fake(logits[:, j], m.meta.threshold, m.det.config.decision)
        fused = fuse(logits, self.fusion, axis=1) if n else np.zeros(0)
        extra = (
            {} if tap is None else {"features": feats if feats is not None else np.zeros((n, 0), np.float32)}
        )
        return {
            **extra,
            "detector_ids": ids,
            "logit": logits,
            "p_fake": p_fake,
            "is_fake": decided,
            "generator_scores": gen,
            "fused_logit": fused.astype(np.float32),
            "fused_p_fake": sigmoid(fused),
            "fused_is_fake": fused > logit_of(self.fused_threshold),
        }


def load_detector_set(
    uris: Sequence[str],
    *,
    fusion: str = DEFAULT_FUSION,
    fused_threshold: float = 0.5,
    device: str | torch.device = "cpu",
    dtype: DType = "float32",
    share: bool = True,
    batch_size: int | None = None,
) -> DetectorSet:
    """Load every checkpoint (load_detector: hashes, keys, shapes) and build the set."""
    check_fusion(fusion)
    return DetectorSet(
        [load_detector(u) for u in uris],
        fusion=fusion,
        fused_threshold=fused_threshold,
        device=device,
        dtype=dtype,
        share=share,
        batch_size=batch_size,
    )
