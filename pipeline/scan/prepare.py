"""The CPU stage of the scan: read one shard (salvaging good samples) and decode its images [ours].

A plain generator over columnar dict batches, no Ray: `pipeline.engine.scan` runs it in CPU tasks, separate
from the detector actors. Every sample of the shard becomes exactly one row; a shard that could not be read to
its end adds ONE `shard_error` row. Each row carries `_idx` (its position in the shard) and `_expected` (the
shard's row count) so the writer knows when a shard is complete and can drop duplicates from task retries.

Internal columns use sentinels instead of nulls (numpy batches): "" for a missing string, -1 for a missing
integer; `pipeline.scan.rows` turns them back into nulls.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pipeline.limits import MAX_PIXELS
from pipeline.logs import get_logger
from pipeline.output import SHARD_ERROR
from pipeline.scan.gpu_decode import decode_or_ship
from pipeline.scan.provenance import ProvenanceReader
from pipeline.scan.provenance_columns import (
    NO_PROVENANCE,
    PROVENANCE_INT_COLS,
    PROVENANCE_STR_COLS,
    provenance_values,
)
from pipeline.shards import read_shard

log = get_logger("pipeline.scan.prepare")

Batch = dict[str, np.ndarray]

# status of the one placeholder row an empty (but readable) shard produces: it completes the shard, is never
# written
EMPTY_STATUS = "_empty"

STR_COLS = ("shard", "shard_url", "key", "status", "error", "format", "sha256", *PROVENANCE_STR_COLS)
INT_COLS = ("width", "height", "n_bytes", "_idx", "_expected", *PROVENANCE_INT_COLS)
FLOAT_COLS = ("_read_s", "_decode_s")


def input_column(i: int) -> str:
    """The batch column holding input `i` of the run's inputs: `pixels` for the first (the only one of a
    single-detector scan), `pixels_<i>` for the further preprocessings a detector set needs."""
    return "pixels" if i == 0 else f"pixels_{i}"


def _to_batch(rows: list[dict[str, Any]], ship: bool) -> Batch:
    """Rows (at least one) as a numpy batch: each row's `_images` (its image for each input) in the input
    columns; when the read stage ships JPEGs for the scorer's device decode (`ship`: decode_on gpu), each
    row's `encoded` bytes (b"" = decoded here)."""
    batch: Batch = {c: np.asarray([r[c] for r in rows], dtype=object) for c in STR_COLS}
    for c in INT_COLS:
        batch[c] = np.asarray([r[c] for r in rows], dtype=np.int64)
    for c in FLOAT_COLS:
        batch[c] = np.asarray([r[c] for r in rows], dtype=np.float64)
    for i in range(len(rows[0]["_images"])):
        batch[input_column(i)] = np.stack([r["_images"][i] for r in rows]).astype(np.uint8, copy=False)
    if ship:
        batch["encoded"] = np.asarray([r["encoded"] for r in rows], dtype=object)
    return batch


def _int(v: int | None) -> int:
    return -1 if v is None else int(v)


def prepare_shard(
    shard_url: str,
    shard: str,
    *,
    image_size: int,
    resize_mode: str = "center_crop",
    max_pixels: int = MAX_PIXELS,
    chunk_rows: int = 256,
    decode_on: str = "cpu",
    also: Sequence[tuple[int, str]] = (),
    provenance: bool = False,
    trust_anchors_pem: str | None = None,
) -> Iterator[Batch]:
    """Yield the shard's rows in chunks of at most `chunk_rows`: read metadata, decode status and uint8
    pixels (S,S,3) (zeros unless status is ok). also: further (image_size, resize_mode) inputs (several
    detectors in one scan), each in its column `input_column(i)`, i = 1.. (the image is decoded once).
    decode_on gpu ships eligible JPEGs' bytes in `encoded` instead of decoding them (one input only).
    provenance: also read each member's provenance evidence from its bytes (`pipeline.scan.provenance`; the
    `prov_*` columns, timed within `_decode_s`); trust_anchors_pem: the C2PA trust anchors (PEM text)."""
    if also and decode_on == "gpu":
        raise ValueError("decode_on gpu supports one input preprocessing; got several (also=...)")
    also = [(int(size), str(mode)) for size, mode in also]
    reader = ProvenanceReader(trust_anchors_pem) if provenance else None
    # the image of a row that has none, for each input (the first is the detector's, then `also`'s)
    sizes = [image_size, *(size for size, _ in also)]
    blanks = [np.zeros((size, size, 3), np.uint8) for size in sizes]
    blank = blanks[0]
    t0 = time.perf_counter()
    contents = read_shard(shard_url)
    read_s = time.perf_counter() - t0
    n_samples = len(contents.samples)
    expected = n_samples + (1 if contents.error else 0)
    log.info("shard_read", shard=shard, samples=n_samples, error=contents.error, read_s=round(read_s, 3))
    # a row's values before its sample is looked at: this shard's, and the sentinels of "no image"
    base: dict[str, Any] = {
        "shard": shard,
        "shard_url": shard_url,
        **dict.fromkeys(("key", "error", "format", "sha256"), ""),
        **dict.fromkeys(("width", "height", "n_bytes"), -1),
        "_expected": expected,
        "_read_s": read_s / max(expected, 1),
        "_decode_s": 0.0,
        **NO_PROVENANCE,
        "_images": blanks,
        "encoded": b"",
    }
    ship = decode_on == "gpu"
    rows: list[dict[str, Any]] = []
    for idx, sample in enumerate(contents.samples):
        row = {**base, "key": sample.key, "_idx": idx}
        shipped, r, px = b"", None, blank
        t1 = time.perf_counter()
        if sample.image is None:
            row.update(status="no_image", error=sample.note or "no image member")
        else:
            row.update(n_bytes=len(sample.image), sha256=hashlib.sha256(sample.image).hexdigest())
            prov, image = provenance_values(reader, sample.image)
            row.update(prov)
            try:
                r = decode_or_ship(
                    image,
                    image_size=image_size,
                    resize_mode=resize_mode,
                    max_pixels=max_pixels,
                    decode_on=decode_on,
                    also=also,
                )
                shipped = r.encoded or b""
                row.update(status=r.status, error=r.error or "", format=r.format or "")
                row.update(width=_int(r.width), height=_int(r.height))
                px = r.pixels if r.status == "ok" and not shipped else blank
            except Exception as exc:  # the decoder should not raise; if it does, the sample still gets a row
                row.update(status="decode_error", error=f"{type(exc).__name__}: {exc}")
                row.update(width=-1, height=-1, format="")  # px is still blank: its assignment ends the try
            if row["status"] == "ok" and (px is None or px.shape != (image_size, image_size, 3)):
                shape = getattr(px, "shape", None)
                row.update(status="decode_error", error=f"decoder returned shape {shape}")
                px = blank
        row["_decode_s"] = time.perf_counter() - t1
        further = r.also if row["status"] == "ok" and r is not None and r.also else blanks[1:]
        rows.append({**row, "_images": [px, *further], "encoded": shipped})
        if len(rows) >= chunk_rows:
            yield _to_batch(rows, ship)
            rows = []
    if contents.error or n_samples == 0:  # one shard_error row, or the placeholder row of an empty shard
        status = SHARD_ERROR if contents.error else EMPTY_STATUS
        rows.append({**base, "status": status, "error": contents.error or "", "_idx": n_samples})
    if rows:
        yield _to_batch(rows, ship)
