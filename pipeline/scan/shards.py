"""Read one WebDataset shard (a `.tar`, local or on object storage) into samples, never raising for bad data.

Contract (docs/architecture.md, "Shard reading and decoding"): `read_shard(url)` returns every sample that could
be read, in tar order, and sets `error` when the shard could not be read to its end. A bad shard becomes rows
with a status, and the samples read before the failure are salvaged.

Choices where WebDataset is silent [ours]:
- Grouping: WebDataset's key rule (`webdataset.tariterators.base_plus_ext`): key = directory + basename up to
  the first dot of the last path component, extension = the rest. A sample is a run of consecutive members
  with the same key (WebDataset's `group_by_keys`). A key that appears again after other keys, or a member
  whose extension repeats inside the run, starts a NEW sample with the same key: every occurrence is its own
  sample (its own row), nothing is merged across occurrences and nothing is dropped; the later occurrence
  carries a note saying so.
- Junk: directory entries, `__MACOSX/…` members and AppleDouble `._*` files are skipped, as are members without
  an extension (WebDataset skips those too) and non-regular members (links, devices); each skip is listed in
  `ShardContents.skipped` with its reason, so they are counted but not rows.
- Member names that are not UTF-8 (tarfile decodes them with surrogateescape) become keys with the offending
  bytes written as `\\xNN` (`backslashreplace`): printable, valid UTF-8 for Parquet, and distinct.
- Image member: the first present extension in IMAGE_EXTENSIONS order (by the last dot-suffix, case-insensitive);
  other image members of the same sample are named in the note. A 0-byte image member is kept (b"") so that
  decoding reports it; a member above `max_member_bytes` is not read (image None + note).
- JSON member (`json` extension): parsed; invalid JSON or a non-object JSON value -> `meta=None` + note.
- I/O: objects up to `max_in_memory_bytes` are fetched in ONE request into memory; larger ones are read through
  fsspec's block cache (`cache_type="readahead"`, `block_size`) — never small unbuffered reads (PLATFORM.md:
  ~92 requests/shard, 17x slower). s3fs retries transient errors itself (botocore standard retry mode +
  s3fs's retry loop); on top of that the whole shard read is retried `attempts` times with bounded exponential
  backoff and an overall `deadline_s`, so a flaky store costs bounded time and never hangs.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec

from pipeline.logs import get_logger

log = get_logger("pipeline.scan.shards")

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm")
JSON_EXTENSIONS: tuple[str, ...] = ("json",)

DEFAULT_MAX_IN_MEMORY = 256 * 2**20
DEFAULT_BLOCK_SIZE = 8 * 2**20
DEFAULT_MAX_MEMBER = 256 * 2**20

# s3fs / botocore settings for shard reads: bounded connect/read timeouts and botocore's standard retry mode
# (retries 5xx / throttling / connection errors with jittered backoff); s3fs adds its own retry loop
# (`S3FileSystem.retries`, 5 tries, backoff 0.1 * 1.7**i s) around each call. [ours]
S3_STORAGE_OPTIONS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 10,
        "read_timeout": 30,
        "retries": {"max_attempts": 4, "mode": "standard"},
    },
}

_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


@dataclass
class RawSample:
    """One sample of a shard: its key, the chosen image member and the parsed JSON member."""

    key: str
    image_name: str | None
    image: bytes | None
    meta: dict[str, Any] | None
    note: str | None = None


@dataclass
class ShardContents:
    """What `read_shard` could read. `error` is set when the shard could not be read to its end."""

    url: str
    samples: list[RawSample] = field(default_factory=list)
    error: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason), not samples
    n_bytes: int | None = None  # object size when known
    attempts: int = 0  # whole-shard read attempts made
    read_s: float = 0.0  # wall time spent reading, retries and backoff included


class _TransientReadError(Exception):
    """An I/O failure that is worth retrying the whole shard for."""


def safe_name(name: str) -> str:
    """A tar member name as valid UTF-8: surrogate-escaped raw bytes become `\\xNN` text. [ours]"""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def split_key(name: str) -> tuple[str, str] | None:
    """(key, extension) by WebDataset's rule, or None for a member without an extension. [code: webdataset]"""
    m = _KEY_RE.match(name)
    if m is None:
        return None
    return m.group(1), m.group(2)


def _junk_reason(name: str) -> str | None:
    parts = name.split("/")
    if "__MACOSX" in parts:
        return "macOS resource fork folder (__MACOSX)"
    if parts[-1].startswith("._"):
        return "AppleDouble file (._*)"
    return None


def _last_suffix(ext: str) -> str:
    return ext.rsplit(".", 1)[-1].lower()


