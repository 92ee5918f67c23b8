"""structlog JSON logging, configured once per process (driver, Ray worker, test).

JSON lines go to stderr unless a job sends them to its run log (`RunLog`): the jobs keep the console for one
progress line and write every driver log line, plain JSON (no Ray prefix), to a file published beside the
run's outputs (`_run/<date>/log.jsonl` for the scan, `_run/log.jsonl` for the filter, `<out>/log.jsonl` for
training).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
from typing import IO

import structlog


class _Sink:
    """The file structlog writes to: stderr, or a job's run log. A proxy, so loggers bound at import time (and
    cached) follow a later switch."""

    def __init__(self) -> None:
        self.target: IO[str] | None = None  # None: the current sys.stderr
        self.tee: IO[str] | None = None  # also here (a verbose job: the run log and the console)

    def write(self, text: str) -> int:
        if self.tee is not None:
            self.tee.write(text)
        return (self.target or sys.stderr).write(text)

    def flush(self) -> None:
        if self.tee is not None:
            self.tee.flush()
        (self.target or sys.stderr).flush()


_SINK = _Sink()


@functools.cache  # once per process: later calls return at once
def configure() -> None:
    """JSON lines on stderr (or the run log) at level `GENSCAN_LOG_LEVEL` (default INFO). Safe to call
    repeatedly."""
    lvl = getattr(logging, os.environ.get("GENSCAN_LOG_LEVEL", "INFO").upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=_SINK),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    configure()
    return structlog.get_logger(name).bind(logger=name, **bound)


class RunLog:
    """This process's JSON log lines go to a local spool file while the job runs; `publish()` copies it to
    `destination` (a local path or s3:// URI, set once the run knows where its outputs go). The spool is kept
    when publishing fails (its path is in the job's last line)."""

    _current: RunLog | None = None

    def __init__(self, tee: IO[str] | None = None) -> None:
        self.tee = tee
        fd, self.path = tempfile.mkstemp(prefix="genscan-", suffix=".log.jsonl")
        self._file = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self.destination: str | None = None
        self.attached: dict[str, str] = {}  # file name beside the log -> local file published with it
        self._done = False  # published or discarded

    def attach(self, path: str | None, name: str) -> None:
        """Publish the local file `path` as `name` beside the log (e.g. the driver's stderr)."""
        if path:
            self.attached[name] = path

    def __enter__(self) -> RunLog:
        configure()
        _SINK.target, _SINK.tee = self._file, self.tee
        RunLog._current = self
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:  # not published nor discarded by the job: publish where known, else remove
            if self.destination is not None:
                self.publish()
            else:
                self.discard()
        _SINK.target = _SINK.tee = None
        RunLog._current = None
        self._file.close()

    @classmethod
    def set_destination(cls, uri: str) -> None:
        """Where the current run log (if any) is published: called by the run once its paths are known."""
        if cls._current is not None:
            cls._current.destination = uri

    def discard(self) -> None:
        """Nothing worth keeping happened (e.g. the run never started): remove the spool (and attached
        files)."""
        self.destination = None
        self._remove_local()

    def publish(self) -> str | None:
        """Copy the spool to `destination`; returns where the log is now (the destination, else the spool)."""
        self._file.flush()
        if self.destination is None:
            return self.path
        from pipeline import storage

        try:
            storage.copy_object(self.path, self.destination)
            folder = storage.parent(self.destination)
            for name, path in self.attached.items():
                storage.copy_object(path, storage.join(folder, name))
        except OSError:
            return self.path
        self._remove_local()  # published: the local copies are no longer needed
        return self.destination

    def _remove_local(self) -> None:
        self._done = True
        for path in [self.path, *self.attached.values()]:
            with contextlib.suppress(OSError):
                os.remove(path)
