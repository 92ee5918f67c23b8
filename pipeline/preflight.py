"""Storage preflight for the jobs [ours]: before any work, list every input and write + delete a probe object
under every output, so that a missing bucket, rejected or missing credentials and a wrong endpoint end in ONE
line naming the URI, what failed and what to check, with an exit code per kind (README, "Exit codes").

The probe uses its own S3 client with a short connect timeout and no client retries (botocore and s3fs
together retry a refused connection for 12-26 s otherwise); it retries only what looks transient (503 Slow
Down, 5xx, a reset or dropped connection) a few times with a short backoff, and reports a refused connection,
an unknown host or a connect timeout at once. The jobs' own clients keep their retries for the real work.
Nothing is left behind: local outputs are probed in their nearest existing folder (an output folder that does
not exist yet is not created here), S3 probes are deleted at once.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
from braceexpand import braceexpand

from pipeline import storage
from pipeline.exitcodes import ExitCode, OperatorError

Kind = Literal["not_found", "access_denied", "no_credentials", "cannot_connect", "unusable"]

# One exit code per kind, the same in every job (README, "Exit codes"). 3 is also the filter's and the
# report's "refused: the scan cannot be used" code, so "a named location is missing" keeps the code it had.
EXIT_CODES: dict[str, ExitCode] = {
    "not_found": ExitCode.NOT_FOUND,
    "unusable": ExitCode.NOT_FOUND,
    "access_denied": ExitCode.ACCESS_DENIED,
    "no_credentials": ExitCode.NO_CREDENTIALS,
    "cannot_connect": ExitCode.CANNOT_CONNECT,
}
WHAT: dict[str, str] = {
    "not_found": "not found",
    "unusable": "not usable",
    "access_denied": "access denied",
    "no_credentials": "not accessible without credentials",
    "cannot_connect": "unreachable (cannot connect)",
}

# short and without retries: the probe must answer in seconds, not after botocore + s3fs retry loops
PROBE_S3_OPTIONS: dict = {
    "skip_instance_cache": True,
    "config_kwargs": {
        "connect_timeout": 3,
        "read_timeout": 15,
        "retries": {"total_max_attempts": 1, "mode": "standard"},
    },
}
NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "NotFound", "404"}
DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "403",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccountProblem",
}
MAX_DETAIL = 180
PROBE_ATTEMPTS = 4  # per probe request, for transient failures only
PROBE_BACKOFF_S = 0.25  # 0.25, 0.5, 1.0 s between attempts
TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "500",
    "502",
    "503",
    "504",
}


class StorageError(OperatorError, RuntimeError):
    """A storage location cannot be used; `str()` is the one line an operator sees."""

    label = "storage error"

    def __init__(self, kind: Kind, role: str, uri: str, operation: str, detail: str, hint: str) -> None:
        self.kind = kind
        self.exit_code = EXIT_CODES[kind]
        super().__init__(f"{role} {WHAT[kind]}: {uri} ({operation}: {detail}); check {hint}")


@dataclass(frozen=True)
class Location:
    role: str  # how the operator named it: "input", "output", "scan output", "filter output"
    uri: str
    file: bool = False  # one object (a weights file), read as such: not a folder/prefix to list


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def classify(exc: BaseException) -> Kind:
    """The kind of a storage failure, from botocore's error (anywhere in the chain) or the OS error."""
    from botocore import exceptions as bexc  # comes with s3fs

    for e in _chain(exc):
        if isinstance(e, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            return "no_credentials"
        if isinstance(
            e,
            bexc.EndpointConnectionError
            | bexc.ConnectTimeoutError
            | bexc.ProxyConnectionError
            | bexc.ConnectionClosedError
            | bexc.ReadTimeoutError,
        ):
            return "cannot_connect"
        if isinstance(e, bexc.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in NOT_FOUND_CODES:
                return "not_found"
            if code in DENIED_CODES:
                return "access_denied"
            if _overloaded(e):
                return "cannot_connect"
    for e in _chain(exc):
        if isinstance(e, FileNotFoundError):
            return "not_found"
        if isinstance(e, PermissionError):
            return "access_denied"
        if isinstance(e, ConnectionError | TimeoutError) or type(e).__name__ in (
            "ClientConnectorError",
            "gaierror",
        ):
            return "cannot_connect"
    return "unusable"


def _overloaded(e: Any) -> bool:
    """A ClientError saying the store answers but keeps failing (503 Slow Down, 5xx)."""
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return str(e.response.get("Error", {}).get("Code", "")) in TRANSIENT_CODES or status >= 500


def is_transient(exc: BaseException) -> bool:
    """Worth another probe attempt: a 5xx / Slow Down answer or a connection that was reset or dropped. Not: a
    refused connection, an unknown host or a connect timeout (a wrong endpoint), nor any 4xx."""
    from botocore import exceptions as bexc

    chain = list(_chain(exc))
    if any(isinstance(e, ConnectionRefusedError) or type(e).__name__ == "gaierror" for e in chain):
        return False
    for e in chain:
        if isinstance(e, bexc.ClientError):
            return _overloaded(e)
        if isinstance(e, bexc.ConnectTimeoutError):
            return False
        if isinstance(
            e,
            bexc.ConnectionClosedError
            | bexc.ReadTimeoutError
            | bexc.EndpointConnectionError
            | ConnectionResetError,
        ):
            return True
    return False


def _attempt(fn, *args, **kwargs):  # noqa: ANN001, ANN202 - a thin retry wrapper around one probe request
    for i in range(PROBE_ATTEMPTS - 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            time.sleep(PROBE_BACKOFF_S * 2**i)
    return fn(*args, **kwargs)  # the last attempt: whatever it raises is the answer


def _detail(exc: BaseException) -> str:
    """A short single-line reason: the S3 error code + message, or the OS error."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    text = f"{type(exc).__name__}: {exc}"
    chain = list(_chain(exc))
    client = next((e for e in chain if isinstance(e, ClientError)), None)
    if client is not None:
        err = client.response.get("Error", {})
        text = f"{err.get('Code', '?')}: {err.get('Message', '') or client}"
    elif any(isinstance(e, EndpointConnectionError) for e in chain):
        text = f"could not connect to {_endpoint()}"
    else:
        oserr = next(
            (e for e in chain if isinstance(e, OSError) and e.strerror and isinstance(e.errno, int)), None
        )
        if oserr is not None:
            text = oserr.strerror + (f": {oserr.filename}" if oserr.filename else "")
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _endpoint() -> str:
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "AWS's default endpoint"
    )


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else uri


def _hint(kind: Kind, loc: Location, action: str) -> str:
    remote = storage.is_remote(loc.uri)
    if kind == "not_found":
        if not remote:
            return "the path (and the current directory)"
        return (
            f"the bucket {_bucket(loc.uri)!r} exists and the prefix is spelled right, at "
            f"AWS_ENDPOINT_URL={_endpoint()}"
        )
    if kind == "access_denied":
        if not remote:
            return f"the file permissions of {loc.uri}"
        return (
            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may {action} "
            f"s3://{_bucket(loc.uri)}"
        )
    if kind == "no_credentials":
        return "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set (or AWS_PROFILE, or an instance/pod role)"
    if kind == "cannot_connect":
        return f"AWS_ENDPOINT_URL={_endpoint()} and that the store is reachable from this machine"
    return f"that {loc.uri} is a folder or prefix this job can {action}"


def _fail(
    exc: BaseException, loc: Location, operation: str, action: str, kind: Kind | None = None
) -> StorageError:
    kind = kind or classify(exc)
    return StorageError(kind, loc.role, loc.uri, operation, _detail(exc), _hint(kind, loc, action))


def probe_filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """A filesystem for `uri` that fails fast (S3: short connect timeout, no retries, not the shared
    instance)."""
    fs, path = storage.tuned_filesystem(uri, PROBE_S3_OPTIONS)
    if fsspec.core.split_protocol(uri)[0] in ("s3", "s3a"):
        fs.retries = 1  # s3fs's own retry loop around every call
    return fs, path


def check_readable(loc: Location) -> None:
    """List `loc`: a folder/prefix must exist, be listable and hold something; one object (a `.tar`, or any
    `Location.file`) must exist; a brace pattern's FIRST shard must exist (a missing later shard is the scan's
    shard_error row, not a refusal)."""
    uri = loc.uri
    target = next(iter(braceexpand(uri))) if "{" in uri else uri
    fs, path = probe_filesystem(target)
    single = loc.file or storage.names_shards(uri.rstrip("/"))
    try:
        if single:
            info = _attempt(fs.info, path)
            if info.get("type") == "directory":
                raise IsADirectoryError(f"{target} is a folder, not a {'file' if loc.file else 'shard'}")
            return
        if not storage.is_remote(uri):
            p = Path(path)
            if not p.exists():
                raise FileNotFoundError(2, "No such file or directory", str(p))
            if p.is_dir():
                os.listdir(p)  # PermissionError when the folder cannot be listed
            return
        bucket, _, prefix = path.partition("/")
        prefix = prefix.strip("/")
        resp = _attempt(
            fs.call_s3, "list_objects_v2", Bucket=bucket, Prefix=prefix + "/" if prefix else "", MaxKeys=1
        )
        if not resp.get("KeyCount") and not resp.get("Contents"):
            raise FileNotFoundError(2, "nothing stored under this prefix", uri)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one classified line
        raise _fail(exc, loc, "listing it" if not single else f"reading {target}", "list and read") from exc


def check_writable(loc: Location) -> None:
    """Write and delete a probe object under `loc` (local: in its nearest existing folder; nothing is
    created)."""
    uri = loc.uri
    name = f".genscan-preflight-{uuid.uuid4().hex}"
    if not storage.is_remote(uri):
        p = Path(uri.removeprefix("file://")).absolute()
        while not p.exists() and p != p.parent:
            p = p.parent
        probe = p / name
        try:
            if not p.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(p))
            probe.write_bytes(b"")
            probe.unlink()
        except Exception as exc:  # noqa: BLE001 - the folder exists: a failure is permissions or a read-only store
            kind: Kind = "access_denied" if isinstance(exc, PermissionError) else "unusable"
            raise _fail(exc, loc, f"writing a probe file in {p}", "write", kind) from exc
        return
    fs, path = probe_filesystem(uri)
    probe = f"{path.rstrip('/')}/{name}"
    step = "writing a probe object"
    try:
        _attempt(fs.pipe_file, probe, b"")
        step = "deleting the probe object"
        _attempt(fs.rm_file, probe)
    except Exception as exc:  # noqa: BLE001
        raise _fail(exc, loc, step, "write and delete objects in") from exc


def check_storage(
    reads: Iterable[Location] = (), writes: Iterable[Location] = (), *, local_reads: bool = True
) -> None:
    """Every read location first (in order), then every write location; the first failure raises.
    `local_reads=False`: only the s3:// reads are probed; the job's own reader names a missing local input by
    its flag (the training side's "configuration error: data source not found: …", exit 2)."""
    for loc in reads:
        if local_reads or storage.is_remote(loc.uri):
            check_readable(loc)
    for loc in writes:
        check_writable(loc)
