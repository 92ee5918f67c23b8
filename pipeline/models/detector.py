"""The detector module and its one factory, ``create_detector``.

Both methods share this code: open_clip's vision tower (frozen), optional MoLE adapters in the deeper blocks,
and two heads on the configured feature — a real/fake logit and attribution logits over ["real", *generators].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import storage
from pipeline.logs import get_logger
from pipeline.models.config import DetectorConfig, check_arch_pretrained, register_arch_configs
from pipeline.models.constants import PICKLE_SUFFIXES
from pipeline.models.mole import Mode, MoLEMLP
from pipeline.settings import ConfigError

log = get_logger("pipeline.models")

_USE_CONFIG = object()  # sentinel: take the pretrained source from the config


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used (missing/unexpected keys, wrong shapes, a pickle)."""


@dataclass
class DetectorOutput:
    logit: torch.Tensor  # (N,)   > 0 means generated
    gen_logits: torch.Tensor  # (N, 1+G) over ["real", *generators]
    features: torch.Tensor  # (N, D) what the heads read


@dataclass(frozen=True)
class BackboneSource:
    """Where the frozen backbone's weights came from (recorded in DetectorMeta)."""

    arch: str
    pretrained: str | None  # open_clip tag | local path | URI | None (random init)
    kind: str  # "none" | "tag" | "file"
    sha256: str | None = None  # of the weights file, when kind == "file"


# ---------------------------------------------------------------------------------------------- helpers
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def refuse_pickle(path: str) -> None:
    if any(str(path).lower().endswith(s) for s in PICKLE_SUFFIXES):
        raise CheckpointError(
            f"refusing to load {path}: '{Path(str(path)).suffix}' files are Python pickles and are never "
            "unpickled here (arbitrary code execution); convert the weights to .safetensors "
            "(safetensors.torch.save_file(state_dict, 'weights.safetensors')) and pass that file"
        )


