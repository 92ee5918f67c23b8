"""The detector module and its one factory, ``create_detector``.

Every method (mole, linear, rine) shares this code: open_clip's vision tower (frozen), optional MoLE adapters
in the deeper blocks or RINE's neck, and two heads on the configured feature — a real/fake logit and
attribution logits over ["real", *generators].
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import storage
from pipeline.logs import get_logger
from pipeline.models.config import DetectorConfig, arch_config
from pipeline.models.meta import BackboneMeta, CheckpointError, refuse_pickle
from pipeline.models.mole import Mode, MoLEMLP
from pipeline.settings import ConfigError

log = get_logger("pipeline.models")

_USE_CONFIG = object()  # sentinel: take the pretrained source from the config


@dataclass
class DetectorOutput:
    logit: torch.Tensor  # (N,)   > 0 means generated
    gen_logits: torch.Tensor  # (N, 1+G) over ["real", *generators]
    features: torch.Tensor  # (N, D) what the heads read
    tapped: torch.Tensor | None = None  # (N, D') the frozen backbone feature kept by ``Detector.set_tap``


# ---------------------------------------------------------------------------------------------- helpers
def check_state_dict(expected: dict[str, torch.Size], got: dict[str, torch.Tensor], *, what: str) -> None:
    """Raise a CheckpointError naming every missing key, unexpected key and wrong shape."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(got[k].shape)}"
        for k in set(expected) & set(got)
        if tuple(got[k].shape) != tuple(expected[k])
    )
    parts = [
        f"{label} ({len(items)}): {sep.join(_clip(items))}"
        for label, items, sep in (
            ("missing keys", missing, ", "),
            ("unexpected keys", unexpected, ", "),
            ("wrong shapes", wrong, "; "),
        )
        if items
    ]
    if parts:
        raise CheckpointError(f"{what} does not match the detector: " + " | ".join(parts))


def _clip(items: list[str], n: int = 12) -> list[str]:
    return items if len(items) <= n else [*items[:n], f"... (+{len(items) - n} more)"]


def check_weights_name(pretrained: str) -> None:
    """A backbone weights file is a .safetensors file, judged by its name before anything is read."""
    refuse_pickle(pretrained)
    if not pretrained.endswith(".safetensors"):
        raise ConfigError(f"pretrained: a weights file must be .safetensors, got {pretrained!r}")


def resolve_pretrained(arch: str, pretrained: str | None) -> tuple[BackboneMeta, Path | None]:
    """Classify a pretrained source: None, an open_clip tag, a local ``.safetensors`` file, or a remote URI
    (fetched once into the local cache via pipeline.storage.fetch_to_cache); the backbone as DetectorMeta
    records it."""
    if pretrained is None:
        return BackboneMeta(arch=arch, pretrained=None, kind="none"), None
    if storage.is_remote(pretrained) or pretrained.startswith("file://") or Path(pretrained).suffix:
        check_weights_name(pretrained)
        local = storage.fetch_to_cache(pretrained)
        if not local.is_file():
            raise ConfigError(f"pretrained: weights file not found: {pretrained}")
        backbone = BackboneMeta(
            arch=arch, pretrained=pretrained, kind="file", sha256=storage.sha256_file(local)
        )
        return backbone, local
    import open_clip

    if not open_clip.get_pretrained_cfg(arch, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(
            f"pretrained: {pretrained!r} is neither an existing .safetensors file nor an open_clip tag of "
            f"{arch} (tags: {', '.join(tags) or 'none'})"
        )
    return BackboneMeta(arch=arch, pretrained=pretrained, kind="tag"), None


def visual_keys(keys: Iterable[str]) -> dict[str, str]:
    """Vision-tower parameter name -> key, in a backbone weights file that holds a whole CLIP (its
    ``visual.*`` keys) or the vision tower alone (every key)."""
    keys = list(keys)
    whole_clip = any(k.startswith("visual.") for k in keys)
    return {k.removeprefix("visual."): k for k in keys if not whole_clip or k.startswith("visual.")}


def _load_visual_weights(visual: nn.Module, path: Path, source: str) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(path), device="cpu")
    sd = {name: sd[key] for name, key in visual_keys(sd).items()}
    expected = {k: v.shape for k, v in visual.state_dict().items()}
    check_state_dict(expected, sd, what=f"pretrained weights {source}")
    visual.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------- RINE parts
HEAD_PREFIXES = ("head_fake.", "head_gen.", "neck.")


