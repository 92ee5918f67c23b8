"""The sharded-run core shared by the scan and the filter [ours; datatrove's executor, img2dataset's
distributor]: skip the shards that have a completion marker, process the others through an executor passed in
(local or Ray: chosen by the entry point), commit each shard's output with its marker LAST, and keep run.json.

The work itself (read, decide, write) is the caller's per-shard function or streaming plan; this module only
knows shard ids, summaries and markers, and imports no Ray.

    runner.commit_shard([(parquet_uri, data)], marker_uri, stats)          # inside the worker that made them
    results = runner.run_shards(ids, done=markers, execute=..., on_shard=progress, check=error_budget)

`execute(todo)` yields `(shard_id, summary)` as shards complete, in any order (a summary = the shard's marker
content). `on_shard(shard_id, summary, progress)` is called for each (a progress line); `check(progress)` is a
run-level check called after each shard that may raise to stop the run (an error budget).

The error budget (`ErrorBudget`) is THE run-level verdict of both jobs: each job says how to count its shards
(`ErrorTally`), the budget decides and words the one-line reason. `budget.guard(...)` stops a run early once
the shard budget is already broken whatever the remaining shards do; `budget.check(tally)` is the final
verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import Field

from pipeline.exitcodes import ExitCode, OperatorError
from pipeline.output import write_json
from pipeline.settings import StrictModel
from pipeline.storage import write_bytes_atomic

T = TypeVar("T")
R = TypeVar("R")

# THE executor contract of the sharded jobs: `map_fn(fn, items)` applies `fn` to every item and yields
# `(index, result)` pairs AS THEY COMPLETE, in any order, so progress lines and the error budget act during
# the run; closing the iterator early (a run stopped by its budget) cancels what has not run yet. The
# in-process executor is `local_map`; the Ray one is `pipeline.engine.filter.ray_map`.
MapFn = Callable[[Callable[[T], R], Sequence[T]], Iterator[tuple[int, R]]]


def local_map(fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
    """The in-process executor: `fn(x)` for each item, one at a time, each yielded as soon as it is done."""
    for i, x in enumerate(items):
        yield i, fn(x)


def release(results: object) -> None:
    """Close an executor's result iterator (one with a `close()`, e.g. a generator), so that a run stopped
    early releases the executor's resources (tasks not finished are cancelled) now, not when the traceback
    is freed."""
    close = getattr(results, "close", None)
    if close is not None:
        close()


def map_ordered(
    map_fn: MapFn, fn: Callable[[T], R], items: Sequence[T], on_result: Callable[[R], None]
) -> list[R]:
    """Every result of `map_fn(fn, items)` in input order; `on_result` sees each as it completes (and may
    raise to stop the run: the executor is closed, so what has not started is cancelled)."""
    got: dict[int, R] = {}
    results = map_fn(fn, items)
    try:
        for i, result in results:
            got[i] = result
            on_result(result)
    finally:
        release(results)
    if len(got) < len(items):
        raise IncompleteRun(f"{len(items) - len(got)} of {len(items)} item(s) never completed")
    return [got[i] for i in range(len(items))]


class IncompleteRun(RuntimeError):
    """Some shards of the run never completed (or arrived that were not asked for)."""


class ErrorBudgetExceeded(OperatorError, RuntimeError):
    """Too many shards or samples failed: the run is marked failed (exit 1); what was written stays valid."""

    exit_code = ExitCode.RUN_FAILED

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class ErrorBudgetConfig(StrictModel):
    """The error-budget settings of every sharded job (scan, filter, re-score): ONE declaration of the two
    fields, their bounds, defaults and help (the jobs' flags are generated from it)."""

    # The defaults fail a run only on systemic breakage (more than half the shards unreadable: a wrong prefix,
    # a permission, a truncated sync; a quarter of the images undecodable: a wrong format or a broken writer),
    # which the odd corrupt object never trips. Tighten per corpus with the flags.
    max_shard_error_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="fail the run (exit 1) when more than this share of its shards failed as a whole "
        "(unreadable; for the filter and the re-score: the scan could not read them / no usable features; "
        "1: never)",
    )
    max_sample_error_rate: float = Field(
        0.25,
        ge=0,
        le=1,
        description="fail the run (exit 1) when more than this share of its samples has an error status "
        "(decode_error, no_image, too_large; 1: never)",
    )

    def error_budget(self) -> ErrorBudget:
        return ErrorBudget(self.max_shard_error_rate, self.max_sample_error_rate)


