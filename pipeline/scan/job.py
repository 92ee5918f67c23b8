"""The scan job's driver logic [ours]: plan the run, list shards, stream scored rows from the Ray plan, write
each shard's Parquet as soon as all its rows have arrived, then its marker; provenance and the run summary.

No Ray import here: the Ray Data plan lives in `pipeline.engine.scan` (imported when the scan starts).
"""

from __future__ import annotations

import _thread
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.logs import get_logger
from pipeline.scan.completion import (
    RunPlan,
    aggregate,
    completed_shards,
    now_iso,
    plan_run,
    versions,
    write_json,
    write_shard,
)
from pipeline.scan.config import ScanConfig
from pipeline.scan.rows import RunContext, ShardCollector, shard_stats, to_table
from pipeline.settings import ConfigError
from pipeline.storage import list_shards, shard_id

log = get_logger("pipeline.scan.job")


class ScanFailed(RuntimeError):
    """A systemic failure: the run is marked failed and the job exits non-zero."""


@dataclass(frozen=True)
class DetectorInfo:
    detector_id: str
    threshold: float
    labels: list[str]
    image_size: int
    resize_mode: str
    meta: dict[str, Any]


def detector_info(uri: str) -> DetectorInfo:
    """Read the checkpoint's meta on the driver (cheap: no weights), failing fast before any Ray work when the
    checkpoint is missing or its meta is invalid; gives the preprocessing constants the CPU decode stage needs.
    The actors then load the weights, checking hash, keys and shapes (pipeline.models.load_detector)."""
    from pipeline.models import read_meta
    from pipeline.models.constants import WEIGHTS_FILE
    from pipeline.models.detector import refuse_pickle
    from pipeline.storage import exists, join

    try:
        refuse_pickle(uri)  # a pickle file named as the detector: refused by name, never opened
        meta = read_meta(uri)
    except (OSError, ConfigError, ValueError) as exc:  # OSError: not found, not a directory, permission
        raise ConfigError(f"detector: cannot read checkpoint {uri}: {exc}") from exc
    if meta.config is None:
        raise ConfigError(f"detector: checkpoint {uri} has no config in its meta")
    if not exists(join(uri, WEIGHTS_FILE)):
        raise ConfigError(f"detector: checkpoint {uri} has no {WEIGHTS_FILE}")
    return DetectorInfo(
        detector_id=str(meta.detector_id),
        threshold=float(meta.threshold),
        labels=["real", *meta.generators],
        image_size=int(meta.config.image_size),
        resize_mode=str(meta.config.preprocess),
        meta=meta.model_dump(mode="json"),
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


def list_input(cfg: ScanConfig) -> list[tuple[str, str]]:
    """[(shard_url, shard_id)] in listing order; shard ids must be unique (they name the output files)."""
    try:
        urls = list_shards(cfg.input)
    except FileNotFoundError as exc:
        raise ConfigError(f"input: {exc}") from exc
    if cfg.max_shards:
        urls = urls[: cfg.max_shards]
    shards = [(u, shard_id(u, cfg.input)) for u in urls]
    dup = [s for s, c in Counter(s for _, s in shards).items() if c > 1]
    if dup:
        raise ConfigError(f"input: shard ids collide (they name the output files): {dup[:5]}")
    return shards


def run_scan(cfg: ScanConfig) -> dict[str, Any]:
    """Run (or resume) a scan; returns the run summary (also written to run.json). Raises ConfigError for bad
    configuration (nothing written) and ScanFailed for systemic failures (run.json says failed)."""
    t_start = time.perf_counter()
    plan = plan_run(cfg)
    shards = list_input(cfg)
    info = detector_info(cfg.detector)
    paths = plan.paths
    done_before = completed_shards(paths) if plan.resumed else set()
    todo = [(u, s) for u, s in shards if s not in done_before]
    resolved = cfg.model_copy(update={"scan_date": paths.scan_date, "run_id": plan.run_id})
    attempts = list((plan.previous or {}).get("attempts", []))
    attempt = {"started_at": now_iso(), "resumed": plan.resumed, "shards_todo": len(todo),
               "shards_skipped": len(shards) - len(todo),
               "driver": {"host": socket.gethostname(), "pid": os.getpid()}}  # fmt: skip
    attempts.append(attempt)
    run: dict[str, Any] = {
        "status": "running", "run_id": plan.run_id, "scan_date": paths.scan_date, "source": cfg.input,
        "output": cfg.output, "detector_id": info.detector_id, "shards_total": len(shards),
        "config": resolved.model_dump(mode="json"), "attempts": attempts,
    }  # fmt: skip
    write_json(paths.run_file("config.json"), resolved.model_dump(mode="json"))
    write_json(paths.run_file("versions.json"), versions())
    write_json(paths.run_file("detector.json"), {"uri": cfg.detector, "detector_id": info.detector_id,
                                                 "threshold": info.threshold, "labels": info.labels,
                                                 "image_size": info.image_size, "resize_mode": info.resize_mode,
                                                 "meta": info.meta})  # fmt: skip
    write_json(paths.run_file("run.json"), run)
    log.info("scan_start", run_id=plan.run_id, scan_date=paths.scan_date, shards=len(shards), todo=len(todo),
             skipped=len(shards) - len(todo), resumed=plan.resumed, detector_id=info.detector_id)  # fmt: skip
    written_so_far: dict[str, dict[str, Any]] = {}
    try:
        timing: dict[str, float] = {}
        attempt["timing"] = timing
        written = _scan(cfg, plan, info, todo, timing, written_so_far) if todo else {}
        missing = sorted({s for _, s in todo} - set(written))
        if missing:
            raise ScanFailed(f"{len(missing)} shard(s) never completed: {missing[:5]}")
        all_ids = [s for _, s in shards]
        not_marked = sorted(set(all_ids) - completed_shards(paths))
        if not_marked:
            raise ScanFailed(f"{len(not_marked)} shard(s) have no completion marker: {not_marked[:5]}")
    except BaseException as exc:
        attempt.update(finished_at=now_iso(), error=f"{type(exc).__name__}: {exc}")
        run.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                   totals=aggregate(paths, [s for _, s in shards], known=written_so_far))  # fmt: skip
        write_json(paths.run_file("run.json"), run)
        log.error("scan_failed", run_id=plan.run_id, error=str(exc))
        raise
    wall = time.perf_counter() - t_start
    totals = aggregate(paths, [s for _, s in shards], known=written)
    attempt.update(finished_at=now_iso(), wall_s=round(wall, 3), shards_written=len(written),
                   rows_written=sum(st["rows"] for st in written.values()))  # fmt: skip
    run.update(status="succeeded", totals=totals, finished_at=now_iso())
    write_json(paths.run_file("run.json"), run)
    log.info("scan_done", run_id=plan.run_id, shards=totals["shards_done"], rows=totals["rows"],
             counts=totals["counts"], wall_s=round(wall, 2))  # fmt: skip
    return run


