"""The scan-output contract: paths, Parquet schema v3, completion markers, run files, listing of dates and
shards, and `open_scan()` for readers — the ONE place that spells out the layout (docs/schema.md) [ours].

    <out>/scan_date=<D>/<shard>.parquet        one file per shard, named by shard id (a retry overwrites)
    <out>/_shards/<D>/<shard>.json             completion marker: the shard's stats, written AFTER its Parquet
    <out>/_run/<D>/                            config.json versions.json detector.json run.json
    <out>/_features/scan_date=<D>/<shard>.parquet   the shard's stored backbone features (`--features`;
                                               pipeline.features), written with its Parquet, before its marker

Writers: the scan (`pipeline.scan.job` + the shard writers on the workers). Readers: the filter
(`pipeline.hygiene.plan`), the report (`pipeline.report`), the demo summary and the documented queries
(docs/queries.md: `read_parquet('<out>/scan_date=*/*.parquet', hive_partitioning = true)` = `parquet_glob`).

Schema: change it only by bumping SCHEMA_VERSION and documenting the change; readers use the `schema_version`
column. v2 = v1's columns, same names, types and order, plus four columns at the end (each detector's score
when several detectors scan at once, and the fusion rule). v3 = v2's columns plus the provenance evidence at
the end (`provenance_*`, `decided_by`; pipeline.scan.provenance). `open_scan` reads v1, v2 and v3 files
together (a column a file lacks reads as null). The `scan_date` partition column is NOT in the files: it comes
from the hive path `scan_date=YYYY-MM-DD/`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import AfterValidator

from pipeline.exitcodes import ExitCode, OperatorError
from pipeline.settings import ConfigError
from pipeline.storage import filesystem, join, list_names, read_bytes, write_bytes_atomic

SCHEMA_VERSION = 3

# Row statuses: `ok` rows are scored; a sample error is a sample without a score (its bytes did not decode, it
# had no image member, or the image was over the pixel limit); `shard_error` is the ONE row of a shard that
# could not be read to its end. Which statuses count as errors (the error budget, the progress line, the
# filter's error_action) is decided here and nowhere else.
SAMPLE_ERROR_STATUSES = ("decode_error", "no_image", "too_large")
SHARD_ERROR = "shard_error"
ERROR_STATUSES = (*SAMPLE_ERROR_STATUSES, SHARD_ERROR)
STATUSES = ("ok", *ERROR_STATUSES)

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
        # softmax over ["real", *generators]
        pa.field("generator_scores", pa.map_(pa.string(), pa.float32())),
        pa.field("width", pa.int32()),  # original image size
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),  # PIL format name, e.g. JPEG / PNG
        pa.field("n_bytes", pa.int64()),  # size of the encoded image member
        pa.field("sha256", pa.string()),  # hex sha256 of the image member's bytes
        pa.field("detector_id", pa.string(), nullable=False),  # "<config>@<sha256 prefix of weights>"
        pa.field("scanned_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        # v2: one entry per detector of the run, keyed by its detector_id (one entry for a single detector);
        # null unless ok. p_fake / logit / is_fake / threshold above are then the FUSED score of the set.
        pa.field("detector_p_fake", pa.map_(pa.string(), pa.float32())),
        pa.field("detector_logit", pa.map_(pa.string(), pa.float32())),
        pa.field("detector_is_fake", pa.map_(pa.string(), pa.bool_())),
        pa.field("fusion", pa.string()),  # the fusion rule (pipeline.models.fusion); null for one detector
        # v3: provenance evidence read from the member's bytes (pipeline.scan.provenance; docs/provenance.md);
        # null when not read (reading off, no image bytes, a format other than JPEG / PNG / WebP)
        pa.field("provenance_verdict", pa.string()),  # one of PROVENANCE_VERDICTS
        # the evidence kind that gave the verdict (c2pa xmp png_text exif)
        pa.field("provenance_basis", pa.string()),
        pa.field("provenance_kinds", pa.list_(pa.string())),  # every evidence kind found
        # declared generator (claim generator, front-end, Software)
        pa.field("provenance_generator", pa.string()),
        pa.field("provenance_model", pa.string()),  # model name, where the front-end writes it
        pa.field("provenance_signer", pa.string()),  # C2PA signing certificate "<issuer> / <common name>"
        pa.field("provenance_source_types", pa.list_(pa.string())),  # IPTC digital source type IRIs
        pa.field("provenance_signature", pa.string()),  # C2PA: trusted | valid_untrusted | invalid
        pa.field("provenance_codes", pa.list_(pa.string())),  # C2PA validation failure codes
        pa.field("provenance_ingredients", pa.int32()),  # C2PA: ingredients of the active manifest
        pa.field("provenance_error", pa.string()),  # why evidence could not be read
        # who set is_fake / top_generator: "detector" or "provenance" (the run's provenance policy); null
        # unless ok
        pa.field("decided_by", pa.string()),
    ],
    metadata={"genscan.schema_version": str(SCHEMA_VERSION)},
)

COLUMNS = tuple(SCHEMA.names)
V1_COLUMNS = COLUMNS[: COLUMNS.index("scanned_at") + 1]  # what schema v1 files hold (v2 adds columns after)
V2_COLUMNS = COLUMNS[: COLUMNS.index("fusion") + 1]  # what schema v2 files hold (v3 adds columns after)
PROVENANCE_VERDICTS = (
    "ai_declared",
    "ai_composite_declared",
    "capture_declared",
    "invalid",
    "unreadable",
    "none",
)

PARTITION = "scan_date"  # hive partition column (from the path)
SCAN_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"  # a partition's value: YYYY-MM-DD


def _check_scan_date(value: str) -> str:
    """YYYY-MM-DD and a calendar day: 2026-13-01 is refused, not looked for (fromisoformat alone would also
    take 20260101)."""
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        day = None
    if day is None or not re.match(SCAN_DATE_PATTERN, value):
        raise ValueError("must be a calendar day written YYYY-MM-DD")
    return value


ScanDate = Annotated[str, AfterValidator(_check_scan_date)]  # every config's scan_date
DATA_PREFIX = f"{PARTITION}="
MARKER_DIR = "_shards"
RUN_DIR = "_run"
# the feature store: its own hive dataset beside the scan rows; the leading '_' keeps it out of every reader
# of the scan rows (open_scan, Arrow/Spark discovery of <out>) while `parquet_glob` never matched it anyway
FEATURES_DIR = "_features"


class ScanOutputError(OperatorError, FileNotFoundError):
    """The folder is not a scan output, or lacks the requested scan date."""

    exit_code = ExitCode.NOT_FOUND
    label = "refused"


def map_column(column: str, keys: list[list[str]], values: np.ndarray, null: np.ndarray) -> pa.Array:
    """SCHEMA's map ``column``: row i maps ``keys[i]`` to its values (``values`` in row order, flat or one row
    per row), null where ``null``."""
    typ = SCHEMA.field(column).type
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int32)
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array([k for row in keys for k in row], pa.string()),
        pa.array(np.asarray(values).reshape(-1), typ.item_type),
        type=typ,
        mask=pa.array(null, pa.bool_()),
    )


# ------------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class RunPaths:
    """Where one scan date's files live under `output`."""

    output: str
    scan_date: str

    @property
    def data_dir(self) -> str:
        return join(self.output, f"{DATA_PREFIX}{self.scan_date}")

    @property
    def run_dir(self) -> str:
        return join(self.output, RUN_DIR, self.scan_date)

    @property
    def marker_dir(self) -> str:
        return join(self.output, MARKER_DIR, self.scan_date)

    def parquet(self, shard: str) -> str:
        return join(self.data_dir, f"{shard}.parquet")

    @property
    def features_dir(self) -> str:
        return join(self.output, FEATURES_DIR, f"{DATA_PREFIX}{self.scan_date}")

    def features(self, shard: str) -> str:
        """The shard's features part (one file per shard, like its Parquet: a shard's outputs are its
        files)."""
        return join(self.features_dir, f"{shard}.parquet")

    def marker(self, shard: str) -> str:
        return join(self.marker_dir, f"{shard}.json")

    def run_file(self, name: str) -> str:
        return join(self.run_dir, name)


