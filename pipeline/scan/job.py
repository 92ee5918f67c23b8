"""The scan job's driver logic [ours]: plan the run, list shards, hand the shards without a marker to the
executor (which reads, scores and writes each shard where its rows are: Parquet, then marker), follow the
per-shard summaries, keep provenance and the run summary (`pipeline.runner`: the sharded-run core).

No Ray here: the entry point passes the executor in (jobs/scan_bucket.py: `pipeline.engine.scan`).
"""

from __future__ import annotations

import _thread
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.logs import RunLog, get_logger
from pipeline.output import (
    SAMPLE_ERROR_STATUSES,
    SHARD_ERROR,
    RunPaths,
    completed_shards,
    now_iso,
    read_json,
    write_json,
)
from pipeline.runner import (
    ErrorBudgetExceeded,
    ErrorTally,
    IncompleteRun,
    Progress,
    RunFile,
    run_shards,
)
from pipeline.scan.carry import CarryPlan, find_source, plan_carry, scoring_record
from pipeline.scan.completion import RunPlan, Totals, aggregate, plan_run, versions
from pipeline.scan.config import ScanConfig
from pipeline.scan.detectors import run_detectors
from pipeline.scan.execute import ScanExecutor, ScanWork, local_executor
from pipeline.scan.rows import RunContext
from pipeline.settings import ConfigError
from pipeline.storage import list_shard_objects, shard_id

log = get_logger("pipeline.scan.job")


class ScanFailed(RuntimeError):
    """A systemic failure: the run is marked failed and the job exits non-zero."""


def run_errors(totals: dict[str, Any], n_shards: int = 1) -> ErrorTally:
    """The errors of `n_shards` shards from their summed markers (`aggregate`'s totals), or of one shard from
    its summary (= marker): a shard_error row (one per failed shard) means the shard could not be read to its
    end; every other non-ok status is a failed sample."""
    counts = totals.get("counts", {})
    return ErrorTally(
        shards=n_shards,
        failed_shards=int(counts.get(SHARD_ERROR, 0)),
        samples=int(totals.get("samples", 0)),
        failed_samples=sum(int(counts.get(s, 0)) for s in SAMPLE_ERROR_STATUSES),
    )