def _projection(in_dim: int, dim: int, n: int) -> nn.Sequential:
    """Dropout, then n x [Linear, ReLU, Dropout] (RINE's proj1/proj2 layout: Linear layers at 1, 4, 7,
    ...)."""
    layers: list[nn.Module] = [nn.Dropout()]
    for i in range(n):
        layers += [nn.Linear(in_dim if i == 0 else dim, dim), nn.ReLU(), nn.Dropout()]
    return nn.Sequential(*layers)


class RineNeck(nn.Module):
    """RINE's Trainable Importance Estimator [code]: proj1 on each block's CLS token, softmax(alpha) over the
    block axis, weighted sum, proj2. Parameter names equal RINE's (``alpha``, ``proj1.*``, ``proj2.*``)."""

    def __init__(self, depth: int, width: int, nproj: int, proj_dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, depth, proj_dim))
        self.proj1 = _projection(width, proj_dim, nproj)
        self.proj2 = _projection(proj_dim, proj_dim, nproj)

    def forward(self, block_cls: torch.Tensor) -> torch.Tensor:
        """(N, depth, width) -> (N, proj_dim)."""
        g = self.proj1(block_cls.float())
        z = (torch.softmax(self.alpha, dim=1) * g).sum(dim=1)
        return self.proj2(z)


def rine_head(dim: int) -> nn.Sequential:
    """RINE's head [code]: [Linear, ReLU, Dropout] x 2, Linear -> 1 (Linear layers at 0, 3, 6)."""
    blocks = [m for _ in range(2) for m in (nn.Linear(dim, dim), nn.ReLU(), nn.Dropout())]
    return nn.Sequential(*blocks, nn.Linear(dim, 1))


def build_heads(
    cfg: DetectorConfig, *, width: int, depth: int, embed_dim: int
) -> tuple[RineNeck | None, nn.Module, nn.Linear]:
    """(neck, real/fake head, attribution head) for a backbone of this width / depth / embedding size: the one
    place that decides what the heads read. The importer sizes a peer's file against these without building
    the backbone."""
    neck = None
    if cfg.method == "rine":
        assert cfg.rine is not None  # guaranteed by DetectorConfig validation
        neck = RineNeck(depth, width, cfg.rine.nproj, cfg.rine.proj_dim)
        dim = cfg.rine.proj_dim
    else:
        dim = width if cfg.head.feature == "pre_proj" else embed_dim
    head_fake: nn.Module = rine_head(dim) if neck is not None else nn.Linear(dim, 1)
    return neck, head_fake, nn.Linear(dim, 1 + len(cfg.generators))


def head_shapes(cfg: DetectorConfig) -> dict[str, torch.Size]:
    """Shapes of every head/neck parameter of ``cfg``'s detector, from the open_clip architecture config
    alone (no backbone is built)."""
    mc = arch_config(cfg.arch)
    try:
        vc = mc["vision_cfg"]
        dims = {"width": int(vc["width"]), "depth": int(vc["layers"]), "embed_dim": int(mc["embed_dim"])}
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"arch: {cfg.arch} is not an open_clip ViT config (missing {exc})") from exc
    holder = nn.Module()
    holder.neck, holder.head_fake, holder.head_gen = build_heads(cfg, **dims)
    return {k: v.shape for k, v in holder.state_dict().items()}


