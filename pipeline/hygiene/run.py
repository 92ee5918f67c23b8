"""Execute a filter run [ours]: plan every shard, refuse on any coverage problem, rewrite shards, reconcile.
The output layout: `pipeline.hygiene.plan.FilterPaths`."""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from pipeline import __version__, storage
from pipeline.exitcodes import ExitCode, OperatorError
from pipeline.hygiene.copy import ShardWriter
from pipeline.hygiene.plan import FilterPaths, PlanError, ShardPlan, plan_errors, plan_run
from pipeline.hygiene.policy import FilterConfig
from pipeline.logs import get_logger
from pipeline.output import now_iso, parquet_bytes, read_json, write_json
from pipeline.runner import MapFn, Progress, map_shards, run_shards
from pipeline.shards import ShardReadError, iter_samples

MANIFEST_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("source", pa.string()),
        ("key", pa.string()),
        ("action", pa.string()),
        ("reason", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("p_fake", pa.float32()),
        ("top_generator", pa.string()),
        ("threshold", pa.float32()),
    ]
)


class ReconcileError(OperatorError, RuntimeError):
    """kept + dropped + quarantined != samples for some shard: the run must not report success."""

    exit_code = ExitCode.WRITE_FAILED
    label = "failed"


class SourceChangedError(OperatorError, RuntimeError):
    """A source image's bytes differ from what the scan hashed: its decision would be about another image.
    The shard is not committed and the run fails."""

    exit_code = ExitCode.WRITE_FAILED
    label = "failed"


@dataclass
class ShardResult:
    shard_id: str
    source: str
    output: str  # relative to the run's output root (outputs can be moved)
    quarantine: str | None
    samples: int
    read: int
    kept: int
    dropped: int
    quarantined: int
    errors_by_status: dict[str, int]
    kept_error_rows: int
    non_sample_members: int


def manifest_rows(plan: ShardPlan) -> list[dict[str, Any]]:
    """One shard's manifest rows: every sample not plainly kept, its Decision's MANIFEST_SCHEMA fields."""
    where = {"shard": plan.spec.shard_id, "source": plan.spec.source}
    fields = MANIFEST_SCHEMA.names[len(where) :]
    return [
        {**where, **{f: getattr(d, f) for f in fields}}
        for d in plan.decisions
        if d.action != "keep" or d.reason
    ]


