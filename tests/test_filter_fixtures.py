"""Shared fixtures for the hygiene tests (filter, report, queries doc): generated WebDataset shards and a scan
of them. No tests here.

`make_scan` runs the REAL scan job (jobs/scan_bucket.py) when it is available; until then (the scan job is built
in parallel) it writes the scan output with the scan's own pieces — `read_shard`, `decode_image`, the v1 schema
and the completion-marker writer — with scores from a seeded generator instead of a detector.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.scan.completion import RunPaths, write_shard
from pipeline.scan.decode import decode_image
from pipeline.scan.schema import SCHEMA, SCHEMA_VERSION
from pipeline.scan.shards import read_shard
from tests.support.shards import (
    Sample,
    corrupt_image_sample,
    good_samples,
    no_image_sample,
    tar_bytes,
    truncated_tar_bytes,
    write_raw,
)

GENERATORS = ("famA", "upconv")
LABELS = ("real", *GENERATORS)


@dataclass
class Corpus:
    root: str  # --input of scan and filter
    shards: dict[str, list[Sample]]  # shard uri -> samples written (in tar order)


def write_corpus(root: str, *, with_truncated: bool = False, seed: int = 0) -> Corpus:
    """Three small shards (one in a sub-folder) with an extra member type, a corrupt image and an image-less
    sample; optionally a fourth, truncated shard (the scan turns it into a shard_error row)."""
    shards: dict[str, list[Sample]] = {}
    layout = [("shard-000000.tar", 7), ("shard-000001.tar", 6), ("part/shard-000002.tar", 5)]
    for i, (name, n) in enumerate(layout):
        samples = good_samples(n, seed=seed + i, prefix=f"{i:02d}_", size=(24, 20),
                               generators=("real", "famA", "upconv"))
        for s in samples[::2]:
            s.files["txt"] = f"caption of {s.key}".encode()
        if i == 0:
            samples.insert(3, corrupt_image_sample(f"{i:02d}_bad"))
        if i == 1:
            samples.insert(2, no_image_sample(f"{i:02d}_noimg"))
        uri = storage.join(root, *name.split("/"))
        write_raw(uri, tar_bytes(samples))
        shards[uri] = samples
    if with_truncated:
        samples = good_samples(6, seed=seed + 9, prefix="09_", size=(24, 20))
        uri = storage.join(root, "shard-000009.tar")
        write_raw(uri, truncated_tar_bytes(samples))
        shards[uri] = samples
    return Corpus(root=root, shards=shards)


def _scores(key: str, seed: int) -> np.ndarray:
    """Seeded pseudo detector output for one key: softmax over LABELS and a p_fake spread over [0, 1]."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(h)
    logits = rng.normal(0, 2, size=len(LABELS)).astype(np.float32)
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


def interim_scan(corpus: Corpus, out: str, scan_date: str, seed: int = 0, threshold: float = 0.5) -> None:
    """Scan output in the v1 layout, written with the scan package's own reader/decoder/schema/markers."""
    paths = RunPaths(out, scan_date)
    run_id = f"{scan_date}-fixture"
    for uri in storage.list_shards(corpus.root):
        sid = storage.shard_id(uri, corpus.root)
        contents = read_shard(uri)
        rows = []
        for s in contents.samples:
            row = {"key": s.key, "status": "ok", "error": None, "p_fake": None, "logit": None, "is_fake": None,
                   "top_generator": None, "generator_scores": None, "width": None, "height": None, "format": None,
                   "n_bytes": None, "sha256": None}
            if s.image is None:
                row.update(status="no_image", error=s.note or "no image member")
            else:
                r = decode_image(s.image, image_size=16, resize_mode="center_crop", max_pixels=10**8)
                row.update(width=r.width, height=r.height, format=r.format, n_bytes=len(s.image),
                           sha256=hashlib.sha256(s.image).hexdigest())
                if r.status != "ok":
                    row.update(status=r.status, error=r.error)
                else:
                    probs = _scores(s.key, seed)
                    p_fake = float(1.0 - probs[0])
                    gi = int(np.argmax(probs[1:])) + 1
                    top = LABELS[gi] if probs[gi] > 0.3 else "unknown"
                    row.update(p_fake=p_fake, logit=float(np.log(p_fake / (1 - p_fake))),
                               is_fake=p_fake >= threshold, top_generator=top if p_fake >= 0.5 else "real",
                               generator_scores=list(zip(LABELS, probs.tolist(), strict=True)))
            rows.append(row)
        if contents.error:
            rows.append({"key": None, "status": "shard_error", "error": contents.error})
        n = len(rows)
        table = pa.Table.from_pylist(
            [{"schema_version": SCHEMA_VERSION, "run_id": run_id, "source": corpus.root, "shard": sid,
              "shard_url": uri, "threshold": threshold, "detector_id": "fixture@000000",
              "scanned_at": dt.datetime(2026, 11, 24, tzinfo=dt.UTC), **r} for r in rows],
            schema=SCHEMA,
        )
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        write_shard(paths, sid, table, {"shard": sid, "shard_url": uri, "rows": n,
                                        "samples": n - counts.get("shard_error", 0), "counts": counts})
    storage.write_bytes_atomic(paths.run_file("run.json"), json.dumps({"status": "succeeded"}).encode())


def make_scan(corpus: Corpus, out: str, scan_date: str = "2026-11-23", seed: int = 0) -> str:
    interim_scan(corpus, out, scan_date, seed=seed)
    return out
