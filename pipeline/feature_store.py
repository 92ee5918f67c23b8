"""The feature store's parts [ours]: what one shard's stored backbone features are, how they are encoded, read
back and checked. Layout: `pipeline.output.RunPaths.features` (`<out>/_features/scan_date=D/<shard>.parquet`).

A part holds one row per scored image (status ok; rows with no image have no feature):

    shard    string                         the scan row's shard
    key      string                         the scan row's key (shard + key = the scan row)
    feature  fixed_size_list<halffloat>[D]  float16 precision (default): the feature rounded to float16
             fixed_size_list<int8>[D]       int8 precision: round(feature / scale), per-row scale below
    scale    float32                        int8 only: max |feature| / 127 of the row

and, in its Parquet key-value metadata (`genscan.features`), the `FeatureSpec`: the feature kind, its size and
precision, the frozen backbone's identity (architecture + weights: open_clip tag, weights file sha256 or the
digest of the tensors stored in the checkpoint) and the preprocessing that made the pixels. A re-score
compares that spec with the detector's (`pipeline.features.head`) and refuses any difference.

Precision and the error it causes (`logit_bound`): a float16 value is within 2^-11 of the float32 one
relative (half a unit in the last place; 2^-25 absolute below float16's normal range), an int8 value within
scale/2; a linear head's logit moves by at most sum_i |w_i| * (that bound of feature i), float32
accumulation aside. Measured in benchmarks/features.py (results/features.md).
"""

from __future__ import annotations

import io
import json
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pipeline.output import parquet_bytes
from pipeline.settings import StrictModel
from pipeline.storage import filesystem, read_bytes

META_KEY = b"genscan.features"
FORMAT_VERSION = 1
_F16_REL = 2.0**-11 / (1 - 2.0**-11)  # |x - fp16(x)| <= this * |fp16(x)| in float16's normal range
_F16_ABS = 2.0**-25  # half the spacing of float16's subnormals


class FeaturePartError(ValueError):
    """A features part that cannot be used: unreadable (truncated), not a features part, or inconsistent."""


class BackboneId(StrictModel):
    identity: str = Field(
        description="<arch>:tag:<tag> | <arch>:sha256:<weights file> | <arch>:tensors:<digest>"
    )
    arch: str
    pretrained: str | None = None
    kind: str = Field(description="none (stored in the checkpoint) | tag | file")
    sha256: str | None = None


class Preprocessing(StrictModel):
    image_size: int
    preprocess: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class FeatureSpec(StrictModel):
    """What a part's features are; parts of one store agree on everything but `source_detector`."""

    format_version: int = FORMAT_VERSION
    kind: Literal["embedding", "pre_proj"]
    normalized: bool = Field(description="L2-normalised (pre_proj) or not (embedding)")
    dim: int = Field(ge=1)
    precision: Literal["float16", "int8"]
    backbone: BackboneId
    preprocessing: Preprocessing
    source_detector: str = Field(description="the detector whose backbone pass produced the features")

    def differences(self, stored: FeatureSpec) -> list[str]:
        """What makes the `stored` features not the ones these (a detector's needs) describe; empty: the
        same."""
        out = []
        if self.backbone.identity != stored.backbone.identity:
            out.append(f"backbone: stored {stored.backbone.identity}, detector {self.backbone.identity}")
        if (self.kind, self.normalized, self.dim) != (stored.kind, stored.normalized, stored.dim):
            out.append(
                f"feature: stored {stored.kind} (normalized {stored.normalized}, {stored.dim}-d), detector "
                f"{self.kind} (normalized {self.normalized}, {self.dim}-d)"
            )
        if self.preprocessing != stored.preprocessing:
            out.append(
                f"preprocessing: stored {_pre(stored.preprocessing)}, detector {_pre(self.preprocessing)}"
            )
        return out


def _pre(p: Preprocessing) -> str:
    return f"{p.preprocess}@{p.image_size} mean {list(p.mean)} std {list(p.std)}"


def _value_type(precision: str) -> pa.DataType:
    return pa.float16() if precision == "float16" else pa.int8()


def part_schema(spec: FeatureSpec) -> pa.Schema:
    fields = [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("feature", pa.list_(_value_type(spec.precision), spec.dim), nullable=False),
    ]
    if spec.precision == "int8":
        fields.append(pa.field("scale", pa.float32(), nullable=False))
    return pa.schema(fields, metadata={META_KEY: spec.model_dump_json().encode()})