def check_state_dict(expected: dict[str, torch.Size], got: dict[str, torch.Tensor], *, what: str) -> None:
    """Raise a CheckpointError naming every missing key, unexpected key and wrong shape."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(got[k].shape)}"
        for k in set(expected) & set(got)
        if tuple(got[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(_clip(missing))}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(_clip(unexpected))}")
        if wrong:
            parts.append(f"wrong shapes ({len(wrong)}): {'; '.join(_clip(wrong))}")
        raise CheckpointError(f"{what} does not match the detector: " + " | ".join(parts))


def _clip(items: list[str], n: int = 12) -> list[str]:
    return items if len(items) <= n else [*items[:n], f"... (+{len(items) - n} more)"]


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def resolve_pretrained(arch: str, pretrained: str | None) -> tuple[BackboneSource, Path | None]:
    """Classify a pretrained source: None, an open_clip tag, a local ``.safetensors`` file, or a remote URI
    (fetched once into the local cache via pipeline.storage.fetch_to_cache)."""
    check_arch_pretrained(arch, pretrained, field="pretrained")
    if pretrained is None:
        return BackboneSource(arch, None, "none"), None
    if storage.is_remote(pretrained) or pretrained.startswith("file://") or Path(pretrained).suffix:
        refuse_pickle(pretrained)
        if not pretrained.endswith(".safetensors"):
            raise ConfigError(f"pretrained: a weights file must be .safetensors, got {pretrained!r}")
        local = storage.fetch_to_cache(pretrained)
        if not local.is_file():
            raise ConfigError(f"pretrained: weights file not found: {pretrained}")
        return BackboneSource(arch, pretrained, "file", sha256_file(local)), local
    import open_clip

    if not open_clip.get_pretrained_cfg(arch, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(
            f"pretrained: {pretrained!r} is neither an existing .safetensors file nor an open_clip tag of "
            f"{arch} (tags: {', '.join(tags) or 'none'})"
        )
    return BackboneSource(arch, pretrained, "tag"), None


def _load_visual_weights(visual: nn.Module, path: Path, source: str) -> None:
    """Load a safetensors state dict (whole CLIP with ``visual.`` keys, or the vision tower alone)."""
    sd = _load_safetensors(path)
    if any(k.startswith("visual.") for k in sd):
        sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    expected = {k: v.shape for k, v in visual.state_dict().items()}
    check_state_dict(expected, sd, what=f"pretrained weights {source}")
    visual.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------- detector
class Detector(nn.Module):
    """Frozen CLIP vision tower (+ MoLE adapters) + real/fake head + attribution head."""

    def __init__(
        self, cfg: DetectorConfig, visual: nn.Module, backbone: BackboneSource, clip_params: int
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
                blocks[i].mlp = MoLEMLP(
                    blocks[i].mlp,
                    shared_rank=cfg.mole.shared_rank,
                    expert_ranks=list(cfg.mole.expert_ranks),
                    lora_alpha=cfg.mole.lora_alpha,
                    top_k=cfg.mole.top_k,
                    load_balance=cfg.mole.load_balance,
                )
        dim = self._feature_dim()
        self.head_fake = nn.Linear(dim, 1)
        self.head_gen = nn.Linear(dim, 1 + len(cfg.generators))
        self.set_fused(cfg.fused)

    # ------------------------------------------------------------------ structure
    def _feature_dim(self) -> int:
        if self.config.head.feature == "pre_proj":
            return int(self.visual.ln_post.normalized_shape[0])
        return int(self.visual.proj.shape[1])

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
        return [n for n, _ in self.named_parameters() if n.startswith(("head_fake.", "head_gen."))]

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
            "depth": len(self.visual.transformer.resblocks),
            "width": int(self.visual.ln_post.normalized_shape[0]),
            "image_size": self.config.image_size,
            "feature_dim": self._feature_dim(),
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
        return getattr(self, "_mode", "unfused") == "fused"

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss of the last forward over the adapted blocks (0 when disabled)."""
        losses = [m.last_aux_loss for m in self.mole_modules() if m.last_aux_loss is not None]
        if not losses:
            return torch.zeros(())
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ forward
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The features the heads read: the final image embedding, or ln_post(CLS) before the projection;
        L2-normalised when ``head.normalize``. Uses open_clip's VisionTransformer stages (_embeds, transformer,
        _pool) so both features come from one pass."""
        v = self.visual
        for m in self.mole_modules():
            m.last_aux_loss = None
        x = v.transformer(v._embeds(pixels))
        pooled, _ = v._pool(x)  # ln_post(CLS) for pool_type 'tok'
        feat = pooled if self.config.head.feature == "pre_proj" else pooled @ v.proj
        if self.config.head.normalize:
            feat = torch.nn.functional.normalize(feat, dim=-1)
        return feat

    def forward(self, pixels: torch.Tensor) -> DetectorOutput:
        feat = self.features(pixels)
        return DetectorOutput(
            logit=self.head_fake(feat).squeeze(-1), gen_logits=self.head_gen(feat), features=feat
        )

    # ------------------------------------------------------------------ heads from scikit-learn
    @torch.no_grad()
    def set_linear_head(
        self, coef: np.ndarray | torch.Tensor, intercept: np.ndarray | torch.Tensor | float
    ) -> None:
        """Set the real/fake head from a binary scikit-learn linear model (``coef_`` (1, D), ``intercept_``)."""
        w = torch.as_tensor(np.asarray(coef), dtype=self.head_fake.weight.dtype).reshape(1, -1)
        b = torch.as_tensor(np.asarray(intercept), dtype=self.head_fake.bias.dtype).reshape(1)
        if w.shape != self.head_fake.weight.shape:
            raise ValueError(
                f"coef has shape {tuple(w.shape)}, the head expects {tuple(self.head_fake.weight.shape)}"
            )
        self.head_fake.weight.copy_(w)
        self.head_fake.bias.copy_(b)

    @torch.no_grad()
    def set_generator_head(
        self, coef: np.ndarray | torch.Tensor, intercept: np.ndarray | torch.Tensor
    ) -> None:
        """Set the attribution head from a multinomial scikit-learn model; rows in ["real", *generators] order."""
        w = torch.as_tensor(np.asarray(coef), dtype=self.head_gen.weight.dtype)
        b = torch.as_tensor(np.asarray(intercept), dtype=self.head_gen.bias.dtype).reshape(-1)
        if w.shape != self.head_gen.weight.shape or b.shape != self.head_gen.bias.shape:
            raise ValueError(
                f"coef/intercept have shapes {tuple(w.shape)}/{tuple(b.shape)}, the head expects "
                f"{tuple(self.head_gen.weight.shape)}/{tuple(self.head_gen.bias.shape)}"
            )
        self.head_gen.weight.copy_(w)
        self.head_gen.bias.copy_(b)


# ---------------------------------------------------------------------------------------------- factory
def _check_visual(visual: nn.Module, cfg: DetectorConfig) -> None:
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"arch: {cfg.arch} has no open_clip VisionTransformer tower ({type(visual).__name__})"
        )
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise ConfigError(f"arch: {cfg.arch} does not pool the CLS token after ln_post (unsupported)")
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    if size != cfg.image_size:
        raise ConfigError(f"image_size: {cfg.image_size} but {cfg.arch} expects {size}")


def create_detector(
    cfg: DetectorConfig | str,
    pretrained: Any = _USE_CONFIG,
    *,
    generators: list[str] | None = None,
) -> Detector:
    """Build a detector. ``pretrained``: an open_clip tag, a local ``.safetensors`` file, an ``s3://`` (any
    fsspec) URI, or None for random init; by default the config's ``pretrained``. ``generators`` overrides the
    config's attribution labels (the head is sized from them)."""
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
    register_arch_configs()
    if open_clip.get_model_config(cfg.arch) is None:
        raise ConfigError(f"arch: unknown open_clip architecture {cfg.arch!r}")
    source, local = resolve_pretrained(cfg.arch, cfg.pretrained)
    tag = cfg.pretrained if source.kind == "tag" else None
    model = open_clip.create_model(cfg.arch, pretrained=tag, device="cpu")
    clip_params = sum(p.numel() for p in model.parameters())
    visual = model.visual
    del model  # drop the text tower
    _check_visual(visual, cfg)
    if local is not None:
        _load_visual_weights(visual, local, cfg.pretrained or "")
    det = Detector(cfg, visual, source, clip_params)
    det.eval()
    log.info(
        "detector_created",
        config=cfg.name,
        arch=cfg.arch,
        pretrained=source.pretrained,
        kind=source.kind,
        method=cfg.method,
        adapted_blocks=det.mole_blocks,
    )
    return det
