"""Incremental scans: carry the shards that did not change since an earlier night forward [ours].

A nightly scan (`--incremental`) compares tonight's listing with the latest complete, succeeded scan partition
of the same output that used the same scoring (`scoring_record`: schema version, detector id or set id +
fusion, members, preprocessing, pixel limit, decode device, dtype). A shard whose stored identity
(`pipeline.storage.object_identity`, from tonight's listing) equals the identity recorded in that night's
marker is CARRIED: its outputs (`shard_parts`) are copied into tonight's partition (server-side on S3), each
copy is checked (size, Parquet row count), then its marker is written LAST with `carried_from` = {scan_date,
run_id, identity}. Everything else is scanned as usual. What cannot be trusted is never carried: another
scoring, a failed or unfinished night, a marker without identity, a source part that is gone or differs (then
scanned).

Carried rows are a byte copy: their `run_id` and `scanned_at` are those of the run that SCORED them (the
marker keeps that run_id too, and `scored_on` = the date it was scored), so `WHERE run_id = <tonight>` selects
the rows scored tonight. No Ray here: the executors run `carry_shard` on the workers (`pipeline.engine.scan`)
or in a thread pool (`carry_local`).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from pipeline.logs import get_logger
from pipeline.output import (
    SCHEMA_VERSION,
    RunPaths,
    completed_shards,
    list_runs,
    now_iso,
    read_json,
    write_json,
)
from pipeline.scan.completion import PHASE_SECONDS, read_markers, same_uris
from pipeline.scan.write import LOCAL_WRITER
from pipeline.storage import copy_object, filesystem, join, stored_size

if TYPE_CHECKING:
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.detectors import RunDetectors

log = get_logger("pipeline.scan.carry")

# marker keys that describe the work of the run that wrote a marker, not the shard's rows: not carried
_RUN_WORK = (*PHASE_SECONDS, "writer_node", "node_id", "finished_at", "carried_from")


class CarryError(RuntimeError):
    """A carried part could not be copied or did not check out (the shard is scanned instead)."""


@dataclass(frozen=True)
class Part:
    """One output file of a shard to carry: source, destination, the source's size and its row count."""

    src: str
    dst: str
    size: int
    rows: int


@dataclass(frozen=True)
class CarryItem:
    """A shard to carry: tonight's url and identity, where it comes from, what to copy."""

    shard: str
    url: str
    identity: str
    source_date: str
    source_run_id: str
    source_marker: str
    marker: str  # tonight's marker uri
    parts: tuple[Part, ...]


@dataclass
class CarryResult:
    shard: str
    url: str
    summary: dict[str, Any] | None  # the carried marker; None: not carried (`problem` says why)
    problem: str | None = None


@dataclass
class CarryPlan:
    """The outcome of comparing tonight's listing with the source night."""

    source_date: str | None  # None: nothing carried (`reason` says why)
    source_run_id: str | None = None
    reason: str | None = None
    carry: list[CarryItem] = field(default_factory=list)
    scan: list[tuple[str, str]] = field(default_factory=list)  # (url, shard) to scan
    removed: int = 0  # shards of the source night no longer in the input
    changed: int = 0  # same shard id, other identity
    added: int = 0  # not in the source night
    no_identity: int = 0  # unchanged name but the source marker records no identity (rescanned)
    source_missing: int = 0  # source marker present, its Parquet part gone (rescanned)

    def record(self) -> dict[str, Any]:
        """run.json's `incremental` (the planned counts; carried/scanned as done are in `totals`)."""
        return {
            "source_scan_date": self.source_date,
            "source_run_id": self.source_run_id,
            "full_scan_reason": self.reason,
            "planned_carry": len(self.carry),
            "planned_scan": len(self.scan),
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "no_identity": self.no_identity,
            "source_missing": self.source_missing,
        }


