"""ScanConfig: the typed configuration of one scan run [ours].

Built from an optional JSON file (`--config-file`) plus CLI flags (flags override the file's fields, both go
through the same validation; unknown fields are rejected naming the field). Credentials are never part of it:
S3 access comes from the environment / the standard AWS chain only. The validated config is saved as
`<out>/_run/<scan_date>/config.json`.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.limits import MAX_PIXELS
from pipeline.models.fusion import DEFAULT_FUSION, FUSIONS
from pipeline.output import ScanDate
from pipeline.runner import ErrorBudgetConfig
from pipeline.scan.provenance_policy import POLICIES
from pipeline.storage import check_output_outside

_RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,80}$")
# storage the scan may touch: local paths and S3(-compatible); anything else (http, ftp, sftp, ...) is refused
ALLOWED_SCHEMES = ("file", "s3")


def trust_anchors_pem(path: str) -> str:
    """The certificates of a local PEM file; ValueError naming the file when it is missing or holds none."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


def today_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


class ScanConfig(ErrorBudgetConfig):
    # what to scan, where to write, with which detector
    input: str = Field(
        description="s3://bucket/prefix/, a brace pattern …/shard-{000000..000099}.tar, or a folder"
    )
    output: str = Field(description="local folder or s3://bucket/prefix for the Parquet dataset")
    detector: str = Field(
        description="checkpoint dir (local or s3://) with detector.safetensors + detector.json; "
        "several detectors in one scan: comma-separated dirs (a JSON list in a config file)"
    )
    fusion: Literal[FUSIONS] = Field(  # type: ignore[valid-type]
        DEFAULT_FUSION,
        description="how several detectors' logits make the row's p_fake (pipeline.models.fusion); unused "
        "for one detector",
    )

    # the feature store (docs/schema.md "Stored features", pipeline.features)
    features: Literal["embedding", "pre_proj"] | None = Field(
        None,
        description="also keep the frozen backbone's per-image feature under <out>/_features/ so a linear "
        "detector can re-score the corpus without a backbone pass (jobs/rescore.py): embedding = the "
        "projected image embedding (UnivFD's), pre_proj = the L2-normalised CLS before the projection "
        "(ClipBased-SID's, genscan linear's); needs a detector that adapts no backbone block (not MoLE "
        "alone). None: keep none",
    )
    features_precision: Literal["float16", "int8"] = Field(
        "float16",
        description="how stored features are rounded: float16 (2 bytes a value, logit error <= 2^-11 sum|w "
        "x|) or int8 with a per-row scale (1 byte a value, logit error <= scale/2 sum|w|); "
        "results/features.md",
    )

    # which run (see docs/schema.md, 'Runs and resume')
    scan_date: ScanDate | None = Field(None, description="partition YYYY-MM-DD; default: today (UTC)")
    run_id: str | None = Field(None, description="free-form run id; default <scan_date>-<random>")
    resume: bool = Field(
        False, description="continue an unfinished run: only shards without a marker are scanned"
    )
    incremental: bool = Field(
        False,
        description="nightly scans: carry the shards whose stored identity (S3 VersionId/ETag + size; local "
        "size + mtime) is unchanged since the latest complete, succeeded scan of this output with the same "
        "scoring (detector/set + fusion, preprocessing, schema version): their Parquet is copied "
        "(server-side on S3), only added or changed shards are scored; no such scan -> a full scan, saying "
        "why (docs/schema.md)",
    )
    max_shards: int | None = Field(None, ge=1, description="scan only the first N listed shards (smoke runs)")

    # preprocessing (image size and crop mode come from the detector's config unless set here)
    resize_mode: Literal["center_crop", "resize_crop"] | None = None
    max_pixels: int = Field(
        MAX_PIXELS, ge=1, description="larger images become status too_large (PIL's bomb limit)"
    )
    chunk_rows: int = Field(256, ge=1, description="rows per block yielded by the read/decode stage")

    # resources (never derived from the driver's torch.cuda: the driver may sit on a CPU head)
    batch_size: int = Field(64, ge=1, description="images per detector call")
    num_actors: int = Field(1, ge=1, description="scorer actors (each loads the detector once)")
    actor_num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per scorer actor (fractional!)")
    actor_num_gpus: float = Field(0.0, ge=0, description="GPUs per scorer actor; > 0 puts the model on cuda")
    read_num_cpus: float = Field(1.0, gt=0, description="CPUs per read+decode task")
    read_memory_mb: int = Field(
        512, ge=1, description="memory reserved per read+decode task (holds one shard)"
    )
    read_concurrency: int | None = Field(
        None, ge=1, description="max read+decode tasks at once (default: Ray's)"
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="inference dtype; auto: bfloat16 autocast on GPUs that support it, else float16; "
        "float32 on CPU",
    )
    decode_on: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="gpu: eligible JPEGs (no resampling, normal orientation) are shipped encoded and decoded "
        "batched on the scorer's GPU (nvjpeg); every other image is decoded on CPU as usual",
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per scorer actor (CPU inference)")

    # provenance evidence (docs/provenance.md): read from each image's bytes in the read/decode task
    provenance: bool = Field(
        True,
        description="read C2PA Content Credentials, IPTC DigitalSourceType (XMP) and generator metadata (PNG "
        "text chunks, EXIF Software) from each JPEG / PNG / WebP member's headers into the provenance_* "
        "columns (false: those columns are null)",
    )
    c2pa_trust_anchors: str | None = Field(
        None,
        description="local PEM file of the C2PA signing roots you trust (e.g. the C2PA conformance trust "
        "list): a manifest whose signer chains to one is 'trusted'; without it no signer is trusted and a "
        "good signature reads 'valid_untrusted'",
    )
    provenance_policy: Literal[POLICIES] = Field(  # type: ignore[valid-type]
        "declared",
        description="when an ai_declared verdict makes an ok row fake (is_fake, top_generator = the label "
        "the declared generator maps to, else 'unknown'; the detectors' scores stay): declared = a C2PA "
        "manifest whose signature validates, XMP DigitalSourceType or a known generator's metadata; signed = "
        "only a validating C2PA manifest; trusted = only one whose signer chains to c2pa_trust_anchors; "
        "report = never (evidence reported only). Invalid manifests, composites and capture claims never "
        "decide",
    )

    # cluster and bounds
    ray_address: str | None = Field(
        None,
        description="None: attach to RAY_ADDRESS if set (ray job submit) else start a local Ray; or an "
        "address",
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of a locally started Ray (default: all)")
    stall_timeout_s: float = Field(600.0, gt=0, description="fail if no shard progress for this long")

    @field_validator("run_id")
    @classmethod
    def _check_run_id(cls, v: str | None) -> str | None:
        if v is not None and not _RUN_ID.match(v):
            raise ValueError("only letters, digits, '.', '_' and '-' (at most 80)")
        return v

    @field_validator("detector", mode="before")
    @classmethod
    def _join_detectors(cls, v: object) -> object:
        """A list of checkpoints (config file) is the comma-separated form; blanks around commas dropped."""
        if isinstance(v, list | tuple):
            v = ",".join(str(x) for x in v)
        if isinstance(v, str) and "," in v:
            parts = [p.strip() for p in v.split(",")]
            if any(not p for p in parts):
                raise ValueError(f"empty checkpoint in the detector list {v!r}")
            if len(set(parts)) != len(parts):
                raise ValueError(f"a checkpoint is named twice in {v!r}")
            v = ",".join(parts)
        return v

    @field_validator("input", "output", "detector")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        for uri in v.split(","):
            scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
            if scheme and scheme not in ALLOWED_SCHEMES:
                raise ValueError(f"URI scheme {scheme!r} not allowed (use a local path, file:// or s3://)")
        return v

    @field_validator("c2pa_trust_anchors")
    @classmethod
    def _check_anchors(cls, v: str | None) -> str | None:
        if v is not None:
            trust_anchors_pem(v)
        return v

    @model_validator(mode="after")
    def _output_outside_input(self) -> ScanConfig:
        check_output_outside(
            self.output,
            self.input,
            "the scan's Parquet, markers and run records would be written among the shards it reads",
        )
        return self

    @model_validator(mode="after")
    def _check_dtype_device(self) -> ScanConfig:
        if self.actor_num_gpus == 0 and self.dtype == "float16":
            raise ValueError("dtype float16 needs a GPU (actor_num_gpus > 0); use float32 on CPU")
        if self.actor_num_gpus == 0 and self.decode_on == "gpu":
            raise ValueError("decode_on gpu needs a GPU (actor_num_gpus > 0); use decode_on cpu on CPU")
        if self.resize_mode is not None and len(self.detectors) > 1:
            raise ValueError(
                "resize_mode cannot be set for several detectors (each uses its own preprocessing)"
            )
        return self

    @property
    def detectors(self) -> list[str]:
        """The checkpoint URIs of the run, in the given order (one for the single-detector form)."""
        return self.detector.split(",")

    @property
    def trust_anchors_pem(self) -> str | None:
        """The PEM text of c2pa_trust_anchors (read on the driver; the read tasks get the text)."""
        return trust_anchors_pem(self.c2pa_trust_anchors) if self.c2pa_trust_anchors else None

    @property
    def device(self) -> str:
        return "cuda" if self.actor_num_gpus > 0 else "cpu"
