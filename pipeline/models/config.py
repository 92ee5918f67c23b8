"""Detector configs: typed (pydantic, unknown fields rejected), shipped as JSON in ``configs/``.

A detector config names an open_clip architecture, its default pretrained source, the preprocessing, the
method (``mole`` or ``linear``), the MoLE adapter layout and the heads. ``configs/`` also holds the open_clip
*architecture* configs of the tiny backbones (files with ``embed_dim``/``vision_cfg``/``text_cfg``, e.g.
``ViT-Tiny-16-96.json``); they are registered with ``open_clip.add_model_config`` (no site-packages edits).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from pipeline.models.constants import CLIP_MEAN, CLIP_STD, RESERVED_LABELS, DecisionRule, PreprocessMode
from pipeline.settings import ConfigError, StrictModel

CONFIG_DIR = Path(__file__).parent / "configs"
_ARCH_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


class MoLEConfig(StrictModel):
    """MoLE adapter layout (METHODS.md §1). [paper]: shared LoRA + separate LoRA experts in parallel to the
    MLP of the deeper blocks, per-token router. [ours]: the defaults, softmax router, optional top-k and the
    load-balancing loss, LoRA scale = alpha / rank."""

    blocks: int | list[int] = Field(
        3, description="int N: the last N blocks; list: explicit block indices (negative counts from the end)"
    )
    shared_rank: int = Field(8, ge=0, description="rank of the shared LoRA (0 = none)")
    expert_ranks: list[PositiveInt] = Field(default_factory=lambda: [8, 8, 8], min_length=1)
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scale = alpha/rank; None -> scale 1")
    top_k: int | None = Field(
        None, ge=1, description="keep the k largest router logits per token (None = dense)"
    )
    load_balance: bool = Field(False, description="compute the Switch-style load-balancing auxiliary loss")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("blocks: the number of last blocks to adapt must be >= 1")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("blocks: the list must be non-empty without duplicates")
        return v

    @model_validator(mode="after")
    def _top_k_le_experts(self) -> Self:
        if self.top_k is not None and self.top_k > len(self.expert_ranks):
            raise ValueError(f"top_k={self.top_k} exceeds the number of experts ({len(self.expert_ranks)})")
        return self

    def block_indices(self, depth: int) -> list[int]:
        """Resolved, sorted block indices for a transformer of `depth` blocks."""
        if isinstance(self.blocks, int):
            if self.blocks > depth:
                raise ConfigError(f"mole.blocks: {self.blocks} blocks requested, the backbone has {depth}")
            return list(range(depth - self.blocks, depth))
        out = []
        for b in self.blocks:
            i = b + depth if b < 0 else b
            if not 0 <= i < depth:
                raise ConfigError(f"mole.blocks: index {b} out of range for a backbone of {depth} blocks")
            out.append(i)
        return sorted(set(out))


class HeadConfig(StrictModel):
    """What the heads read. [ours] for MoLE: the final image embedding (after the projection);
    [code] for the linear detector: ln_post(CLS) before the projection, L2-normalised.

    * ``embedding``: open_clip ``encode_image`` = ln_post(CLS) @ proj (UnivFD: 768-d for ViT-L/14, not
      normalised);
    * ``pre_proj``: ln_post(CLS) with ``visual.proj = None`` (seed 001 / ClipBased: 1024-d,
      ``normalize=True``);
    * ``block_cls``: the CLS token of the OUTPUT of ``ln_2`` in every transformer block, (N, depth, width)
      (RINE); only for ``method: rine``, whose neck reduces it to one vector."""

    feature: Literal["embedding", "pre_proj", "block_cls"] = "embedding"
    normalize: bool = False


class RineConfig(StrictModel):
    """RINE's trainable part [code, mever-team/rine src/models.py]: proj1 = Dropout + nproj x [Linear, ReLU,
    Dropout] applied to every block's CLS token, a softmax over the block axis of ``alpha`` (1, depth,
    proj_dim) weighting and summing the blocks, proj2 (same shape as proj1 on proj_dim), then a 3-layer head
    -> 1 logit. Released variants: 1class nproj 4 / dim 1024, 2class 4 / 128, 4class 2 / 1024, ldm 4 /
    1024."""

    nproj: int = Field(ge=1, le=16)
    proj_dim: int = Field(ge=1, le=8192)


class DetectorConfig(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    method: Literal["mole", "linear", "rine"]
    arch: str = Field(min_length=1, description="open_clip architecture name, e.g. ViT-L-14-quickgelu")
    pretrained: str | None = Field(
        None, description="default backbone weights: open_clip tag | local .safetensors | s3:// URI | null"
    )
    image_size: int = Field(ge=16, le=1024)
    preprocess: PreprocessMode = "center_crop"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = CLIP_STD
    mole: MoLEConfig | None = None
    head: HeadConfig = Field(default_factory=HeadConfig)
    rine: RineConfig | None = Field(None, description="RINE neck + head (method 'rine' only)")
    decision: DecisionRule = Field(
        "p_fake_ge", description="p_fake_ge: sigmoid(logit) >= threshold | logit_gt: logit > logit(threshold)"
    )
    generators: list[str] = Field(default_factory=list, description="attribution labels, without 'real'")
    fused: bool = Field(False, description="start with the fused MoLE inference path enabled")
    gpu_batch_size: int = Field(
        256, ge=1, le=4096, description="images per forward on one GPU (the Predictor's CUDA chunk size)"
    )

    @field_validator("generators")
    @classmethod
    def _generators(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("generators: duplicate labels")
        for g in v:
            if not g or g in RESERVED_LABELS:
                raise ValueError(f"generators: {g!r} is reserved or empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.method == "mole" and self.mole is None:
            raise ValueError("mole: required when method is 'mole'")
        if self.method != "mole" and self.mole is not None:
            raise ValueError(f"mole: must be absent when method is {self.method!r}")
        if (self.method == "rine") != (self.rine is not None):
            raise ValueError("rine: required when method is 'rine', and only then")
        if (self.method == "rine") != (self.head.feature == "block_cls"):
            raise ValueError("head.feature: 'block_cls' goes with method 'rine' (and method 'rine' with it)")
        if self.head.feature == "block_cls" and self.head.normalize:
            raise ValueError("head.normalize: not supported with feature 'block_cls'")
        # OpenAI weights need the QuickGELU architectures (METHODS.md): plain ViT-L-14 + openai silently
        # builds GELU in open_clip (only a warning), so it is an error here
        if self.pretrained == "openai" and not self.arch.endswith("-quickgelu"):
            raise ValueError(
                f"pretrained: tag 'openai' needs a QuickGELU architecture; use arch '{self.arch}-quickgelu' "
                f"instead of '{self.arch}'"
            )
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, name_or_path: str | Path, *, field: str = "config file") -> DetectorConfig:
        """A shipped config name (``tiny-mole``) or a path to a JSON file; `field` names what gave it in an
        error (the jobs' ``--config``)."""
        p = Path(name_or_path)
        if p.suffix == ".json" or p.exists():
            return cls.from_file(p, field=field)
        if str(name_or_path) not in list_configs():
            raise ConfigError(
                f"{field}: unknown detector config {name_or_path!r}; shipped: {', '.join(list_configs())}"
            )
        return cls.from_file(CONFIG_DIR / f"{name_or_path}.json")


def _is_arch_file(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(k in data for k in _ARCH_KEYS)


def list_configs() -> list[str]:
    """Names of the shipped detector configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if not _is_arch_file(p))


@functools.cache
def register_arch_configs() -> None:
    """Register the shipped open_clip architecture configs (the tiny backbones) with open_clip, once."""
    import open_clip

    for p in sorted(CONFIG_DIR.glob("*.json")):
        if _is_arch_file(p):
            open_clip.add_model_config(p)


def arch_config(arch: str) -> dict:
    """open_clip's config of ``arch`` (genscan's own archs registered first); ConfigError when unknown."""
    import open_clip

    register_arch_configs()
    mc = open_clip.get_model_config(arch)
    if mc is None:
        raise ConfigError(f"arch: unknown open_clip architecture {arch!r}")
    return mc