@dataclass
class ErrorTally:
    """Errors of (part of) a run: shards that could not be processed as a whole, samples with an error
    status."""

    shards: int = 0
    failed_shards: int = 0
    samples: int = 0
    failed_samples: int = 0

    def add(self, other: ErrorTally) -> None:
        """In place (a running total: constant work per shard)."""
        for k, v in vars(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass(frozen=True)
class ErrorBudget:
    """The run fails when the share of failed shards or of failed samples is ABOVE its limit (1.0
    disables)."""

    max_shard_error_rate: float
    max_sample_error_rate: float

    def record(self, tally: ErrorTally) -> dict[str, Any]:
        """The budget, the counts and the verdict (for run.json)."""
        shard_rate = tally.failed_shards / tally.shards if tally.shards else 0.0
        sample_rate = tally.failed_samples / tally.samples if tally.samples else 0.0
        return {
            "max_shard_error_rate": self.max_shard_error_rate,
            "max_sample_error_rate": self.max_sample_error_rate,
            "shards": tally.shards,
            "failed_shards": tally.failed_shards,
            "shard_error_rate": round(shard_rate, 6),
            "samples": tally.samples,
            "failed_samples": tally.failed_samples,
            "sample_error_rate": round(sample_rate, 6),
            "exceeded": shard_rate > self.max_shard_error_rate or sample_rate > self.max_sample_error_rate,
        }

    def check(self, tally: ErrorTally, *, so_far: bool = False) -> dict[str, Any]:
        """The final verdict: returns the record, raises ErrorBudgetExceeded (one line with the counts)."""
        rec = self.record(tally)
        if not rec["exceeded"]:
            return rec
        broke = []
        for unit in ("shard", "sample"):
            rate, limit = rec[f"{unit}_error_rate"], getattr(self, f"max_{unit}_error_rate")
            if rate > limit:
                broke.append(
                    f"{rec[f'failed_{unit}s']} of {rec[f'{unit}s']} {unit}s failed ({rate:.1%} > "
                    f"--max-{unit}-error-rate {limit:g})"
                )
        when = " (run stopped early)" if so_far else ""
        raise ErrorBudgetExceeded("error budget exceeded" + when + ": " + "; ".join(broke), rec)

    def guard(
        self, total_shards: int, prior: ErrorTally, tally_of: Callable[[dict[str, Any]], ErrorTally]
    ) -> Callable[[Progress], None]:
        """A `run_shards` check that stops the run as soon as the failed shards (earlier attempts' `prior`
        plus this attempt's) are more than the budget allows of ALL `total_shards`: the end can no longer
        pass. It keeps a running tally: each call adds the newest shard (`progress.last`) once, whatever the
        number of shards already done."""
        seen = replace(prior)  # a copy: the running total starts at the earlier attempts' errors
        counted = 0  # progress.done when the tally was last updated

        def check(progress: Progress) -> None:
            nonlocal counted
            if progress.last is not None and progress.done > counted:
                seen.add(tally_of(progress.last[1]))
                counted = progress.done
            self.stop_if_hopeless(seen, total_shards)

        return check

    def stop_if_hopeless(self, seen: ErrorTally, total_shards: int) -> None:
        """Raise ErrorBudgetExceeded ("run stopped early") once the failed shards `seen` so far are more than
        the budget allows of ALL `total_shards`: whatever the remaining shards do, the end cannot pass."""
        if seen.failed_shards > self.max_shard_error_rate * total_shards:
            self.check(
                ErrorTally(total_shards, seen.failed_shards, seen.samples, seen.failed_samples), so_far=True
            )


def commit_shard(outputs: Sequence[tuple[str, bytes]], marker_uri: str, summary: dict[str, Any]) -> None:
    """Write a shard's outputs (each atomically), then its marker LAST: a marker implies complete outputs, and
    a retried shard overwrites the same deterministic names."""
    for uri, data in outputs:
        write_bytes_atomic(uri, data)
    write_json(marker_uri, summary)


@dataclass
class Progress:
    """Where a run stands (passed to the progress callback and the run-level check). Per shard it keeps only
    the id (`completed`); the summaries themselves only when the caller asked for them
    (`run_shards(keep=True)`): a run's checks keep running totals (`ErrorBudget.guard`) from `last`, so the
    driver's memory and work per shard stay constant."""

    total: int  # shards in the run
    skipped: int  # shards already complete (marker) before this attempt
    todo: int  # shards this attempt processes
    done: int = 0  # shards completed by this attempt
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard id -> summary (keep=True only)
    completed: set[str] = field(default_factory=set)  # shard ids completed by this attempt
    last: tuple[str, dict[str, Any]] | None = None  # the newest (shard id, summary)


def run_shards(
    shards: Sequence[str],
    *,
    done: set[str],
    execute: Callable[[list[str]], Iterable[tuple[str, dict[str, Any]]]],
    on_shard: Callable[[str, dict[str, Any], Progress], None] | None = None,
    check: Callable[[Progress], None] | None = None,
    keep: bool = True,
) -> Progress:
    """Process every shard of `shards` not in `done` through `execute`; returns the progress (with every
    summary of this attempt when `keep`; a caller that keeps its own running totals passes keep=False). Raises
    IncompleteRun when a shard never completed or an unexpected one arrived; a duplicate summary (a retried
    shard) is ignored."""
    todo = [s for s in shards if s not in done]
    progress = Progress(total=len(shards), skipped=len(shards) - len(todo), todo=len(todo))
    wanted = set(todo)
    if todo:
        results = iter(execute(todo))
        try:
            for shard, summary in results:
                if shard not in wanted:
                    raise IncompleteRun(f"received the result of an unexpected shard {shard!r}")
                if shard in progress.completed:
                    continue
                progress.completed.add(shard)
                if keep:
                    progress.summaries[shard] = summary
                progress.last = (shard, summary)
                progress.done += 1
                if on_shard is not None:
                    on_shard(shard, summary, progress)
                if check is not None:
                    check(progress)
        finally:
            release(results)
    missing = [s for s in todo if s not in progress.completed]
    if missing:
        raise IncompleteRun(f"{len(missing)} shard(s) never completed: {missing[:5]}")
    return progress


def map_shards(
    map_fn: MapFn, fn: Callable[[T], R], items: dict[str, T], summary: Callable[[R], dict[str, Any]]
) -> Callable[[list[str]], Iterator[tuple[str, dict[str, Any]]]]:
    """An `execute` for `run_shards` from a per-shard function and an executor: `fn(items[id])` for each
    id."""

    def execute(todo: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        results = map_fn(fn, [items[s] for s in todo])
        try:
            for i, result in results:
                yield todo[i], summary(result)
        finally:  # a run stopped early cancels the shards not yet started
            release(results)

    return execute


class RunFile:
    """A run.json kept up to date: `status` running -> succeeded | failed, plus whatever the run records."""

    def __init__(self, uri: str, record: dict[str, Any]) -> None:
        self.uri = uri
        self.record = record

    def write(self, **update: Any) -> None:
        self.record.update(update)
        write_json(self.uri, self.record)