def filter_shard(plan: ShardPlan) -> ShardResult:
    """Rewrite one shard by its plan: kept samples -> cleaned shard, quarantined -> quarantine shard.
    Commits (rename / upload) only after exactly the planned samples were read, each written or dropped by its
    decision; the marker is written last. Raises on any mismatch (the source changed since planning, a broken
    tar)."""
    spec = plan.spec
    log = get_logger("hygiene.filter", shard=spec.shard_id)
    t0 = time.perf_counter()
    kept_w = ShardWriter(spec.output)
    quar_w = ShardWriter(spec.quarantine)
    counts: Counter[str] = Counter()
    read = 0
    try:
        for sample in iter_samples(spec.source):
            if read >= len(plan.decisions) or plan.decisions[read].key != sample.key:
                expected = plan.decisions[read].key if read < len(plan.decisions) else "<end of shard>"
                raise SourceChangedError(
                    f"{spec.source}: sample {read} is {sample.key!r}, planned {expected!r}; "
                    "the source changed after planning"
                )
            decision = plan.decisions[read]
            if decision.sha256 is not None and sample.image_sha256() != decision.sha256:
                raise SourceChangedError(
                    f"{spec.source}: the image of sample {sample.key!r} is not the one the scan scored "
                    "(sha256 differs); rescan the shard"
                )
            action = decision.action
            if action == "keep":
                kept_w.write(sample)
            elif action == "quarantine":
                quar_w.write(sample)
            counts[action] += 1
            read += 1
        if read != plan.samples:
            raise SourceChangedError(
                f"{spec.source}: read {read} samples, planned {plan.samples}; "
                "the source changed after planning"
            )
    except BaseException as exc:
        kept_w.abort()
        quar_w.abort()
        if isinstance(exc, ShardReadError):  # it was readable when planned
            raise SourceChangedError(f"{exc}; the source changed after planning") from exc
        raise
    kept_w.commit()
    if quar_w.count:
        quar_w.commit()
    else:
        quar_w.abort()
        _remove(spec.quarantine)  # left by an earlier run with another policy
    rows = manifest_rows(plan)
    storage.write_bytes_atomic(
        spec.manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    )
    errors = Counter(d.status for d in plan.decisions if d.status != "ok")
    result = ShardResult(
        shard_id=spec.shard_id,
        source=spec.source,
        output=spec.name,
        quarantine=FilterPaths.quarantine_name(spec.name) if quar_w.count else None,
        samples=plan.samples,
        read=read,
        kept=counts["keep"],
        dropped=counts["drop"],
        quarantined=counts["quarantine"],
        errors_by_status=dict(sorted(errors.items())),
        kept_error_rows=sum(
            1 for d in plan.decisions if d.action == "keep" and d.reason.startswith("error:")
        ),
        non_sample_members=plan.non_sample_members,
    )
    write_json(spec.marker, asdict(result))
    log.info(
        "shard_filtered",
        kept=result.kept,
        dropped=result.dropped,
        quarantined=result.quarantined,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return result


def summarize_plans(scan_date: str, plans: list[ShardPlan]) -> dict[str, Any]:
    shards = []
    for p in plans:
        reasons = Counter(f"{d.action}:{d.reason}" for d in p.decisions if d.action != "keep" or d.reason)
        shards.append(
            {
                "shard": p.spec.shard_id,
                "source": p.spec.source,
                "output": p.spec.output,
                "skipped": p.skip,
                "scan_shard_error": p.scan_shard_error,
                **p.counts(),
                "reasons": dict(sorted(reasons.items())),
            }
        )
    return {
        "scan_date": scan_date,
        "shards": shards,
        "totals": {k: sum(s[k] for s in shards) for k in ("samples", "keep", "drop", "quarantine")},
        "skipped_shards": [s["shard"] for s in shards if s["skipped"]],
    }


def reconcile(todo: list[ShardPlan], results: list[ShardResult]) -> list[str]:
    """Every executed shard (plans and results in one order): kept + dropped + quarantined == samples in the
    source == samples read."""
    problems = []
    for p, r in zip(todo, results, strict=True):
        if not (r.kept + r.dropped + r.quarantined == r.samples == r.read == p.samples):
            problems.append(
                f"{p.spec.source}: kept {r.kept} + dropped {r.dropped} + quarantined "
                f"{r.quarantined} vs samples {p.samples} (read {r.read})"
            )
    return problems


class ResumeRefused(PlanError):
    """`--resume` of an output written with another scan, input, scan date or policy (nothing was written)."""


# config fields that must match for --resume to continue an output (the rest is how the run executes); the
# scan date must match too, compared as resolved (run.json's), not as configured (None: the latest)
RESUME_FIELDS = ("scan", "input", "policy")


def _remove(uri: str) -> None:
    if storage.exists(uri):
        fs, path = storage.filesystem(uri)
        fs.rm(path)


def _markers(paths: FilterPaths) -> dict[str, dict[str, Any]]:
    """The filter's shard markers (shard id -> its ShardResult)."""
    return {
        name.removesuffix(".json"): json.loads(storage.read_bytes(storage.join(paths.marker_dir, name)))
        for name in storage.list_names(paths.marker_dir, ".json")
    }


def _check_resume(cfg: FilterConfig, paths: FilterPaths, scan_date: str) -> None:
    """Refuse to continue an output written from another scan, input, scan date or policy."""
    cfg_uri = paths.run_file("config.json")
    before = read_json(cfg_uri)
    if before is None:
        return  # nothing to continue: a fresh run
    now = cfg.model_dump(mode="json")
    differ = [f for f in RESUME_FIELDS if before.get(f) != now.get(f)]
    previous_run = read_json(paths.run_file("run.json")) or {}
    prev_date = previous_run.get("scan_date")
    if prev_date not in (None, scan_date):
        differ.append(f"scan_date ({prev_date} != {scan_date})")
    if differ:
        raise ResumeRefused(
            f"--resume: {cfg.output} was written with another {', '.join(differ)} "
            f"(see {cfg_uri}); rerun without --resume to rewrite it. Nothing was written."
        )


def _remove_stale(
    paths: FilterPaths, plans: list[ShardPlan], markers: dict[str, dict[str, Any]]
) -> list[str]:
    """Delete the outputs of shards that have a marker but are no longer in the input (marker LAST)."""
    current = {p.spec.shard_id for p in plans}
    removed = []
    for sid, m in sorted(markers.items()):
        if sid in current:
            continue
        recorded = [paths.file(str(rel)) for rel in (m.get("output"), m.get("quarantine")) if rel]
        for uri in (*recorded, paths.manifest(sid), paths.marker(sid)):
            _remove(uri)
        removed.append(sid)
    return removed


def _still_valid(plan: ShardPlan, marker: dict[str, Any] | None) -> bool:
    """A marker of an earlier attempt counts only if it matches today's plan of the shard."""
    c = plan.counts()
    counts = {
        "samples": c["samples"],
        "kept": c["keep"],
        "dropped": c["drop"],
        "quarantined": c["quarantine"],
    }
    return marker is not None and all(marker.get(k) == v for k, v in counts.items())


def run_filter(
    cfg: FilterConfig,
    map_fn: MapFn,
    *,
    resume: bool = False,
    on_shard: Callable[[str, dict[str, Any], Progress], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole run; returns the stats. Raises PlanError or ErrorBudgetExceeded (before any write) or
    ReconcileError.

    resume: shards whose marker matches today's plan are not rewritten (the output must have been written with
    the same scan, input, scan date and policy: ResumeRefused otherwise). Either way, outputs of shards that
    are no longer in the input are removed. on_shard: `pipeline.runner.run_shards`'s hook. announce: a console
    line, said once every check before the first write has passed (a refusal is then the only line)."""
    log = get_logger("hygiene.filter")
    started = now_iso()
    t0 = time.perf_counter()
    scan_date, plans = plan_run(cfg, map_fn)
    summary = summarize_plans(scan_date, plans)
    t_plan = time.perf_counter() - t0
    # the budget is known from the plans: above it the run fails before anything is written (exit 1)
    budget = cfg.error_budget().check(plan_errors(plans))
    if cfg.dry_run:
        log.info("dry_run", **summary["totals"], shards=len(plans))
        return {"dry_run": True, **summary}
    paths = FilterPaths(cfg.output)
    if resume:
        _check_resume(cfg, paths, scan_date)
    if announce is not None:  # the plans, the budget and --resume are checked: writing starts now
        skipped = sum(p.skip for p in plans)
        announce(
            f"{cfg.input} -> {cfg.output}: {len(plans) - skipped} shard(s) planned from the scan"
            + (f" ({skipped} skipped: scan shard errors)" if skipped else "")
            + "; filtering..."
        )
    _remove(paths.success)  # a rerun is not successful until it reconciles again
    markers = _markers(paths)
    stale = _remove_stale(paths, plans, markers)
    write_json(paths.run_file("config.json"), cfg.model_dump(mode="json"))
    write_json(paths.run_file("policy.json"), cfg.policy.model_dump(mode="json"))
    todo = [p for p in plans if not p.skip]
    by_plan = {p.spec.shard_id: p for p in todo}
    done = {sid for sid, p in by_plan.items() if resume and _still_valid(p, markers.get(sid))}
    progress = run_shards(
        list(by_plan),
        done=done,
        execute=map_shards(map_fn, filter_shard, by_plan, asdict),
        on_shard=on_shard,
    )
    results = [ShardResult(**(progress.summaries.get(sid) or markers[sid])) for sid in by_plan]
    t_filter = time.perf_counter() - t0 - t_plan
    problems = reconcile(todo, results)
    counted = ("samples", "kept", "dropped", "quarantined", "kept_error_rows")
    stats = {
        "scan_date": scan_date,
        "reconciled": not problems,
        "problems": problems,
        "totals": {k: sum(getattr(r, k) for r in results) for k in counted},
        "shards": [asdict(r) for r in results],
        "skipped_shards": [
            {"shard": p.spec.shard_id, "source": p.spec.source, "scan_error": p.scan_shard_error}
            for p in plans
            if p.skip
        ],
    }
    rows = [row for p in todo for row in manifest_rows(p)]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    storage.write_bytes_atomic(paths.manifest_table, parquet_bytes(table))
    write_json(paths.run_file("stats.json"), stats)
    run_info = {
        "started_at": started,
        "finished_at": now_iso(),
        "seconds": {"plan": round(t_plan, 3), "filter": round(t_filter, 3)},
        "engine": cfg.engine,
        "scan_date": scan_date,
        "resumed": resume,
        "shards_skipped": sorted(done),
        "stale_removed": stale,
        "error_budget": budget,
        "versions": {"genscan": __version__, "python": platform.python_version(), "pyarrow": pa.__version__},
    }
    write_json(paths.run_file("run.json"), run_info)
    if problems:
        log.error("not_reconciled", problems=problems)
        raise ReconcileError("accounting does not reconcile:\n  " + "\n  ".join(problems))
    storage.write_bytes_atomic(paths.success, b"")
    log.info("filter_done", **stats["totals"], shards=len(results), skipped=len(stats["skipped_shards"]))
    return stats