def run_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    start: int,
    stop: int,
    block_cls: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run ``transformer.resblocks[start:stop]`` on batch-first tokens (N, L, D), as open_clip's
    ``Transformer.forward`` does (open_clip 3.3 always builds a vision tower's transformer batch-first). With
    ``block_cls``, append the CLS token of each block's ``ln_2`` output, (N, D), read by a forward hook on
    ``ln_2``."""
    blocks = list(transformer.resblocks)[start:stop]
    handles = []
    if block_cls is not None:

        def grab(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            block_cls.append(out[:, 0])

        handles = [b.ln_2.register_forward_hook(grab) for b in blocks]
    try:
        for b in blocks:
            x = b(x, attn_mask=None)
    finally:
        for h in handles:
            h.remove()
    return x


# -------------------------------------------------------------------------------------------- frozen features
# The per-image features a frozen-feature linear head reads, which a scan can keep (`--features`): the
# projected embedding (UnivFD: open_clip ``encode_image``, not normalised) or ln_post(CLS) before the
# projection, L2-normalised (ClipBased-SID, genscan's linear method). `pipeline.features` stores them.
FEATURE_NORMALIZED = {"embedding": False, "pre_proj": True}
FEATURE_KINDS = tuple(FEATURE_NORMALIZED)


def frozen_feature(
    visual: nn.Module, tokens: torch.Tensor, kind: str, normalize: bool | None = None
) -> torch.Tensor:
    """The ``kind`` feature from the last block's output tokens (N, L, D) of a frozen tower; L2-normalised
    when ``normalize`` (default: as FEATURE_NORMALIZED stores the kind). ``kind`` is one of FEATURE_KINDS:
    DetectorConfig checks a head's feature, ``Detector.set_tap`` a tap's."""
    pooled, _ = visual._pool(tokens)  # ln_post(CLS) for pool_type 'tok'
    feat = pooled @ visual.proj if kind == "embedding" else pooled
    normalize = FEATURE_NORMALIZED[kind] if normalize is None else normalize
    return torch.nn.functional.normalize(feat, dim=-1) if normalize else feat


def tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A digest of frozen weights by name and bytes (a MoLE block's ``.base_mlp`` is its frozen MLP): the
    identity of a backbone stored in a checkpoint, from a built detector or from the checkpoint file alike."""
    h = hashlib.sha256()
    for name, t in sorted(((n.replace(".base_mlp", ""), t) for n, t in named), key=lambda x: x[0]):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def source_identity(src: BackboneMeta, digest: Callable[[], str]) -> str:
    """Which frozen weights a backbone is: ``<arch>:tag:<open_clip tag>``, ``<arch>:sha256:<weights file>``
    or (stored in the checkpoint) ``<arch>:tensors:<tensor_digest>``; ``digest`` is called only then."""
    if src.kind == "tag":
        return f"{src.arch}:tag:{src.pretrained}"
    if src.kind == "file":
        return f"{src.arch}:sha256:{src.sha256}"
    return f"{src.arch}:tensors:{digest()}"


# ---------------------------------------------------------------------------------------------- detector
class Detector(nn.Module):
    """Frozen CLIP vision tower (+ MoLE adapters) + real/fake head + attribution head."""

    def __init__(
        self, cfg: DetectorConfig, visual: nn.Module, backbone: BackboneMeta, clip_params: int
    ) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = backbone
        self.clip_params = clip_params
        self.visual = visual
        self.visual_base_params = sum(p.numel() for p in visual.parameters())
        self.visual.requires_grad_(False)
        self.mole_blocks: list[int] = []
        if cfg.method == "mole":
            assert cfg.mole is not None  # guaranteed by DetectorConfig validation
            blocks = visual.transformer.resblocks
            self.mole_blocks = cfg.mole.block_indices(len(blocks))
            for i in self.mole_blocks:
                blocks[i].mlp = MoLEMLP(blocks[i].mlp, **cfg.mole.model_dump(exclude={"blocks"}))
        neck, self.head_fake, self.head_gen = build_heads(
            cfg,
            width=int(visual.ln_post.normalized_shape[0]),
            depth=len(visual.transformer.resblocks),
            embed_dim=int(visual.proj.shape[1]),
        )
        self.neck: RineNeck | None = neck
        self.tap: str | None = None  # set_tap: every output also carries this frozen feature
        self.set_fused(cfg.fused)

    def set_tap(self, kind: str | None) -> None:
        """Carry the frozen backbone's ``kind`` feature (FEATURE_KINDS) in every output's ``tapped`` (None:
        stop). Only for a detector that adapts no block: a MoLE tower's last tokens are not the frozen
        ones."""
        if kind is not None:
            if self.mole_blocks:
                raise ConfigError(
                    f"{self.config.name}: a MoLE detector adapts the backbone's blocks, so its pass does not "
                    "give the frozen backbone's features"
                )
            if kind not in FEATURE_KINDS:
                raise ConfigError(f"feature kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
        self.tap = kind

    def backbone_identity(self) -> str:
        """Which frozen weights this detector runs on (`source_identity`)."""
        state = self.state_dict()
        return source_identity(
            self.backbone, lambda: tensor_digest((n, state[n]) for n in self.backbone_param_names())
        )

    # ------------------------------------------------------------------ structure
    def mole_modules(self) -> list[MoLEMLP]:
        return [m for m in self.visual.modules() if isinstance(m, MoLEMLP)]

    def adapter_param_names(self) -> list[str]:
        """Adapter + router parameter names (those MoLE adds to the backbone)."""
        names = []
        for prefix, module in self.named_modules():
            if isinstance(module, MoLEMLP):
                names += [
                    f"{prefix}.{n}" for n, _ in module.named_parameters() if not n.startswith("base_mlp.")
                ]
        return names

    def head_param_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith(HEAD_PREFIXES)]

    @property
    def depth(self) -> int:
        return len(self.visual.transformer.resblocks)

    def backbone_param_names(self) -> list[str]:
        added = set(self.adapter_param_names()) | set(self.head_param_names())
        return [n for n in self.state_dict() if n not in added]

    def param_counts(self) -> dict[str, Any]:
        params = dict(self.named_parameters())
        adapter = sum(params[n].numel() for n in self.adapter_param_names())
        head = sum(params[n].numel() for n in self.head_param_names())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = self.clip_params + adapter + head
        visual = self.visual_base_params + adapter + head
        return {
            "config": self.config.name,
            "arch": self.config.arch,
            "method": self.config.method,
            "clip_params": self.clip_params,
            "visual_base_params": self.visual_base_params,
            "adapter_params": adapter,
            "head_params": head,
            "total_params": total,
            "visual_params": visual,
            "trainable_params": trainable,
            "trainable_pct_total": 100.0 * trainable / total,
            "trainable_pct_visual": 100.0 * trainable / visual,
            "adapted_blocks": self.mole_blocks,
            "depth": self.depth,
            "width": int(self.visual.ln_post.normalized_shape[0]),
            "image_size": self.config.image_size,
            "feature_dim": int(self.head_gen.in_features),
            "generators": list(self.config.generators),
        }

    # ------------------------------------------------------------------ modes
    def set_fused(self, fused: bool) -> None:
        """Switch every MoLE block to the fused (one GEMM in, one GEMM out) or the unfused path."""
        self.set_mole_mode("fused" if fused else "unfused")

    def set_mole_mode(self, mode: Mode) -> None:
        """ "unfused" | "fused" | "disabled" (frozen backbone only: used by the encoder benchmark)."""
        if mode not in ("unfused", "fused", "disabled"):
            raise ValueError(f"unknown MoLE mode {mode!r}")
        for m in self.mole_modules():
            m.mode = mode
            if mode != "fused":
                m.invalidate_fused()
        self._mode = mode

    @property
    def fused(self) -> bool:
        return self._mode == "fused"

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss of the last forward over the adapted blocks (0 when disabled)."""
        losses = [m.last_aux_loss for m in self.mole_modules() if m.last_aux_loss is not None]
        return torch.stack(losses).mean() if losses else torch.zeros(())

    # ------------------------------------------------------------------ forward
    def features_from(self, tokens: torch.Tensor, block_cls: list[torch.Tensor] | None) -> torch.Tensor:
        """The features the heads read (the final image embedding, or ln_post(CLS) before the projection,
        L2-normalised when ``head.normalize``) from the last block's output tokens (N, L, D) or, for RINE,
        from the ln_2 CLS tokens of every block (a list of depth (N, width) tensors)."""
        if self.neck is not None:
            if block_cls is None or len(block_cls) != self.depth:
                got = "none" if block_cls is None else len(block_cls)
                raise ValueError(
                    f"{self.config.name}: needs the ln_2 CLS token of all {self.depth} blocks, got {got}"
                )
            return self.neck(torch.stack(block_cls, dim=1))
        return frozen_feature(self.visual, tokens, self.config.head.feature, self.config.head.normalize)

    def output_from(self, tokens: torch.Tensor, block_cls: list[torch.Tensor] | None) -> DetectorOutput:
        """Both heads' outputs from a pass's tokens (as ``features_from``), with the tapped frozen feature of
        the same rows. Shared-pass runners call this directly."""
        feat = self.features_from(tokens, block_cls)
        tapped = frozen_feature(self.visual, tokens, self.tap) if self.tap is not None else None
        return DetectorOutput(
            logit=self.head_fake(feat).squeeze(-1),
            gen_logits=self.head_gen(feat),
            features=feat,
            tapped=tapped,
        )

    def forward(self, pixels: torch.Tensor) -> DetectorOutput:
        """One pass (open_clip's patch embedding, then every block; for RINE also the ln_2 CLS token of every
        block) -> both heads' outputs."""
        for m in self.mole_modules():
            m.last_aux_loss = None
        block_cls: list[torch.Tensor] | None = [] if self.neck is not None else None
        tokens = run_blocks(self.visual.transformer, self.visual._embeds(pixels), 0, self.depth, block_cls)
        return self.output_from(tokens, block_cls)

    # ------------------------------------------------------------------ heads from scikit-learn
    def set_linear_head(self, coef: Any, intercept: Any) -> None:
        """Set the real/fake head from a binary scikit-learn linear model (``coef_`` (1, D),
        ``intercept_``)."""
        if not isinstance(self.head_fake, nn.Linear):
            raise ValueError(f"{self.config.name}: the real/fake head is not one linear layer")
        _set_linear(self.head_fake, np.asarray(coef).reshape(1, -1), np.asarray(intercept).reshape(-1))

    def set_generator_head(self, coef: Any, intercept: Any) -> None:
        """Set the attribution head from a multinomial scikit-learn model; rows in ["real", *generators]
        order."""
        _set_linear(self.head_gen, np.asarray(coef), np.asarray(intercept).reshape(-1))


@torch.no_grad()
def _set_linear(layer: nn.Linear, coef: np.ndarray, intercept: np.ndarray) -> None:
    w = torch.as_tensor(coef, dtype=layer.weight.dtype)
    b = torch.as_tensor(intercept, dtype=layer.bias.dtype)
    if w.shape != layer.weight.shape or b.shape != layer.bias.shape:
        raise ValueError(
            f"coef/intercept have shapes {tuple(w.shape)}/{tuple(b.shape)}, the head expects "
            f"{tuple(layer.weight.shape)}/{tuple(layer.bias.shape)}"
        )
    layer.weight.copy_(w)
    layer.bias.copy_(b)


# ---------------------------------------------------------------------------------------------- factory
def _check_visual(visual: nn.Module, cfg: DetectorConfig) -> None:
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"arch: {cfg.arch} has no open_clip VisionTransformer tower ({type(visual).__name__})"
        )
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise ConfigError(f"arch: {cfg.arch} does not pool the CLS token after ln_post (unsupported)")
    size = visual.image_size[0]  # open_clip keeps it as a (height, width) pair
    if size != cfg.image_size:
        raise ConfigError(f"image_size: {cfg.image_size} but {cfg.arch} expects {size}")