class _Watchdog:
    """Interrupts the main thread when no shard completes for `timeout_s` (every wait is bounded)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.last = time.monotonic()
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scan-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def progress(self) -> None:
        self.last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            if time.monotonic() - self.last > self.timeout_s:
                self.fired = True
                log.error("scan_stalled", seconds=self.timeout_s)
                _thread.interrupt_main()
                return


def list_input_objects(cfg: ScanConfig) -> list[tuple[str, str, str | None]]:
    """[(shard_url, shard_id, identity)] in listing order; shard ids must be unique (they name the output
    files). Each shard's stored identity comes from the same listing (`pipeline.storage.object_identity`;
    recorded in its marker, compared by an incremental scan)."""
    try:
        objs = list_shard_objects(cfg.input)
    except FileNotFoundError as exc:
        raise ConfigError(f"input: {exc}") from exc
    if cfg.max_shards:
        objs = objs[: cfg.max_shards]
    shards = [(u, shard_id(u, cfg.input), i) for u, i in objs]
    dup = [s for s, c in Counter(s for _, s, _ in shards).items() if c > 1]
    if dup:
        raise ConfigError(f"input: shard ids collide (they name the output files): {dup[:5]}")
    return shards


def plan_incremental(
    cfg: ScanConfig,
    plan: RunPlan,
    listing: list[tuple[str, str, str | None]],
    done_before: set[str],
    scoring: dict[str, Any],
) -> CarryPlan:
    """Which shards of an `--incremental` night are carried and which scanned. A resumed night keeps the
    source its first attempt chose (or stays a full scan), so it finishes exactly the night that was
    started."""
    remaining = [(u, s) for u, s, _ in listing if s not in done_before]
    before = (plan.previous or {}).get("incremental") if plan.resumed else None
    if before is not None and before.get("source_scan_date") is None:
        return CarryPlan(None, reason=before.get("full_scan_reason"), scan=remaining)
    only = before.get("source_scan_date") if before is not None else None
    date, source_run, why = find_source(cfg.output, plan.paths.scan_date, cfg.input, scoring, only=only)
    if date is None or source_run is None:
        return CarryPlan(None, reason=why, scan=remaining, added=len(remaining))
    return plan_carry(plan.paths, listing, date, source_run, skip=done_before)


def run_scan(
    cfg: ScanConfig,
    executor: ScanExecutor | None = None,
    *,
    on_shard: Callable[[str, dict[str, Any], Progress], None] | None = None,
    check: Callable[[Progress], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a scan; returns the run summary (also written to run.json). Raises ConfigError for bad
    configuration (nothing written) and ScanFailed for systemic failures (run.json says failed).

    executor: how shards are processed (`pipeline.scan.execute.ScanExecutor`); the entry point passes the Ray
    one (`pipeline.engine.scan.RayScanExecutor`); None runs in this process (`local_executor`).
    on_shard / check: `pipeline.runner.run_shards` hooks (a progress line; a run-level check that raises to
    stop the run, e.g. an error budget), called after each shard is durable. announce: a console line (why an
    incremental night scans everything, or what it carries)."""
    executor = executor or local_executor
    announce = announce or (lambda line: None)
    t_start = time.perf_counter()
    plan = plan_run(cfg)
    listing = list_input_objects(cfg)
    shards = [s for _, s, _ in listing]
    info = run_detectors(cfg)
    # said once the listing and the detectors are checked: a mistake in either stays the only stderr line
    if cfg.resume and not plan.resumed:
        log.warning("resume_nothing_found", scan_date=plan.paths.scan_date, output=cfg.output)
        announce(f"--resume: no earlier run of {plan.paths.scan_date} in {cfg.output}; starting it fresh")
    paths = plan.paths
    done_before = completed_shards(paths) if plan.resumed else set()
    scoring = scoring_record(cfg, info)
    carry_plan = plan_incremental(cfg, plan, listing, done_before, scoring) if cfg.incremental else None
    if carry_plan is not None:
        todo, carry = carry_plan.scan, carry_plan.carry
        if carry_plan.source_date is None:
            message = f"incremental: full scan: {carry_plan.reason}"
            log.warning("incremental_full_scan", reason=carry_plan.reason)
        else:
            message = (
                f"incremental: carrying {len(carry)} unchanged shard(s) from {carry_plan.source_date}, "
                f"scanning {len(todo)} ({carry_plan.added} added, {carry_plan.changed} changed, "
                f"{carry_plan.no_identity + carry_plan.source_missing} not verifiable), "
                f"{carry_plan.removed} removed since"
            )
            log.info("incremental_plan", **carry_plan.record())
        announce(message)
    else:
        todo, carry = [(u, s) for u, s, _ in listing if s not in done_before], []
    skipped = len(shards) - len(todo) - len(carry)
    # the configuration, the listing and the detectors are checked: work starts now
    announce(
        f"{cfg.input} -> {cfg.output}: {len(todo)} shard(s) to scan"
        + (f", {len(carry)} to carry" if carry else "")
        + "; starting the workers, loading the detector..."
    )
    resolved = cfg.model_copy(update={"scan_date": paths.scan_date, "run_id": plan.run_id})
    attempts = list((plan.previous or {}).get("attempts", []))
    attempt = {
        "started_at": now_iso(),
        "resumed": plan.resumed,
        "shards_todo": len(todo) + len(carry),
        "shards_to_carry": len(carry),
        "shards_skipped": skipped,
        "driver": {"host": socket.gethostname(), "pid": os.getpid()},
    }
    attempts.append(attempt)
    run = RunFile(
        paths.run_file("run.json"),
        {
            "status": "running",
            "run_id": plan.run_id,
            "scan_date": paths.scan_date,
            "source": cfg.input,
            "output": cfg.output,
            "detector_id": info.detector_id,
            "shards_total": len(shards),
            "scoring": scoring,
            **({"incremental": carry_plan.record()} if carry_plan is not None else {}),
            "config": resolved.model_dump(mode="json"),
            "attempts": attempts,
        },
    )
    write_json(paths.run_file("config.json"), resolved.model_dump(mode="json"))
    write_json(paths.run_file("versions.json"), versions())
    write_json(paths.run_file("detector.json"), info.record())
    run.write()
    log.info(
        "scan_start",
        run_id=plan.run_id,
        scan_date=paths.scan_date,
        shards=len(shards),
        todo=len(todo),
        carry=len(carry),
        skipped=skipped,
        resumed=plan.resumed,
        detector_id=info.detector_id,
    )
    RunLog.set_destination(paths.run_file("log.jsonl"))  # this process's JSON log, when a job keeps one
    timing: dict[str, float] = {}
    attempt["timing"] = timing
    work = ScanWork(
        cfg=cfg,
        ctx=RunContext(
            run_id=plan.run_id,
            source=cfg.input,
            detector_id=info.detector_id,
            labels=info.labels,
            fusion=info.fusion,
            provenance_policy=cfg.provenance_policy,
        ),
        scan_date=paths.scan_date,
        inputs=info.inputs,
        timing=timing,
        identities={s: i for u, s, i in listing if s not in done_before},
        carry=carry,
    )
    this = Totals()  # this attempt's running totals (one marker added per shard)
    budget = cfg.error_budget()
    extra: dict[str, Any] = {}
    # earlier attempts' markers, read once (batched, concurrent): their totals count in the budget and the end
    before = aggregate(paths, sorted(done_before))
    try:
        # stop early once the shard budget cannot be met any more (earlier attempts' failed shards count too)
        guard = budget.guard(len(shards), run_errors(before.as_dict(), len(done_before)), run_errors)

        def checks(p: Progress) -> None:
            guard(p)
            if check is not None:
                check(p)

        progress = _scan(
            paths,
            shards,
            done_before,
            todo,
            executor,
            work,
            this,
            on_shard=on_shard,
            check=checks,
        )
        not_marked = sorted(set(shards) - completed_shards(paths))
        if not_marked:
            raise ScanFailed(f"{len(not_marked)} shard(s) have no completion marker: {not_marked[:5]}")
        extra["error_budget"] = budget.check(run_errors(before.merge(this).as_dict(), len(shards)))
    except BaseException as exc:
        if isinstance(exc, ErrorBudgetExceeded):
            extra["error_budget"] = exc.record
        error = f"{type(exc).__name__}: {exc}"
        attempt.update(finished_at=now_iso(), error=error)
        run.write(status="failed", error=error, totals=before.merge(this).as_dict(), **extra)
        log.error("scan_failed", run_id=plan.run_id, error=str(exc))
        if isinstance(exc, IncompleteRun | ErrorBudgetExceeded):
            raise ScanFailed(str(exc)) from exc
        raise
    wall = time.perf_counter() - t_start
    totals = before.merge(this).as_dict()
    now = this.as_dict()
    attempt.update(
        finished_at=now_iso(),
        wall_s=round(wall, 3),
        shards_written=progress.done - now["shards_carried"],
        rows_written=now["rows"] - now["rows_carried"],
        shards_carried=now["shards_carried"],
        rows_carried=now["rows_carried"],
    )
    run.write(status="succeeded", totals=totals, finished_at=now_iso(), **extra)
    log.info(
        "scan_done",
        run_id=plan.run_id,
        shards=totals["shards_done"],
        rows=totals["rows"],
        counts=totals["counts"],
        carried=totals["shards_carried"],
        wall_s=round(wall, 2),
    )
    return run.record


