"""Write small WebDataset shards for tests, locally or to S3 (any fsspec URI; the S3 fixture's env is used).

Each sample is `<key>.<png|jpg>` + `<key>.json` with `{"label": 0|1, "generator": "real"|<family>}` — the
layout of docs/architecture.md. Bad-data helpers build the cases the scanner must turn into rows: a corrupt
image, a sample without an image member, a truncated shard, a non-tar object.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.storage import join, write_bytes_atomic


@dataclass
class Sample:
    key: str
    files: dict[str, bytes] = field(
        default_factory=dict
    )  # extension -> payload, e.g. {"png": ..., "json": ...}


def image_bytes(rng: np.random.Generator, size: tuple[int, int] = (48, 40), fmt: str = "png") -> bytes:
    """A small random RGB image (width, height) encoded as PNG or JPEG."""
    w, h = size
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else fmt.upper())
    return buf.getvalue()


def good_samples(
    n: int,
    seed: int = 0,
    prefix: str = "s",
    size: tuple[int, int] = (48, 40),
    fmt: str = "png",
    generators: Sequence[str] = ("real", "famA"),
) -> list[Sample]:
    """`n` decodable samples with json labels; generators cycle through `generators`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gen = generators[i % len(generators)]
        meta = {"label": 0 if gen == "real" else 1, "generator": gen}
        out.append(
            Sample(f"{prefix}{i:06d}", {fmt: image_bytes(rng, size, fmt), "json": json.dumps(meta).encode()})
        )
    return out


def corrupt_image_sample(key: str, ext: str = "jpg") -> Sample:
    """An image member whose bytes are not a decodable image (JPEG magic + garbage)."""
    return Sample(key, {ext: b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 8, "json": b'{"label": 0}'})


def no_image_sample(key: str) -> Sample:
    """A sample with only a json member."""
    return Sample(key, {"json": b'{"label": 1, "generator": "famA"}'})


def tar_bytes(samples: Sequence[Sample]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            for ext, payload in s.files.items():
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size = len(payload)
                info.mtime = 0
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def truncated_tar_bytes(samples: Sequence[Sample], keep_fraction: float = 0.6) -> bytes:
    """A tar cut in the middle of a member (the reader must salvage what precedes the cut)."""
    data = tar_bytes(samples)
    cut = int(len(data) * keep_fraction)
    # make sure the cut falls inside a member's payload, not on a 512-byte boundary
    return data[: cut - (cut % 512) + 100]


def write_shard(uri: str, samples: Sequence[Sample]) -> str:
    write_bytes_atomic(uri, tar_bytes(samples))
    return uri


def write_shards(
    root: str, n_shards: int, per_shard: int, seed: int = 0, name: str = "shard-{:06d}.tar", **images: Any
) -> list[tuple[str, int]]:
    """`n_shards` shards of `per_shard` good samples under `root` (local dir or s3:// prefix); `images`:
    good_samples' size, fmt and generators. Returns [(uri, n_samples)]; keys are globally unique."""
    out = []
    for i in range(n_shards):
        samples = good_samples(per_shard, seed=seed + i, prefix=f"{i:04d}_", **images)
        uri = join(root, name.format(i))
        write_shard(uri, samples)
        out.append((uri, per_shard))
    return out


def write_raw(uri: str, data: bytes) -> str:
    """Write arbitrary bytes (e.g. a non-tar object named `.tar`)."""
    write_bytes_atomic(uri, data)
    return uri


def make_bucket(bucket: str) -> str:
    """Create an S3 bucket on the test server (env from the `s3_server` fixture); returns `s3://bucket`."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    return f"s3://{bucket}"