class _Grouper:
    """Turns (member name, bytes | None, reason) in tar order into RawSamples by the rules in the module doc."""

    def __init__(self, max_member_bytes: int) -> None:
        self.max_member_bytes = max_member_bytes
        self.samples: list[RawSample] = []
        self.skipped: list[tuple[str, str]] = []
        self._key: str | None = None
        self._members: dict[str, tuple[str, bytes | None]] = {}  # ext -> (name, data)
        self._notes: list[str] = []
        self._seen: dict[str, int] = {}

    def add(self, name: str, data: bytes | None, too_big: int | None = None) -> None:
        split = split_key(name)
        if split is None:
            self.skipped.append((name, "member name has no extension (not part of a WebDataset sample)"))
            return
        key, ext = split
        if key != self._key or ext in self._members:
            self._flush()
            self._key = key
            n = self._seen.get(key, 0)
            if n:
                self._notes.append(f"key {key!r} occurrence {n + 1} in this shard, kept as its own sample")
            self._seen[key] = n + 1
        if too_big is not None:
            self._notes.append(
                f"member {name!r} is {too_big} bytes, above the {self.max_member_bytes}-byte limit; not read"
            )
        self._members[ext] = (name, data)

    def mark_incomplete(self, name: str) -> None:
        """The shard ended inside member `name`: the pending sample (if it is `name`'s) lacks that member."""
        split = split_key(name)
        if split is not None and split[0] == self._key:
            self._notes.append(f"member {name!r} truncated (shard ended inside it); sample may be incomplete")

    def _flush(self) -> None:
        if self._key is None:
            return
        notes = self._notes
        image_name: str | None = None
        image: bytes | None = None
        images = [
            (IMAGE_EXTENSIONS.index(_last_suffix(ext)), name, data)
            for ext, (name, data) in self._members.items()
            if _last_suffix(ext) in IMAGE_EXTENSIONS
        ]
        images.sort(key=lambda t: t[0])
        readable = [(name, data) for _, name, data in images if data is not None]
        if readable:
            image_name, image = readable[0]
            others = [name for _, name, _ in images if name != image_name]
            if others:
                notes.append(f"{len(images)} image members; used {image_name!r}, ignored {others!r}")
        elif not images:
            names = [name for name, _ in self._members.values()]
            notes.append(f"no image member (members: {names!r})")
        meta: dict[str, Any] | None = None
        for ext, (name, data) in self._members.items():
            if _last_suffix(ext) not in JSON_EXTENSIONS or data is None:
                continue
            try:
                value = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                notes.append(f"{name!r} is not valid JSON: {exc}")
                continue
            if isinstance(value, dict):
                meta = value
            else:
                notes.append(f"{name!r} holds a JSON {type(value).__name__}, not an object; ignored")
            break
        self.samples.append(RawSample(self._key, image_name, image, meta, "; ".join(notes) or None))
        self._key, self._members, self._notes = None, {}, []

    def finish(self) -> None:
        self._flush()


def _iter_tar(fileobj: IO[bytes], grouper: _Grouper) -> str | None:
    """Feed every member of the tar in `fileobj` to `grouper`; return an error message instead of raising
    when the archive is not a tar, ends early or has no end-of-archive marker. I/O errors of the underlying
    stream propagate (the caller retries them)."""
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r:", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except tarfile.ReadError as exc:
        return f"not a tar archive: {exc}" if str(exc) else "not a tar archive"
    except (EOFError, ValueError, UnicodeError) as exc:
        return f"not a tar archive: {type(exc).__name__}: {exc}"
    n_members = 0
    last = "the start"
    with tf:
        while True:
            try:
                member = tf.next()
            except tarfile.TarError as exc:
                return f"tar ended early after {n_members} members (last {last}): {exc}"
            except (EOFError, ValueError, UnicodeError) as exc:
                return f"tar ended early after {n_members} members (last {last}): {type(exc).__name__}: {exc}"
            if member is None:
                break
            n_members += 1
            name = safe_name(member.name)
            if member.isdir():
                grouper.skipped.append((name, "directory"))
                continue
            reason = _junk_reason(name)
            if reason is not None:
                grouper.skipped.append((name, reason))
                continue
            if not member.isreg():
                grouper.skipped.append((name, f"not a regular file (tar type {member.type!r})"))
                continue
            if member.size > grouper.max_member_bytes:
                grouper.add(name, None, too_big=member.size)
                last = repr(name)
                continue
            extracted = tf.extractfile(member)
            try:
                data = extracted.read() if extracted is not None else b""
            except tarfile.TarError as exc:
                data, detail = b"", str(exc)
            else:
                detail = ""
            if detail or len(data) != member.size:
                grouper.mark_incomplete(name)
                return (
                    f"tar truncated inside member {name!r} ({detail or f'{len(data)} of {member.size} bytes'}) "
                    f"after {n_members - 1} complete members"
                )
            grouper.add(name, data)
            last = repr(name)
        # tarfile ends silently at EOF, at a truncated header and at garbage after a member: check that an
        # end-of-archive block really follows the last member (POSIX writes two zero blocks; one is accepted).
        fileobj.seek(tf.offset)
        tail = fileobj.read(tarfile.BLOCKSIZE)
    if not tail:
        return f"tar has no end-of-archive marker after {n_members} members (last {last}): truncated?"
    if tail.count(0) != len(tail) or len(tail) < tarfile.BLOCKSIZE:
        return f"unreadable tar header after {n_members} members (last {last}): truncated or corrupt"
    return None