def _not_random_init_warning(record: logging.LogRecord) -> bool:
    """open_clip warns on the root logger when it builds a model without a pretrained tag; here that is asked
    for (random init, or weights from a local file loaded right after), and the detector's own
    `detector_created` log line says which: the warning would only mislead a reader of the console."""
    return not record.getMessage().startswith("No pretrained weights loaded")


def create_detector(
    cfg: DetectorConfig | str,
    pretrained: Any = _USE_CONFIG,
    *,
    generators: list[str] | None = None,
    device: str = "cpu",
) -> Detector:
    """Build a detector. ``pretrained``: an open_clip tag, a local ``.safetensors`` file, an ``s3://`` (any
    fsspec) URI, or None for random init; by default the config's ``pretrained``. ``generators`` overrides the
    config's attribution labels (the head is sized from them). ``device`` "meta" (inside
    ``torch.device("meta")``, random init): the architecture without its weights, for counting parameters."""
    import open_clip

    if isinstance(cfg, str):
        cfg = DetectorConfig.load(cfg)
    update: dict[str, Any] = {}
    if pretrained is not _USE_CONFIG:
        update["pretrained"] = pretrained
    if generators is not None:
        update["generators"] = list(generators)
    if update:
        cfg = DetectorConfig.parse({**cfg.model_dump(), **update}, source=f"config {cfg.name}")
    arch_config(cfg.arch)
    source, local = resolve_pretrained(cfg.arch, cfg.pretrained)
    tag = cfg.pretrained if source.kind == "tag" else None
    root = logging.getLogger()
    if tag is None:
        root.addFilter(_not_random_init_warning)
    try:
        model = open_clip.create_model(cfg.arch, pretrained=tag, device=device)
    finally:
        root.removeFilter(_not_random_init_warning)
    clip_params = sum(p.numel() for p in model.parameters())
    visual = model.visual
    del model  # drop the text tower
    _check_visual(visual, cfg)
    if local is not None:
        _load_visual_weights(visual, local, cfg.pretrained or "")
    det = Detector(cfg, visual, source, clip_params)
    det.eval()
    made = {"config": cfg.name, "arch": cfg.arch, "pretrained": source.pretrained, "kind": source.kind}
    log.info("detector_created", **made, method=cfg.method, adapted_blocks=det.mole_blocks)
    return det
