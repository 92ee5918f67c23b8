"""Read source WebDataset shards member by member and write cleaned ones deterministically [ours].

Samples are grouped exactly as the scan groups them (`pipeline.scan.shards`: WebDataset's key rule via
`split_key`; a run of consecutive members with one key is a sample, a repeated extension starts a new sample;
directories, `__MACOSX/…`, `._*`, non-regular members and names without an extension belong to no sample), so
the filter's samples line up one to one with the scan's rows. Kept members are copied under their original
names with their original bytes. Output tars are written with `webdataset.TarWriter` at a fixed mtime, owner and
mode, members sorted within each sample, so the same input and decisions always give byte-identical shards.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from webdataset import TarWriter

from pipeline import storage
from pipeline.scan.shards import IMAGE_EXTENSIONS, safe_name, split_key

FIXED_MTIME = 0
BLOCK_SIZE = 8 * 1024 * 1024


@dataclass
class SourceSample:
    key: str  # as the scan writes it (non-UTF-8 bytes as \\xNN)
    raw_key: str  # as in the tar (member names are rewritten from it)
    members: dict[str, bytes] = field(default_factory=dict)  # extension (original case) -> bytes

    def image(self) -> bytes | None:
        """The member the scan scored: the first present extension in the scan's IMAGE_EXTENSIONS order
        (by the last dot-suffix, case-insensitive)."""
        ranked = sorted(
            (IMAGE_EXTENSIONS.index(ext.rsplit(".", 1)[-1].lower()), data)
            for ext, data in self.members.items()
            if ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
        )
        return ranked[0][1] if ranked else None


@dataclass
class SourceIndex:
    """The samples of a source shard, in tar order, and the members that belong to no sample."""

    keys: list[str]
    non_sample_members: list[str]


def _sample_name(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """(key, extension) of a member that belongs to a sample, else None (the scan's rules)."""
    if not info.isreg():
        return None
    parts = info.name.split("/")
    if "__MACOSX" in parts or parts[-1].startswith("._"):
        return None
    return split_key(info.name)


def _open_tar(uri: str, stream: bool):
    fs, path = storage.filesystem(uri)
    f = fs.open(path, "rb", block_size=BLOCK_SIZE) if storage.is_remote(uri) else fs.open(path, "rb")
    mode = "r|" if stream else "r:"
    return f, tarfile.open(fileobj=f, mode=mode, encoding="utf-8", errors="surrogateescape")


def index_shard(uri: str) -> SourceIndex:
    """Keys of a source shard, reading only tar headers (data blocks are skipped by seeking)."""
    keys: list[str] = []
    other: list[str] = []
    f, tar = _open_tar(uri, stream=False)
    with f, tar:
        current: str | None = None
        exts: set[str] = set()
        for info in tar:
            split = _sample_name(info)
            if split is None:
                other.append(safe_name(info.name))
                continue
            key, ext = split
            if key != current or ext in exts:
                keys.append(safe_name(key))
                current, exts = key, set()
            exts.add(ext)
    return SourceIndex(keys=keys, non_sample_members=other)


def iter_samples(uri: str) -> Iterator[SourceSample]:
    """Samples of a source shard with every member's bytes, in tar order. Raises on a broken tar."""
    f, tar = _open_tar(uri, stream=True)
    with f, tar:
        current: SourceSample | None = None
        for info in tar:
            split = _sample_name(info)
            if split is None:
                continue
            key, ext = split
            extracted = tar.extractfile(info)
            data = extracted.read() if extracted is not None else b""
            if len(data) != info.size:
                raise tarfile.ReadError(f"{uri}: member {info.name!r} truncated ({len(data)} of {info.size} bytes)")
            if current is None or current.raw_key != key or ext in current.members:
                if current is not None:
                    yield current
                current = SourceSample(key=safe_name(key), raw_key=key)
            current.members[ext] = data
        if current is not None:
            yield current


class ShardWriter:
    """A deterministic tar written to a private temp file, made visible only by `commit` (local: rename over
    the target; S3: one upload after the file is complete). Empty shards are valid tars."""

    def __init__(self, target_uri: str) -> None:
        self.target_uri = target_uri
        self.count = 0
        if storage.is_remote(target_uri):
            fd, tmp = tempfile.mkstemp(suffix=".tar", prefix="genscan-filter-")
            os.close(fd)
            self._tmp = Path(tmp)
        else:
            target = Path(target_uri.removeprefix("file://"))
            target.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._writer = TarWriter(self._file, encoder=False, mtime=FIXED_MTIME, format="PAX_FORMAT")

    def write(self, sample: SourceSample) -> None:
        hidden = [ext for ext in sample.members if ext.startswith("_")]
        if hidden:  # TarWriter would silently skip these members
            raise ValueError(f"sample {sample.key!r}: member extension(s) {hidden} start with '_' (cannot copy)")
        self._writer.write({"__key__": sample.raw_key, **sample.members})
        self.count += 1

    def _close(self) -> None:
        if not self._file.closed:
            self._writer.close()
            self._file.close()

    def commit(self) -> None:
        self._close()
        try:
            if storage.is_remote(self.target_uri):
                fs, path = storage.filesystem(self.target_uri)
                fs.put_file(str(self._tmp), path)
            else:
                os.replace(self._tmp, Path(self.target_uri.removeprefix("file://")))
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        self._close()
        self._tmp.unlink(missing_ok=True)
