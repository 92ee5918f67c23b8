"""Object-storage helpers over fsspec (local paths, `file://`, `s3://` through s3fs).

Credentials and the S3 endpoint come only from the environment / the standard AWS chain
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, profiles); nothing here logs or stores
them.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import fsspec
from braceexpand import braceexpand

SHARD_SUFFIXES = (".tar",)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def absolute(uri: str) -> str:
    """A local path made absolute (`file://` dropped); a remote URI unchanged. Ray workers do not share the
    driver's working directory, so a job resolves the local paths it was given before they travel to them."""
    return uri if is_remote(uri) else os.path.abspath(uri.removeprefix("file://"))


def within(uri: str, folder: str) -> bool:
    """`uri` is `folder` or somewhere under it (local paths compared made absolute): an output there would
    write into what the job reads."""
    inner, outer = absolute(uri).rstrip("/"), absolute(folder).rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def writes_into_sources(output: str, source: str) -> bool:
    """An output that is the shard source's folder or (a folder source) inside it: what a job writes there
    would sit among, overwrite or be listed with the shards it reads. A brace pattern or one shard: its
    folder holds the sources."""
    src = source.rstrip("/")
    if names_shards(src):
        return absolute(output).rstrip("/") == absolute(parent(src)).rstrip("/")
    return within(output, src)


def check_output_outside(output: str, source: str, why: str) -> None:
    """A config validator's ValueError when ``output`` writes into the shard source (`writes_into_sources`);
    ``why`` says what would go wrong there."""
    if writes_into_sources(output, source):
        raise ValueError(f"output must not be the input folder or inside it ({why})")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-within-it) for a URI or local path."""
    return fsspec.core.url_to_fs(uri)


def tuned_filesystem(uri: str, s3_options: dict) -> tuple[fsspec.AbstractFileSystem, str]:
    """`filesystem`, with `s3_options` (timeouts, retries) applied for s3:// URIs. The endpoint from
    AWS_ENDPOINT_URL goes into the client kwargs: it is part of fsspec's instance-cache key, so a changed
    endpoint never reuses a client of the old one."""
    protocol = fsspec.core.split_protocol(uri)[0]
    if protocol not in ("s3", "s3a"):
        return fsspec.core.url_to_fs(uri)
    options = dict(s3_options)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return fsspec.core.url_to_fs(uri, **options)


def parent(uri: str) -> str:
    """The folder holding ``uri``: a remote URI's prefix, a local path's parent ("." for a bare name)."""
    if is_remote(uri):
        return posixpath.dirname(uri.rstrip("/"))
    return str(Path(uri.removeprefix("file://")).parent)


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


def names_shards(source: str) -> bool:
    """THE rule for an input: a brace pattern or a single `.tar` names its shards; anything else is a
    folder/prefix whose `.tar` files are the shards."""
    return "{" in source or source.endswith(SHARD_SUFFIXES)


def _named(source: str) -> list[str] | None:
    """The shard URIs a brace pattern or a single `.tar` names (no request); None for a folder/prefix."""
    if not names_shards(source):
        return None
    return sorted(set(braceexpand(source))) if "{" in source else [source]


def list_shards(source: str) -> list[str]:
    """Shard URIs for `source`: a brace pattern (`.../shard-{000000..000009}.tar`), one `.tar`,
    or a folder/prefix searched recursively for `*.tar`. Sorted, de-duplicated; never empty. A brace pattern
    or a single `.tar` is expanded without a request."""
    return _named(source) or [uri for uri, _ in list_shard_objects(source)]


def list_shard_objects(source: str) -> list[tuple[str, str | None]]:
    """`list_shards` with each shard's stored identity (`object_identity`) from the same listing: a folder is
    one recursive listing; a brace pattern or a single `.tar` lists its parent folder(s) once each. None where
    the listing does not hold the object (a brace name that does not exist: it fails when read)."""
    uris = _named(source)
    if uris is not None:
        infos: dict[str, dict] = {}
        fs = filesystem(uris[0])[0]
        for folder in sorted({posixpath.dirname(filesystem(u)[1]) for u in uris}):
            fs.invalidate_cache(folder)  # one fresh listing of each parent folder
            try:
                infos.update({str(i["name"]).rstrip("/"): i for i in fs.ls(folder, detail=True)})
            except FileNotFoundError:
                continue
        return [(u, object_identity(infos.get(filesystem(u)[1].rstrip("/"), {}))) for u in uris]
    fs, root = filesystem(source)
    if not fs.exists(root):
        raise FileNotFoundError(f"input not found: {source}")
    found = fs.find(root, detail=True)
    objs = sorted(
        (with_protocol(fs, p), object_identity(info))
        for p, info in found.items()
        if p.endswith(SHARD_SUFFIXES)
    )
    if not objs:
        raise FileNotFoundError(f"no .tar shards under {source}")
    return objs


def object_identity(info: dict) -> str | None:
    """THE identity of a stored object's bytes, from its listing / info entry (the detector cache and the
    incremental scan both use it): S3 VersionId, else ETag (else md5), with the size; a local file's size and
    modification time (ns). None when the entry says neither (nothing to compare: never trusted)."""
    size = info.get("size")
    if size is None:
        return None
    for k in ("VersionId", "ETag", "etag", "md5"):
        v = info.get(k)
        if v and str(v) != "null":
            return f"{k.lower()}:{str(v).strip(chr(34))};size:{int(size)}"
    when = info.get("LastModified") or info.get("mtime") or info.get("created")
    if when is None:
        return None
    if isinstance(when, float):  # local: mtime (seconds, float) as integer ns
        when = round(when * 1e9)
    return f"mtime:{when};size:{int(size)}"


def relative_name(shard_uri: str, source: str) -> str:
    """The shard's path relative to the input root (its basename for named shards: no root folder)."""
    path = filesystem(shard_uri)[1]
    if names_shards(source):
        return posixpath.basename(path)
    root = filesystem(source.rstrip("/") + "/")[1].rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else posixpath.basename(path)