def parquet_glob(output: str) -> str:
    """The one glob that reads every date (DuckDB / Polars, with hive partitioning)."""
    return join(output, f"{DATA_PREFIX}*", "*.parquet")


# ------------------------------------------------------------------------------------------- JSON files
def read_json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(read_bytes(uri))
    except FileNotFoundError:
        return None


def now_iso() -> str:
    """The time stamp of every run file, marker and checkpoint: UTC, ISO 8601, whole seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, json_bytes(obj))


# ------------------------------------------------------------------------------------------- listing
def list_dates(output: str) -> list[str]:
    """Scan dates that have a data partition (`scan_date=D/`), oldest first."""
    return sorted(n.removeprefix(DATA_PREFIX) for n in list_names(output) if n.startswith(DATA_PREFIX))


def list_runs(output: str) -> list[str]:
    """Scan dates that have a run folder (`_run/D/`), oldest first."""
    return list_names(join(output, RUN_DIR))


def feature_shards(paths: RunPaths) -> set[str]:
    """Shard ids of the date that have a features part."""
    return {name.removesuffix(".parquet") for name in list_names(paths.features_dir, ".parquet")}


def completed_shards(paths: RunPaths) -> set[str]:
    """Shard ids of the date that have a completion marker."""
    return {name.removesuffix(".json") for name in list_names(paths.marker_dir, ".json")}


def data_shards(paths: RunPaths) -> set[str]:
    """Shard ids of the date that have a Parquet file (complete or not: only a marker says complete)."""
    return {name.removesuffix(".parquet") for name in list_names(paths.data_dir, ".parquet")}


def has_output(paths: RunPaths) -> bool:
    return bool(
        data_shards(paths) or completed_shards(paths) or read_json(paths.run_file("run.json")) is not None
    )


class RunRefused(ConfigError):
    """The requested run would write over existing output, or `--resume` cannot continue it (the scan's and
    the re-score's rule: one wording for the same mistake; nothing is written or deleted)."""


def check_new_run(paths: RunPaths, resume: bool) -> None:
    """Without `--resume`, a run whose date already holds anything (run.json, markers or Parquet) is refused,
    never overwritten."""
    if not resume and has_output(paths):
        raise RunRefused(
            f"output: {paths.output} already has scan_date={paths.scan_date} (run.json, markers or Parquet); "
            "pass --resume to continue it, or choose another --output or --scan-date. Nothing was deleted."
        )


def resume_mismatch(paths: RunPaths, name: str, now: Any, before: Any) -> RunRefused:
    """`--resume` of the run at `paths` with another `name` than the run was started with."""
    return RunRefused(
        f"{name}: --resume of scan_date={paths.scan_date} in {paths.output} with a different {name} "
        f"({now!r} != {before!r}); pass the run's own {name}, or start a new run without --resume"
    )


def resolve_scan_date(output: str, requested: str | None = None) -> str:
    """`requested` if that partition exists, else (None) the latest; ScanOutputError naming what is there."""
    fs, root = filesystem(output)
    if not fs.exists(root):
        raise ScanOutputError(f"scan output not found: {output}")
    dates = list_dates(output)
    if not dates:
        raise ScanOutputError(f"no {DATA_PREFIX}* partitions under {output}: not a scan output")
    if requested is None:
        return dates[-1]
    if requested not in dates:
        raise ScanOutputError(f"{DATA_PREFIX}{requested} not found under {output} (have: {', '.join(dates)})")
    return requested


# ------------------------------------------------------------------------------------------- writing
def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- reading
def open_scan(output: str) -> pads.Dataset:
    """Every date of a scan output as one Arrow dataset with a string `scan_date` column (from the paths);
    markers and run files are not data. Local and s3:// alike (fsspec). The dataset has the CURRENT schema
    whatever the files' versions: columns a file lacks (v2's in a v1 file, v3's in a v2 file) read as null."""
    fs, path = filesystem(output)
    schema = SCHEMA.remove_metadata().append(pa.field(PARTITION, pa.string()))
    return pads.dataset(
        path,
        filesystem=fs,
        format="parquet",
        schema=schema,
        partitioning=pads.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
        exclude_invalid_files=False,
        ignore_prefixes=["_", "."],
    )


def read_scan(output: str, *, scan_date: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """The rows of one date (or every date when None), with the `scan_date` column."""
    ds = open_scan(output)
    cols = None if columns is None else [*columns, *([PARTITION] if PARTITION not in columns else [])]
    flt = None if scan_date is None else pads.field(PARTITION) == scan_date
    return ds.to_table(columns=cols, filter=flt)