def _open_fs(shard_url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    protocol = fsspec.core.split_protocol(shard_url)[0]
    if protocol in ("s3", "s3a"):
        options = dict(S3_STORAGE_OPTIONS)
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            # part of fsspec's instance-cache key: a changed endpoint never reuses a client of the old one
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return fsspec.core.url_to_fs(shard_url, **options)
    return fsspec.core.url_to_fs(shard_url)


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    return "NoSuchKey" in text or "NoSuchBucket" in text or "Not Found" in text


def _is_permanent(exc: BaseException) -> bool:
    return _is_missing(exc) or isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError)


def _read_once(
    shard_url: str, grouper: _Grouper, *, max_in_memory_bytes: int, block_size: int, result: ShardContents
) -> str | None:
    """One attempt: fills `grouper`, returns the data error (or None); raises _TransientReadError for I/O
    failures worth a retry and the original exception for permanent ones (missing object, permissions)."""
    fs, path = _open_fs(shard_url)
    try:
        info = fs.info(path)
    except Exception as exc:
        if _is_permanent(exc):
            raise
        raise _TransientReadError(f"stat failed: {type(exc).__name__}: {exc}") from exc
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{shard_url} is a directory")
    size = info.get("size")
    result.n_bytes = int(size) if size is not None else None
    if result.n_bytes == 0:
        return "empty shard (0 bytes)"
    try:
        if result.n_bytes is not None and result.n_bytes <= max_in_memory_bytes:
            data = fs.cat_file(path)
            if len(data) != result.n_bytes:
                raise _TransientReadError(f"short read: {len(data)} of {result.n_bytes} bytes")
            return _iter_tar(io.BytesIO(data), grouper)
        with fs.open(path, "rb", block_size=block_size, cache_type="readahead") as f:
            return _iter_tar(f, grouper)
    except _TransientReadError:
        raise
    except Exception as exc:
        if _is_permanent(exc):
            raise
        raise _TransientReadError(f"read failed: {type(exc).__name__}: {exc}") from exc


def read_shard(
    shard_url: str,
    *,
    max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_member_bytes: int = DEFAULT_MAX_MEMBER,
    attempts: int = 3,
    backoff_s: float = 0.5,
    deadline_s: float = 300.0,
) -> ShardContents:
    """Every sample of the WebDataset shard at `shard_url` (local path, file:// or s3://) in tar order.

    Never raises for bad data or storage failures: `error` says why the shard could not be read to its end,
    and the samples read before that are kept. Transient failures are retried (whole shard, at most
    `attempts` times, backoff `backoff_s * 2**i`, no new attempt after `deadline_s`). [ours]
    """
    start = time.monotonic()
    result = ShardContents(url=shard_url)
    best: _Grouper | None = None
    error: str | None = None
    for attempt in range(attempts):
        result.attempts = attempt + 1
        grouper = _Grouper(max_member_bytes)
        try:
            error = _read_once(
                shard_url,
                grouper,
                max_in_memory_bytes=max_in_memory_bytes,
                block_size=block_size,
                result=result,
            )
            grouper.finish()
            best = grouper
            break
        except _TransientReadError as exc:
            error = f"read failed after {attempt + 1} attempt(s): {exc}"
            grouper.finish()
            if best is None or len(grouper.samples) > len(best.samples):
                best = grouper  # salvage the longest partial read if every attempt fails
        except Exception as exc:  # permanent: missing object, permission, a directory, a bad URL
            error = (
                f"shard not found: {shard_url}"
                if _is_missing(exc)
                else (f"cannot read shard: {type(exc).__name__}: {exc}")
            )
            break
        pause = backoff_s * 2**attempt
        if attempt + 1 >= attempts or time.monotonic() - start + pause > deadline_s:
            break
        log.warning("shard_read_retry", shard_url=shard_url, attempt=attempt + 1, error=error, pause_s=pause)
        time.sleep(pause)
    if best is not None:
        result.samples, result.skipped = best.samples, best.skipped
    result.error = error
    result.read_s = time.monotonic() - start
    if result.error:
        log.warning(
            "shard_read_error",
            shard_url=shard_url,
            error=result.error,
            salvaged=len(result.samples),
            attempts=result.attempts,
        )
    return result