def shard_id(shard_uri: str, source: str) -> str:
    """Stable id of a shard: its path relative to the input root without `.tar`, `/` → `__`.
    Output files are named by it, so a retry overwrites instead of duplicating."""
    rel = relative_name(shard_uri, source)
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


def list_names(uri: str, suffix: str = "") -> list[str]:
    """The names (not paths) in the folder `uri` ending with `suffix`, sorted; [] when there is no folder."""
    fs, path = filesystem(uri)
    # never from a cached listing: markers and Parquet are written by other processes (the writer actors), and
    # s3fs keeps a folder's listing from the first look, e.g. the resume check at the start of a run
    fs.invalidate_cache(path)
    try:
        if not fs.exists(path):
            return []
        return sorted(
            posixpath.basename(p.rstrip("/"))
            for p in fs.ls(path, detail=False)
            if p.rstrip("/").endswith(suffix)
        )
    except FileNotFoundError:
        return []


def staging_path(uri: str) -> Path:
    """THE private local file `uri`'s content is written to before `publish` makes it visible: a hidden name
    in a local target's own folder (created if needed; the rename is atomic), a temp file for a remote one."""
    if is_remote(uri):
        fd, name = tempfile.mkstemp(prefix="genscan-", suffix=".tmp")
        os.close(fd)
        return Path(name)
    target = Path(uri.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def publish(staged: Path, uri: str) -> None:
    """Make the complete file `staged` (`staging_path`) the object at `uri`, never seen half-written: a rename
    over a local target, one upload to a remote one. `staged` is gone afterwards, also when this fails."""
    try:
        if is_remote(uri):
            fs, path = filesystem(uri)
            fs.put_file(str(staged), path)
        else:
            os.replace(staged, uri.removeprefix("file://"))
    finally:
        staged.unlink(missing_ok=True)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Readers never see a half-written file: local files are staged and published (`staging_path`); an S3
    PUT is atomic by itself."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    staged = staging_path(uri)
    staged.write_bytes(data)
    publish(staged, uri)


def read_many(uris: Sequence[str], chunk: int = 2048) -> Iterator[tuple[str, bytes | None]]:
    """(uri, bytes) for each of `uris` (None where missing), read `chunk` at a time as ONE batched request per
    chunk: s3fs fetches a list of paths concurrently (fsspec's async `cat`), a local filesystem reads them in
    turn. All of `uris` on one filesystem."""
    if not uris:
        return
    fs = filesystem(uris[0])[0]
    for i in range(0, len(uris), chunk):
        part = list(uris[i : i + chunk])
        paths = [filesystem(u)[1] for u in part]
        got = fs.cat(paths, on_error="omit") if len(paths) > 1 else _cat_one(fs, paths[0])
        for uri, path in zip(part, paths, strict=True):
            yield uri, got.get(path)


def _cat_one(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, bytes]:
    try:
        return {path: fs.cat_file(path)}
    except FileNotFoundError:
        return {}


def copy_object(src: str, dst: str) -> None:
    """Copy one stored object; readers never see a partial `dst`. On one S3 store it is a server-side copy
    (s3fs `copy`: CopyObject, no bytes through this process); locally a staged copy (`staging_path`); a local
    file to a store one upload streamed from the file."""
    fs, spath = filesystem(src)
    dfs, dpath = filesystem(dst)
    if is_remote(src) and is_remote(dst) and type(fs) is type(dfs):
        fs.copy(spath, dpath)
        return
    if not is_remote(src) and not is_remote(dst):
        staged = staging_path(dst)
        try:
            shutil.copyfile(spath, staged)
            publish(staged, dst)
        finally:
            staged.unlink(missing_ok=True)  # a failed copy leaves no temp file behind
        return
    if not is_remote(src):
        dfs.put_file(spath, dpath)  # streamed from the file, one PUT (atomic by itself)
        return
    write_bytes_atomic(dst, read_bytes(src))


def stored_size(uri: str) -> int | None:
    """The stored object's size (a fresh request, never a cached listing); None when it does not exist."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


def cache_dir() -> Path:
    return Path(os.environ.get("GENSCAN_CACHE", Path.home() / ".cache" / "genscan"))


class CacheError(OSError):
    """A download that does not match what it claims to be (after one re-fetch)."""


def _remote_files(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict]:
    """relative name -> object info, for a folder (recursive) or a single object ("" = the object itself)."""
    if fs.isdir(path):
        found = fs.find(path, detail=True)
        return {
            posixpath.relpath(p, path): info for p, info in found.items() if info.get("type") != "directory"
        }
    return {"": fs.info(path)}


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _download(fs: fsspec.AbstractFileSystem, path: str, files: dict[str, dict], dest: Path) -> None:
    if "" in files:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(dest))
        return
    for rel in sorted(files):
        local = dest / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(posixpath.join(path, rel), str(local))


def _sizes_match(local: Path, files: dict[str, dict]) -> bool:
    for rel, info in files.items():
        p = local if rel == "" else local / rel
        if not p.is_file() or (info.get("size") is not None and p.stat().st_size != int(info["size"])):
            return False
    return True


def fetch_to_cache(uri: str, verify: Callable[[Path], str | None] | None = None) -> Path:
    """A local path for `uri` (a file or a folder): local paths are returned as they are; remote objects are
    downloaded into the cache (GENSCAN_CACHE, default ~/.cache/genscan) and reused.

    The cache is keyed by CONTENT, not by name: the key includes every object's VersionId / ETag and size, so
    an object overwritten at the same URI is a new cache entry. Downloads land in a private temp folder and
    are renamed into place (two processes on a node never read a half-written file; a killed download leaves
    only a temp folder). Each entry is checked (sizes, and `verify` when given: e.g. a detector's weights
    against the sha256 prefix in its `detector_id`, `pipeline.models.meta.check_detector_files`) when fetched
    and when reused; a mismatch re-fetches once, then raises CacheError."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    fs, path = filesystem(uri)
    check = verify or (lambda local: None)
    problem = None
    for _fetch in range(3):  # reuse or fetch; one re-fetch on a mismatch; a last look at what is in place
        # (listed again after a mismatch: the object may have been replaced meanwhile)
        files = _remote_files(fs, path)
        if not files:
            raise FileNotFoundError(f"nothing under {uri}")
        ident = json.dumps([uri.rstrip("/"), sorted((r, object_identity(i)) for r, i in files.items())])
        entry = cache_dir() / hashlib.sha256(ident.encode()).hexdigest()[:20]
        dest = entry / (posixpath.basename(path.rstrip("/")) or "object")
        if dest.exists():
            if _sizes_match(dest, files) and (problem := check(dest)) is None:
                return dest
            problem = problem or "sizes differ from the stored objects"
            shutil.rmtree(dest, ignore_errors=True) if dest.is_dir() else dest.unlink(missing_ok=True)
        if _fetch == 2:
            break
        tmp = entry / f".tmp-{uuid.uuid4().hex}" / dest.name
        try:
            _download(fs, path, files, tmp)
            if not _sizes_match(tmp, files):
                problem = "download is shorter than the stored objects"
            elif (problem := check(tmp)) is None:
                try:
                    os.rename(tmp, dest)  # atomic; fails if another process put a complete entry first
                except OSError:
                    if not dest.exists():
                        raise
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
    raise CacheError(f"{uri}: cached copy does not match its stored content after a re-fetch: {problem}")


def publish_dir(local: Path, dest: str) -> None:
    """Copy every file of `local` into `dest` (local dir or s3:// prefix), each written atomically."""
    for path in sorted(local.iterdir()):
        if path.is_file():
            copy_object(str(path), join(dest, path.name))
