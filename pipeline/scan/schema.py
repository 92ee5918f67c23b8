"""The scan output's Parquet schema, version 1 — the contract analysts' SQL depends on (docs/schema.md) [ours].

Change it only by bumping SCHEMA_VERSION and documenting the change; readers use the `schema_version` column.
The `scan_date` partition column is NOT in the files: it comes from the hive path `scan_date=YYYY-MM-DD/`.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

STATUSES = ("ok", "decode_error", "no_image", "too_large", "shard_error")

SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # the --input the run scanned
        pa.field("shard", pa.string(), nullable=False),  # shard id (file name of this Parquet file)
        pa.field("shard_url", pa.string(), nullable=False),
        pa.field("key", pa.string()),  # WebDataset __key__; null only for shard_error rows
        pa.field("status", pa.string(), nullable=False),  # one of STATUSES
        pa.field("error", pa.string()),  # why, when status != ok
        pa.field("p_fake", pa.float32()),  # probability the image is generated; null unless ok
        pa.field("logit", pa.float32()),
        pa.field("is_fake", pa.bool_()),  # p_fake >= threshold
        pa.field("threshold", pa.float32()),  # the checkpoint's calibrated p_fake threshold
        pa.field("top_generator", pa.string()),  # "real", a known generator, or "unknown"
        pa.field("generator_scores", pa.map_(pa.string(), pa.float32())),  # softmax over ["real", *generators]
        pa.field("width", pa.int32()),  # original image size
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),  # PIL format name, e.g. JPEG / PNG
        pa.field("n_bytes", pa.int64()),  # size of the encoded image member
        pa.field("sha256", pa.string()),  # hex sha256 of the image member's bytes
        pa.field("detector_id", pa.string(), nullable=False),  # "<config>@<sha256 prefix of weights>"
        pa.field("scanned_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ],
    metadata={"genscan.schema_version": str(SCHEMA_VERSION)},
)

COLUMNS = tuple(SCHEMA.names)


def check_table(table: pa.Table) -> None:
    """Raise ValueError unless `table` has exactly SCHEMA (names, types, order) and valid statuses."""
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise ValueError(f"table schema differs from scan schema v{SCHEMA_VERSION}:\n{table.schema}")
    bad = set(table.column("status").to_pylist()) - set(STATUSES)
    if bad:
        raise ValueError(f"unknown status values: {sorted(bad)}")