def _scan(
    paths: RunPaths,
    shard_ids: list[str],
    done_before: set[str],
    todo: list[tuple[str, str]],
    executor: ScanExecutor,
    work: ScanWork,
    totals: Totals,
    *,
    on_shard: Callable[[str, dict[str, Any], Progress], None] | None = None,
    check: Callable[[Progress], None] | None = None,
) -> Progress:
    """The shards of `todo` (and `work.carry`) through the executor (which writes them where the rows are)
    under the stall watchdog; `totals` adds each shard's summary (nothing per shard is kept but its id, in the
    progress). A shard whose summary was lost on the way (its writer committed it, then the acknowledgement
    died with a retried task) counts by its marker."""
    rows_total = 0
    t0 = time.perf_counter()
    seen: list[Progress] = []  # the run's progress, once the first shard arrived

    def execute(ids: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from executor(todo, work)
        got = seen[0].completed if seen else set()
        for shard in sorted((set(ids) - got) & completed_shards(paths)):
            marker = read_json(paths.marker(shard))
            if marker is not None:
                yield shard, marker

    with _Watchdog(work.cfg.stall_timeout_s) as dog:

        def logged(shard: str, stats: dict[str, Any], progress: Progress) -> None:
            nonlocal rows_total
            if not seen:
                seen.append(progress)
            totals.add(stats)
            if not stats.get("carried_from"):  # the scan rate counts rows scored here
                rows_total += int(stats["rows"])
            dog.progress()
            log.info(
                "shard_done",
                shard=shard,
                rows=stats["rows"],
                counts={k: v for k, v in stats["counts"].items() if v},
                done=progress.done,
                todo=progress.todo,
                rows_total=rows_total,
                carried=bool(stats.get("carried_from")),
                images_per_s=round(rows_total / max(time.perf_counter() - t0, 1e-9), 1),
            )
            if on_shard is not None:
                on_shard(shard, stats, progress)

        try:
            return run_shards(
                shard_ids, done=done_before, execute=execute, on_shard=logged, check=check, keep=False
            )
        except KeyboardInterrupt as exc:
            if dog.fired:
                raise ScanFailed(f"no progress for {work.cfg.stall_timeout_s}s (stall_timeout_s)") from exc
            raise