def scoring_record(cfg: ScanConfig, detectors: RunDetectors) -> dict[str, Any]:
    """What makes two nights' outputs of the same bytes equal: recorded in run.json (`scoring`) and compared.
    The stored features' kind and precision are part of it: a night that keeps features carries only from a
    night that kept the same ones (each carried shard brings its features part along)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "detector_id": detectors.detector_id,
        "members": list(detectors.member_ids),
        "fusion": detectors.fusion,
        "inputs": [[int(s), str(p)] for s, p in detectors.inputs],
        "max_pixels": int(cfg.max_pixels),
        "decode_on": cfg.decode_on,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "features": cfg.features,
        "features_precision": cfg.features_precision if cfg.features else None,
    }


def _refusal(date: str, run: dict[str, Any] | None, source: str, scoring: dict[str, Any]) -> str | None:
    """Why the scan of `date` (its run.json `run`) cannot be tonight's source; None when it can."""
    if run is None or run.get("status") != "succeeded":
        return f"scan {date} did not succeed (status {(run or {}).get('status')!r})"
    totals = run.get("totals") or {}
    if totals.get("shards_done") != run.get("shards_total"):
        return f"scan {date} is incomplete ({totals.get('shards_done')} of {run.get('shards_total')})"
    if same_uris(run.get("source")) != same_uris(source):
        return f"scan {date} scanned another input ({run.get('source')!r})"
    if run.get("scoring") is None:
        return f"scan {date} records no scoring (written before incremental scans)"
    for k, v in scoring.items():
        if run["scoring"].get(k) != v:
            return f"scan {date} used another scoring: {k} {run['scoring'].get(k)!r} there, {v!r} tonight"
    return None


def find_source(
    output: str, tonight: str, source: str, scoring: dict[str, Any], only: str | None
) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(date, run.json, None) of the latest earlier partition of `output` that succeeded, is complete and used
    the same input and scoring; else (None, None, why not). `only`: that date or nothing (a resumed night
    keeps the source its first attempt chose)."""
    dates = [d for d in list_runs(output) if d < tonight] if only is None else [only]
    why = None
    for date in reversed(dates):
        run = read_json(RunPaths(output, date).run_file("run.json"))
        refusal = _refusal(date, run, source, scoring)
        if refusal is None:
            return date, run, None
        why = why or refusal
    return None, None, why or f"no earlier scan under {output}"


def shard_parts(
    src: RunPaths, dst: RunPaths, shard: str, sizes: dict[str, int], marker: dict[str, Any]
) -> tuple[Part, ...] | None:
    """A shard's output files to carry: its Parquet part, and its stored-features part when the source night
    kept features (its marker says how many rows each part holds). `sizes`: uri -> size of the source night's
    files (`_sizes`). None when a part is missing at the source (the shard is then scanned)."""
    wanted = [(src.parquet(shard), dst.parquet(shard), marker.get("rows", 0))]
    if (feats := marker.get("features")) is not None:
        wanted.append((src.features(shard), dst.features(shard), feats.get("rows", 0)))
    if any(uri not in sizes for uri, _, _ in wanted):
        return None
    return tuple(Part(uri, to, sizes[uri], int(rows)) for uri, to, rows in wanted)


def _sizes(folder: str) -> dict[str, int]:
    """uri -> size of a folder's files, from one listing (fresh: never a cached one)."""
    fs, path = filesystem(folder)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {
        join(folder, posixpath.basename(str(e["name"]).rstrip("/"))): int(e["size"])
        for e in entries
        if e.get("type") == "file" and e.get("size") is not None
    }


