"""The jobs' console [ours]: a few status lines and ONE progress line on the driver's stderr.

Quiet (the default): the job's JSON logs go to its run log (`pipeline.logs.RunLog`), and whatever else writes
to this process's stderr file descriptor (Ray's C++ core worker, Ray's and Ray Data's Python loggers,
warnings) goes to a `driver-stderr.log` kept beside the spool: the console shows only what the console writes.
Verbose (`--verbose`, or GENSCAN_VERBOSE=1): nothing is redirected, Ray's progress bars and worker log
forwarding stay on (`pipeline.engine.cluster` reads `verbose()`).

    with Console(verbose=args.verbose) as console:
        console.status("starting Ray, loading the detector…")
        bar = console.shards("scan")          # on_shard for pipeline.runner.run_shards
        ...
        console.line("scan succeeded: …")
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import IO, Any

from pipeline.output import ERROR_STATUSES

VERBOSE_ENV = "GENSCAN_VERBOSE"


def verbose() -> bool:
    """Whether this job runs verbose (set by the job's --verbose; read by the Ray connection)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def submitted_job() -> bool:
    """Whether this driver runs under `ray job submit` (its output is then the job's log, not a terminal)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def shard_errors(summary: dict[str, Any]) -> int:
    """Error rows in a shard summary: the scan's counts by status, or the filter's errors_by_status."""
    counts = summary.get("counts") or summary.get("errors_by_status") or {}
    return sum(int(v) for k, v in counts.items() if k in ERROR_STATUSES)


def progress_bar(stream: IO[str], desc: str, unit: str, total: int | None, initial: int) -> Any:
    """THE progress line: one tqdm bar on `stream`, redrawn at most twice a second on a terminal; elsewhere (a
    log file, `ray job submit`'s output) plain ASCII and at most every 10 s, so logs stay short."""
    from tqdm import tqdm

    tty = stream.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=stream,
        ascii=not tty,
        dynamic_ncols=True,
        leave=True,
        mininterval=0.5 if tty else 10.0,
    )


class _Bar:
    """A progress line: its tqdm bar exists from the first result on."""

    bar: Any = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ShardProgress(_Bar):
    """`on_shard(shard, summary, progress)` for `pipeline.runner.run_shards`: one tqdm line with shards done /
    total, images/s, errors so far and the ETA (tqdm's, from the shard rate)."""

    def __init__(self, stream: IO[str], desc: str, images_key: str) -> None:
        self.stream, self.desc, self.images_key = stream, desc, images_key
        self.errors = 0
        self.rated = 0  # images after the first result (the rate's numerator)
        self.carried = 0  # shards carried forward from an earlier night (incremental scan): not in the rate
        self.t0 = time.perf_counter()

    def __call__(self, shard: str, summary: dict[str, Any], progress: Any) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.stream, self.desc, "shard", progress.total, progress.skipped)
            self.t0 = time.perf_counter()  # rates from the first result on (not Ray's start-up)
            self.rated = -int(summary.get(self.images_key, 0))
        n = int(summary.get(self.images_key, 0))
        self.errors += shard_errors(summary)
        carried_now = bool(summary.get("carried_from"))
        self.carried += carried_now
        if not carried_now or self.rated < 0:  # a carried first result does not start the scan rate
            self.rated += n
        elapsed = time.perf_counter() - self.t0
        rate = f"{self.rated / elapsed:.1f} img/s" if elapsed > 0 and self.rated > 0 else "… img/s"
        carried = f", {self.carried} carried" if self.carried else ""
        self.bar.set_postfix_str(f"{rate}, {self.errors} errors{carried}", refresh=False)
        self.bar.update(1)


class EpochProgress(_Bar):
    """`on_epoch(done)` for training: one tqdm line with epochs done / total, images/s (training images of the
    epochs finished since the first call) and the ETA (tqdm's, from the epoch rate)."""

    def __init__(self, stream: IO[str], desc: str, total: int, images_per_epoch: int) -> None:
        self.stream, self.desc, self.total, self.images_per_epoch = stream, desc, total, images_per_epoch
        self.first = 0
        self.t0 = time.perf_counter()

    def __call__(self, done: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.stream, self.desc, "epoch", self.total, done)
            self.first, self.t0 = done, time.perf_counter()
        if done <= self.bar.n:
            return
        elapsed = time.perf_counter() - self.t0
        images = (done - self.first) * self.images_per_epoch
        self.bar.set_postfix_str(f"{images / elapsed:.1f} img/s" if elapsed > 0 else "… img/s", refresh=False)
        self.bar.update(done - self.bar.n)


class Console:
    """The console of one job run (see the module doc)."""

    def __init__(self, verbose: bool = False, prefix: str = "genscan") -> None:
        self.verbose = verbose
        self.prefix = prefix
        self.stream: IO[str] = sys.stderr
        self.stderr_log: str | None = None
        self._saved_fd: int | None = None
        self._bars: list[_Bar] = []

    def __enter__(self) -> Console:
        if self.verbose:
            os.environ[VERBOSE_ENV] = "1"
            return self
        try:  # under a test's capture sys.stderr is not fd 2: write to it and leave the descriptors alone
            own_fd = sys.stderr.fileno() == 2
        except (AttributeError, ValueError, OSError):
            own_fd = False
        if not own_fd:  # self.stream stays sys.stderr
            return self
        sys.stderr.flush()
        fd, self.stderr_log = tempfile.mkstemp(prefix="genscan-", suffix=".driver-stderr.log")
        self._saved_fd = os.dup(2)
        os.dup2(fd, 2)  # C++ and Python writes to fd 2 land in the file
        os.close(fd)
        self.stream = os.fdopen(os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        return self

    def __exit__(self, *exc: object) -> None:
        self.end_progress()
        if self._saved_fd is not None:
            sys.stderr.flush()
            os.dup2(self._saved_fd, 2)
            os.close(self._saved_fd)
            self._saved_fd = None
            self.stream.close()
            self.stream = sys.stderr

    def echo(self) -> IO[str] | None:
        """Where the JSON log lines are echoed besides the run log: the console when verbose, and under
        `ray job submit` (`ray job logs` then keep the record); else nowhere."""
        return self.stream if self.verbose or submitted_job() else None

    def status(self, text: str) -> None:
        """A short line saying what is happening (before the progress line exists)."""
        self.line(f"{self.prefix}: {text}")

    def line(self, text: str) -> None:
        self.stream.write(text.rstrip("\n") + "\n")
        self.stream.flush()

    def shards(self, desc: str, images_key: str = "rows") -> ShardProgress:
        bar = ShardProgress(self.stream, desc, images_key)
        self._bars.append(bar)
        return bar

    def epochs(self, desc: str, total: int, images_per_epoch: int) -> EpochProgress:
        bar = EpochProgress(self.stream, desc, total, images_per_epoch)
        self._bars.append(bar)
        return bar

    def end_progress(self) -> None:
        for bar in self._bars:
            bar.close()