def quantize(feats: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 (N, D) -> the stored values (float16, or int8 + per-row float32 scale)."""
    x = np.asarray(feats, np.float32)
    if precision == "float16":
        return x.astype(np.float16), None
    scale = (np.abs(x).max(axis=1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    return np.clip(np.rint(x / safe), -127, 127).astype(np.int8), scale


def logit_bound(
    weight: np.ndarray, decoded: np.ndarray, scale: np.ndarray | None, precision: str
) -> np.ndarray:
    """Per row, the most a linear head's logit (weight (D,)) can move because of the storage precision: the
    per-element bound (module docstring) of the stored values against the float32 feature, times |w|."""
    if precision == "float16":
        bound = _F16_REL * np.abs(decoded) + _F16_ABS
    else:
        assert scale is not None
        bound = np.broadcast_to(np.asarray(scale, np.float64)[:, None] / 2.0, decoded.shape)
    return bound @ np.abs(np.asarray(weight, np.float64))


def encode_part(shard: str, keys: list[str], feats: np.ndarray, spec: FeatureSpec) -> bytes:
    """One shard's features as Parquet bytes (zstd; the spec in the file's metadata)."""
    values, scale = quantize(feats.reshape(len(keys), spec.dim), spec.precision)
    flat = pa.array(values.reshape(-1), _value_type(spec.precision))
    cols: list[pa.Array] = [
        pa.array([shard] * len(keys), pa.string()),
        pa.array(keys, pa.string()),
        pa.FixedSizeListArray.from_arrays(flat, spec.dim),
    ]
    if scale is not None:
        cols.append(pa.array(scale, pa.float32()))
    return parquet_bytes(pa.Table.from_arrays(cols, schema=part_schema(spec)))


class Part:
    """A features part read back: its spec, keys, stored values (and int8 scales)."""

    def __init__(self, spec: FeatureSpec, table: pa.Table) -> None:
        self.spec = spec
        self.keys: list[str] = table.column("key").to_pylist()
        self.shards: set[str] = set(table.column("shard").to_pylist())
        flat = table.column("feature").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.values = flat.reshape(len(self.keys), spec.dim)
        self.scale = table.column("scale").to_numpy() if spec.precision == "int8" else None

    def features(self) -> np.ndarray:
        """The stored values back to float32 (N, D)."""
        x = np.asarray(self.values).astype(np.float32)
        return x if self.scale is None else x * np.asarray(self.scale, np.float32)[:, None]


def _unreadable(uri: str, exc: Exception, size: str = "") -> FeaturePartError:
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return FeaturePartError(f"features part unreadable: {uri} ({size}truncated or not Parquet: {first})")


def read_spec(schema: pa.Schema, uri: str) -> FeatureSpec:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise FeaturePartError(f"{uri}: not a genscan features part (no {META_KEY.decode()} metadata)")
    try:
        return FeatureSpec.model_validate(json.loads(raw))
    except ValueError as exc:
        raise FeaturePartError(f"{uri}: unreadable {META_KEY.decode()} metadata ({exc})") from exc


def read_part_spec(uri: str) -> FeatureSpec:
    """Only a part's spec (its Parquet footer); FeaturePartError when missing, truncated or foreign."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
    except FileNotFoundError as exc:
        raise FeaturePartError(f"features part missing: {uri}") from exc
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(uri, exc) from exc
    return read_spec(schema, uri)


def read_part(uri: str) -> Part:
    """Read and check one part; FeaturePartError (one line) when truncated, foreign or inconsistent."""
    try:
        data = read_bytes(uri)
    except FileNotFoundError as exc:
        raise FeaturePartError(f"features part missing: {uri}") from exc
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(uri, exc, f"{len(data)} bytes; ") from exc
    spec = read_spec(table.schema, uri)
    if not table.schema.remove_metadata().equals(part_schema(spec).remove_metadata()):
        raise FeaturePartError(
            f"{uri}: columns {table.schema.names} do not match a {spec.precision} features part"
        )
    keys = table.column("key").to_pylist()
    if len(set(keys)) != len(keys):
        raise FeaturePartError(f"{uri}: a key appears twice")
    return Part(spec, table)
