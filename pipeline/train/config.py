"""TrainConfig: every knob of one training run, validated (unknown fields rejected, the error names the field)
and saved as `train_config.json` beside the checkpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.models.constants import RESERVED_LABELS
from pipeline.settings import StrictModel


class TrainConfig(StrictModel):
    data: str = Field(description="labelled data: UnivFD-style folder or WebDataset shards, local or s3://")
    out: str = Field(
        description="checkpoint DIRECTORY (detector.safetensors + detector.json + train_config.json)"
    )
    config: str = Field("tiny-mole", description="detector config: a shipped name or a JSON path")
    method: Literal["mole", "linear"] = Field("mole", description="MoLE adapters or the few-shot linear head")
    pretrained: str | None = Field(
        None,
        description="backbone weights: open_clip tag, local .safetensors or s3:// URI; 'none' = random init; "
        "null = the detector config's default",
    )
    train_generators: list[str] | None = Field(
        None, description="generators (families) trained on; None = every generator found in the data"
    )
    # texture-aware masking (MPFT reading, METHODS.md §3) [ours]
    mask: Literal["none", "texture"] = Field("none", description="texture-aware patch masking (MPFT reading)")
    mask_ratio: float = Field(0.4, ge=0.0, le=1.0, description="share of most-textured patches masked")
    # optimisation (mole)
    epochs: int = Field(20, ge=1, description="training epochs (mole)")
    batch_size: int = Field(
        32,
        ge=1,
        description="effective (global) batch; each of num_workers ranks takes ceil(batch / workers)",
    )
    lr: float = Field(1e-3, gt=0, description="learning rate (mole)")
    weight_decay: float = Field(0.0, ge=0)
    attribution_weight: float = Field(1.0, ge=0, description="weight of the attribution cross-entropy")
    aux_loss_weight: float = Field(
        0.01, ge=0, description="weight of the router load-balancing loss (used only if the detector has one)"
    )
    plateau_patience: int = Field(
        10,
        ge=0,
        description="epochs without val-acc gain before lr /= 10 (UnivFD: 5, over far larger epochs)",
    )
    min_lr_factor: float = Field(0.01, gt=0, le=1, description="lr never drops below lr * min_lr_factor")
    head_init: Literal["linear_probe", "random"] = Field(
        "linear_probe", description="mole: start the heads from a linear probe of the frozen features (LP-FT)"
    )
    keep_best: bool = Field(True, description="mole: restore the epoch with the best validation AP/accuracy")
    augment: bool = Field(
        False,
        description="UnivFD train augmentations (blur, JPEG, random crop, flip); off by default [ours], see "
        "docs/training.md for the measured reason",
    )
    augment_blur_prob: float = Field(0.5, ge=0, le=1, description="UnivFD: 0.5, sigma ~ U[0, 3]")
    augment_jpeg_prob: float = Field(0.5, ge=0, le=1, description="UnivFD: 0.5, quality ~ U{30..100}")
    crop_grid: Literal["patch", "pixel"] = Field(
        "patch", description="random-crop offsets on the patch grid [ours] or anywhere (published recipe)"
    )
    augment_resize: int | None = Field(
        None,
        ge=8,
        description="shorter side before the random crop (UnivFD: 256 for a 224 crop); None = none",
    )
    # linear (seed 001)
    linear_classifier: Literal["logistic", "svm"] = Field(
        "logistic", description="the linear method's classifier"
    )
    linear_c: float = Field(1.0, gt=0, description="inverse regularisation of the linear method's classifier")
    probe_c: float = Field(0.05, gt=0, description="inverse regularisation of mole's linear-probe head init")
    # data split / calibration
    seed: int = Field(0, description="seed of the split, the initialisation and the augmentations")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="held-out share for plateau + calibration")
    target_fpr: float = Field(
        0.05, ge=0.0, lt=1.0, description="calibrated false-positive rate on held-out reals"
    )
    unknown_quantile: float = Field(
        0.05, ge=0.0, lt=1.0, description="share of known fakes called 'unknown' (open-set threshold)"
    )
    # resources
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool = Field(False, description="one GPU per training worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per training worker")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per training worker")
    # streaming feed and fault tolerance
    read_tasks: int | None = Field(
        None,
        ge=1,
        description="concurrent CPU Ray Data read/decode/augment tasks; None = as many as CPUs allow",
    )
    read_chunk: int = Field(32, ge=1, description="images per read task block")
    max_failures: int = Field(
        3, ge=-1, description="Ray Train: worker-group restarts from the last epoch checkpoint (-1: no limit)"
    )

    @field_validator("train_generators")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        v = [g.strip() for g in v if g.strip()]
        if not v:
            raise ValueError("must name at least one generator")
        if len(set(v)) != len(v):
            raise ValueError("generators are listed twice")
        for g in v:
            if g in RESERVED_LABELS:
                raise ValueError(f"{g!r} is not a generator (a reserved attribution label)")
        return v

    @model_validator(mode="after")
    def _mask_needs_mole(self) -> TrainConfig:
        if self.mask == "texture" and self.method != "mole":
            raise ValueError(
                "mask: texture masking is a fine-tuning strategy; it composes with method=mole only"
            )
        return self

    @property
    def passes(self) -> int:
        """Epochs the run makes: `epochs` for mole; ONE pass for the linear method (features, then a fit)."""
        return 1 if self.method == "linear" else self.epochs

    def backbone(self, config_default: str | None) -> str | None:
        """The backbone weights source training builds with: `pretrained` ('none' = random init), unset = the
        detector config's own (`config_default`)."""
        if self.pretrained is None:
            return config_default
        return None if self.pretrained == "none" else self.pretrained