def plan_carry(
    tonight: RunPaths,
    shards: Sequence[tuple[str, str, str | None]],
    source_date: str,
    source_run: dict[str, Any],
    skip: set[str],
) -> CarryPlan:
    """Compare tonight's (url, shard, identity) listing with the source night: ONE listing of its markers and
    one of its Parquet parts, its markers read in batched concurrent requests. Keeps only what each carry
    needs. `skip`: shards already complete tonight (a resumed night): neither carried nor scanned again."""
    src = RunPaths(tonight.output, source_date)
    plan = CarryPlan(source_date=source_date, source_run_id=source_run.get("run_id"))
    marked = completed_shards(src)
    # one listing each; the features folder is empty when the source night kept no features
    sizes = {**_sizes(src.data_dir), **_sizes(src.features_dir)}
    plan.removed = len(marked - {s for _, s, _ in shards})
    by_id = {s: (u, i) for u, s, i in shards}
    candidates = [s for _, s, i in shards if s in marked and i is not None and s not in skip]
    for shard, m in read_markers(src, candidates, strict=False):  # unreadable: no identity -> rescanned
        url, identity = by_id[shard]
        if not m.get("identity"):
            plan.no_identity += 1
        elif m["identity"] != identity:
            plan.changed += 1
        elif (parts := shard_parts(src, tonight, shard, sizes, m)) is None:
            plan.source_missing += 1
        else:
            plan.carry.append(
                CarryItem(
                    shard=shard,
                    url=url,
                    identity=identity,
                    source_date=source_date,
                    source_run_id=str(source_run.get("run_id")),
                    source_marker=src.marker(shard),
                    marker=tonight.marker(shard),
                    parts=parts,
                )
            )
    carried = {c.shard for c in plan.carry}
    for url, shard, identity in shards:
        if shard in carried or shard in skip:
            continue
        plan.scan.append((url, shard))
        if shard not in marked:
            plan.added += 1
        elif identity is None:
            plan.changed += 1  # tonight's listing says nothing comparable: scanned
    return plan


def _parquet_rows(uri: str) -> int:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return int(pq.read_metadata(f).num_rows)


def carry_shard(item: CarryItem, writer_node: str | None = None) -> CarryResult:
    """Carry one shard (runs on a worker): re-read its source marker (it must still record the identity
    matched), copy its parts (server-side where the store can), check each copy's size and row count, then
    write tonight's marker LAST (with `copy_s`, the seconds to the checked copies): a marker implies complete,
    checked outputs. Any failure -> a result with `problem` and no marker (the shard is scanned instead, and
    the scan overwrites the part)."""
    t0 = time.perf_counter()
    try:
        src = read_json(item.source_marker)
        if src is None or src.get("identity") != item.identity:
            raise CarryError(
                f"source marker {item.source_marker} is gone or no longer records {item.identity}"
            )
        marker = {k: v for k, v in src.items() if k not in _RUN_WORK}
        marker.update(
            identity=item.identity,
            scored_on=src.get("scored_on") or item.source_date,
            carried_from={
                "scan_date": item.source_date,
                "run_id": item.source_run_id,
                "identity": item.identity,
            },
            carried_at=now_iso(),
            writer_node=writer_node or LOCAL_WRITER,
        )
        for p in item.parts:
            copy_object(p.src, p.dst)
            if (size := stored_size(p.dst)) != p.size:
                raise CarryError(f"{p.dst}: copied {size} bytes, the source had {p.size}")
            if (rows := _parquet_rows(p.dst)) != p.rows:
                raise CarryError(f"{p.dst}: {rows} rows, the source marker says {p.rows}")
        written = {**marker, "copy_s": round(time.perf_counter() - t0, 6)}
        write_json(item.marker, written)
    except (OSError, CarryError, ValueError) as exc:  # ValueError: a part that is not Parquet any more
        return CarryResult(item.shard, item.url, None, f"{type(exc).__name__}: {exc}")
    return CarryResult(item.shard, item.url, written)


def carry_batch(items: Sequence[CarryItem], writer_node: str | None = None) -> list[CarryResult]:
    """Several shards in one task (a Ray task per batch, not per shard)."""
    return [carry_shard(i, writer_node) for i in items]


def carry_local(items: Sequence[CarryItem]) -> Iterator[CarryResult]:
    """Carry in this process: copies are I/O-bound, so up to 16 threads; results as they complete."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(items)), thread_name_prefix="carry") as pool:
        futures = [pool.submit(carry_shard, i) for i in items]
        for f in as_completed(futures):
            yield f.result()


def carried_then_rest(
    results: Iterator[CarryResult], todo: list[tuple[str, str]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield each carried shard's summary; a shard that could not be carried is appended to `todo` (to
    scan)."""
    for r in results:
        if r.summary is not None:
            yield r.shard, r.summary
        else:
            log.warning("carry_failed_scanning", shard=r.shard, problem=r.problem)
            todo.append((r.url, r.shard))