def _scan(cfg: ScanConfig, plan: RunPlan, info: DetectorInfo, todo: list[tuple[str, str]],
          timing: dict[str, float] | None = None,
          written: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Stream the plan, write shards as they complete. `timing` receives ray_connect_s, first_rows_s (plan
    start -> first scored rows), model_ready_s (plan start -> first scorer actor ready), stream_s and
    steady_images_per_s (rows / time from the first actor ready to the end: the pipeline's throughput
    without Ray/actor start-up and model load)."""
    from pipeline.engine import cluster
    from pipeline.engine.scan import iter_scored

    timing = {} if timing is None else timing
    tc = time.perf_counter()
    cluster.connect(cfg.ray_address, cfg.ray_num_cpus)
    timing["ray_connect_s"] = round(time.perf_counter() - tc, 3)
    ctx = RunContext(run_id=plan.run_id, source=cfg.input, detector_id=info.detector_id,
                     threshold=info.threshold, labels=info.labels)  # fmt: skip
    urls = dict((s, u) for u, s in todo)
    collector = ShardCollector()
    written = {} if written is None else written  # shard -> its stats (= its marker)
    rows_total = 0
    t0 = time.perf_counter()
    t_first: float | None = None
    wall0 = time.time()
    ready_at = float("inf")
    with _Watchdog(cfg.stall_timeout_s) as dog:
        try:
            for batch in iter_scored(todo, cfg, image_size=info.image_size,
                                     resize_mode=cfg.resize_mode or info.resize_mode):
                dog.progress()
                if t_first is None:
                    t_first = time.perf_counter()
                    timing["first_rows_s"] = round(t_first - t0, 3)
                if "_actor_ready" in batch and len(batch["_actor_ready"]):
                    ready_at = min(ready_at, float(np.min(batch["_actor_ready"])))
                for shard, rows in collector.add(batch):
                    if shard not in urls:
                        raise ScanFailed(f"received rows of an unexpected shard {shard!r}")
                    tw = time.perf_counter()
                    table = to_table(rows, ctx)
                    stats = shard_stats(shard, urls[shard], rows)
                    stats.update(run_id=plan.run_id, finished_at=now_iso(), write_s=0.0)
                    write_shard_timed(plan, shard, table, stats, tw)
                    written[shard] = stats
                    rows_total += stats["rows"]
                    dog.progress()
                    log.info("shard_done", shard=shard, rows=stats["rows"],
                             counts={k: v for k, v in stats["counts"].items() if v},
                             done=len(written), todo=len(todo), rows_total=rows_total,
                             images_per_s=round(rows_total / max(time.perf_counter() - t0, 1e-9), 1))  # fmt: skip
        except KeyboardInterrupt as exc:
            if dog.fired:
                raise ScanFailed(f"no progress for {cfg.stall_timeout_s}s (stall_timeout_s)") from exc
            raise
    t_end = time.perf_counter()
    timing["stream_s"] = round(t_end - t0, 3)
    if ready_at < float("inf"):
        timing["model_ready_s"] = round(ready_at - wall0, 3)
        active = time.time() - ready_at
        timing["steady_images_per_s"] = round(rows_total / active, 2) if active > 0 else 0.0
    if collector.pending:
        partial = {s: (len(p.seen), p.expected) for s, p in list(collector.pending.items())[:5]}
        raise ScanFailed(f"stream ended with incomplete shards (have, expected): {partial}")
    if collector.duplicates:
        log.warning("duplicate_rows_dropped", rows=collector.duplicates)
    return written


def write_shard_timed(plan: RunPlan, shard: str, table: Any, stats: dict[str, Any], t_begin: float) -> None:
    """Write the Parquet, then the marker with the measured write time (marker LAST)."""
    from pipeline.scan.completion import parquet_bytes, write_bytes_atomic

    data = parquet_bytes(table)
    write_bytes_atomic(plan.paths.parquet(shard), data)
    stats["write_s"] = time.perf_counter() - t_begin
    write_json(plan.paths.marker(shard), stats)


__all__ = ["run_scan", "ScanFailed", "detector_info", "list_input", "write_shard"]
