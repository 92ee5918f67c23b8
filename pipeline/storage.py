"""Object-storage helpers over fsspec (local paths, `file://`, `s3://` through s3fs).

Credentials and the S3 endpoint come only from the environment / the standard AWS chain
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, profiles); nothing here logs or stores them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from pathlib import Path

import fsspec
from braceexpand import braceexpand

SHARD_SUFFIXES = (".tar",)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-within-it) for a URI or local path."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri.removeprefix("file://"), *parts))


def with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of `filesystem`: a path from `fs` back to a URI usable by `filesystem`."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def list_shards(source: str) -> list[str]:
    """Shard URIs for `source`: a brace pattern (`.../shard-{000000..000009}.tar`), one `.tar`,
    or a folder/prefix searched recursively for `*.tar`. Sorted, de-duplicated; never empty."""
    if "{" in source:
        uris = sorted(set(braceexpand(source)))
    elif source.endswith(SHARD_SUFFIXES):
        uris = [source]
    else:
        fs, root = filesystem(source)
        if not fs.exists(root):
            raise FileNotFoundError(f"input not found: {source}")
        found = [p for p in fs.find(root) if p.endswith(SHARD_SUFFIXES)]
        uris = sorted(with_protocol(fs, p) for p in found)
    if not uris:
        raise FileNotFoundError(f"no .tar shards under {source}")
    return uris


def shard_id(shard_uri: str, source: str) -> str:
    """Stable id of a shard: its path relative to the input root without `.tar`, `/` → `__`.
    Output files are named by it, so a retry overwrites instead of duplicating."""
    rel = shard_uri
    if "{" not in source and not source.endswith(SHARD_SUFFIXES):
        root = source.rstrip("/") + "/"
        _, root_path = filesystem(root)
        _, shard_path = filesystem(shard_uri)
        rel = shard_path[len(root_path.rstrip("/")) + 1 :] if shard_path.startswith(root_path.rstrip("/")) else shard_path
    else:
        rel = posixpath.basename(filesystem(shard_uri)[1])
    for suffix in SHARD_SUFFIXES:
        rel = rel.removesuffix(suffix)
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in rel.replace("/", "__"))
    return safe or "shard"


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Readers never see a half-written file: local files go through a temp name + rename;
    an S3 PUT is atomic by itself."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def cache_dir() -> Path:
    return Path(os.environ.get("GENSCAN_CACHE", Path.home() / ".cache" / "genscan"))


def fetch_to_cache(uri: str) -> Path:
    """A local path for `uri`: local paths are returned as they are; remote files are downloaded once
    into the cache (keyed by URI) and reused."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = cache_dir() / key / posixpath.basename(uri.rstrip("/"))
    fs, path = filesystem(uri)
    if fs.isdir(path):
        for remote in fs.find(path):
            local = dest / posixpath.relpath(remote, path)
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get(remote, str(local))
        return dest
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        fs.get(path, str(tmp))
        os.replace(tmp, dest)
    return dest
