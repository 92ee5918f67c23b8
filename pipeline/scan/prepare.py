"""The CPU stage of the scan: read one shard (salvaging good samples) and decode its images [ours].

A plain generator over columnar dict batches, no Ray: `pipeline.engine.scan` runs it in CPU tasks, separate
from the detector actors. Every sample of the shard becomes exactly one row; a shard that could not be read to
its end adds ONE `shard_error` row. Each row carries `_idx` (its position in the shard) and `_expected` (the
shard's row count) so the driver knows when a shard is complete and can drop duplicates from task retries.

Internal columns use sentinels instead of nulls (numpy batches): "" for a missing string, -1 for a missing
integer; `pipeline.scan.rows` turns them back into nulls.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.logs import get_logger
from pipeline.scan.decode import decode_image
from pipeline.wds import read_shard

log = get_logger("pipeline.scan.prepare")

Batch = dict[str, np.ndarray]

# status of the one placeholder row an empty (but readable) shard produces: it completes the shard, is never written
EMPTY_STATUS = "_empty"

STR_COLS = ("shard", "shard_url", "key", "status", "error", "format", "sha256")
INT_COLS = ("width", "height", "n_bytes", "_idx", "_expected")
FLOAT_COLS = ("_read_s", "_decode_s")


def _new_columns() -> dict[str, list[Any]]:
    return {c: [] for c in (*STR_COLS, *INT_COLS, *FLOAT_COLS)}


def _to_batch(cols: dict[str, list[Any]], pixels: list[np.ndarray], image_size: int) -> Batch:
    n = len(cols["key"])
    batch: Batch = {c: np.asarray(cols[c], dtype=object) for c in STR_COLS}
    for c in INT_COLS:
        batch[c] = np.asarray(cols[c], dtype=np.int64)
    for c in FLOAT_COLS:
        batch[c] = np.asarray(cols[c], dtype=np.float64)
    batch["pixels"] = (
        np.stack(pixels).astype(np.uint8, copy=False) if n else np.zeros((0, image_size, image_size, 3), np.uint8)
    )
    return batch


def prepare_shard(
    shard_url: str,
    shard: str,
    *,
    image_size: int,
    resize_mode: str = "center_crop",
    max_pixels: int = 89_478_485,
    chunk_rows: int = 256,
) -> Iterator[Batch]:
    """Yield the shard's rows in chunks of at most `chunk_rows`: read metadata, decode status and uint8
    pixels (S,S,3) (zeros unless status is ok)."""
    t0 = time.perf_counter()
    contents = read_shard(shard_url)
    read_s = time.perf_counter() - t0
    n_samples = len(contents.samples)
    expected = n_samples + (1 if contents.error else 0)
    log.info("shard_read", shard=shard, samples=n_samples, error=contents.error, read_s=round(read_s, 3))
    blank = np.zeros((image_size, image_size, 3), np.uint8)
    per_row_read = read_s / max(expected, 1)

    if expected == 0:
        cols = _new_columns()
        _append(cols, shard, shard_url, "", EMPTY_STATUS, "", -1, -1, "", -1, "", 0, 0, read_s, 0.0)
        yield _to_batch(cols, [blank], image_size)
        return

    cols, pixels = _new_columns(), []
    for idx, sample in enumerate(contents.samples):
        t1 = time.perf_counter()
        if sample.image is None:
            status, error, w, h, fmt, n_bytes, sha, px = ("no_image", sample.note or "no image member",
                                                           -1, -1, "", -1, "", blank)  # fmt: skip
        else:
            n_bytes, sha = len(sample.image), hashlib.sha256(sample.image).hexdigest()
            try:
                r = decode_image(sample.image, image_size=image_size, resize_mode=resize_mode, max_pixels=max_pixels)
                status, error, px = r.status, r.error or "", (r.pixels if r.status == "ok" else blank)
                w, h, fmt = _int(r.width), _int(r.height), r.format or ""
            except Exception as exc:  # decode_image should not raise; if it does, the sample still gets a row
                status, error, w, h, fmt, px = "decode_error", f"{type(exc).__name__}: {exc}", -1, -1, "", blank
            if status == "ok" and (px is None or px.shape != (image_size, image_size, 3)):
                status, error, px = "decode_error", f"decoder returned shape {getattr(px, 'shape', None)}", blank
        decode_s = time.perf_counter() - t1
        _append(cols, shard, shard_url, sample.key, status, error, w, h, fmt, n_bytes, sha, idx, expected,
                per_row_read, decode_s)
        pixels.append(px)
        if len(pixels) >= chunk_rows:
            yield _to_batch(cols, pixels, image_size)
            cols, pixels = _new_columns(), []
    if contents.error:
        _append(cols, shard, shard_url, "", "shard_error", contents.error, -1, -1, "", -1, "", n_samples,
                expected, per_row_read, 0.0)
        pixels.append(blank)
    if pixels:
        yield _to_batch(cols, pixels, image_size)


def _int(v: int | None) -> int:
    return -1 if v is None else int(v)


def _append(cols: dict[str, list[Any]], shard: str, shard_url: str, key: str, status: str, error: str, w: int,
            h: int, fmt: str, n_bytes: int, sha: str, idx: int, expected: int, read_s: float,
            decode_s: float) -> None:  # fmt: skip
    for name, value in (("shard", shard), ("shard_url", shard_url), ("key", key), ("status", status),
                        ("error", error), ("width", w), ("height", h), ("format", fmt), ("n_bytes", n_bytes),
                        ("sha256", sha), ("_idx", idx), ("_expected", expected), ("_read_s", read_s),
                        ("_decode_s", decode_s)):  # fmt: skip
        cols[name].append(value)


def prepare_batch(batch: dict[str, np.ndarray], **kwargs: Any) -> Iterator[Batch]:
    """Adapter for a batch of shard items {"shard_url", "shard"} (the engine feeds one shard per call)."""
    for url, shard in zip(batch["shard_url"], batch["shard"], strict=True):
        yield from prepare_shard(str(url), str(shard), **kwargs)
