"""Execute a filter run [ours]: plan every shard, refuse on any coverage problem, rewrite shards, reconcile.

Output layout under `<output>/`:
  <same relative name as the source>.tar   cleaned shard: kept samples, members byte-identical to the source
  _quarantine/<name>.tar                   quarantined samples (only for shards that have some)
  _manifest/<shard_id>.jsonl               every removed / quarantined sample, and error rows kept "to report"
  _shards/<shard_id>.json                  the shard's counts, written LAST = the shard's commit marker
  _run/config.json, policy.json            the run's config and policy (written before any shard)
  _run/stats.json                          deterministic per-shard and total counts (reconciled)
  _run/run.json                            timings, versions, scan date, error budget (changes between runs)
  _run/log.jsonl, driver-stderr.log        the job's JSON log and Ray's driver output (jobs/filter_shards.py)
  manifest.parquet                         all manifest rows of the run
  _SUCCESS                                 written only after every shard reconciled
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import pyarrow as pa

from pipeline import __version__, storage
from pipeline.exitcodes import ExitCode, OperatorError
from pipeline.hygiene.copy import ShardWriter
from pipeline.hygiene.plan import PlanError, ShardPlan, plan_shard, resolve_scan_date, shard_specs
from pipeline.hygiene.policy import FilterConfig
from pipeline.logs import get_logger
from pipeline.output import SAMPLE_ERROR_STATUSES, now_iso, parquet_bytes, read_json, write_json
from pipeline.runner import ErrorTally, MapFn, Progress, map_ordered, map_shards, run_shards
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
        quarantine=f"_quarantine/{spec.name}" if quar_w.count else None,
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


def plan_run(cfg: FilterConfig, map_fn: MapFn) -> tuple[str, list[ShardPlan]]:
    """Plan every shard; raise PlanError listing every problem (nothing has been written yet), or
    ErrorBudgetExceeded as soon as the plans that arrived show more failed shards than the budget allows of
    the whole run (the shards not planned yet are cancelled)."""
    scan_date = resolve_scan_date(cfg.scan, cfg.scan_date)
    specs = shard_specs(cfg, scan_date)
    budget = cfg.error_budget()
    seen = ErrorTally()

    def arrived(plan: ShardPlan) -> None:  # as each plan completes: stop once the budget cannot be met
        seen.add(plan_errors([plan]))
        budget.stop_if_hopeless(seen, len(specs))

    plans = map_ordered(map_fn, partial(plan_shard, policy=cfg.policy), specs, on_result=arrived)
    problems = [p for plan in plans for p in plan.problems]
    if problems:
        raise PlanError(
            f"refusing to filter: the scan (scan_date={scan_date}) does not cover the input exactly; "
            f"{len(problems)} problem(s), nothing was written:\n  " + "\n  ".join(problems)
        )
    return scan_date, plans


def plan_errors(plans: list[ShardPlan]) -> ErrorTally:
    """The errors the scan reported for the shards to clean: a scan shard error (the shard is left out with
    on_shard_error skip) and samples with an error status (never checked, yet kept with error_action keep)."""
    return ErrorTally(
        shards=len(plans),
        failed_shards=sum(p.scan_shard_error is not None for p in plans),
        samples=sum(p.samples for p in plans),
        failed_samples=sum(d.status in SAMPLE_ERROR_STATUSES for p in plans for d in p.decisions),
    )


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


def reconcile(plans: list[ShardPlan], results: list[ShardResult]) -> list[str]:
    """Every executed shard: kept + dropped + quarantined == samples in the source == samples read."""
    problems = []
    by_id = {r.shard_id: r for r in results}
    for p in plans:
        if p.skip:
            continue
        r = by_id.get(p.spec.shard_id)
        if r is None:
            problems.append(f"{p.spec.source}: no result")
            continue
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


def _markers(output: str) -> dict[str, dict[str, Any]]:
    """The filter's shard markers under `output` (shard id -> its ShardResult)."""
    marker_dir = storage.join(output, "_shards")
    return {
        name.removesuffix(".json"): json.loads(storage.read_bytes(storage.join(marker_dir, name)))
        for name in storage.list_names(marker_dir, ".json")
    }


def _check_resume(cfg: FilterConfig, scan_date: str) -> None:
    """Refuse to continue an output written from another scan, input, scan date or policy."""
    cfg_uri = storage.join(cfg.output, "_run", "config.json")
    before = read_json(cfg_uri)
    if before is None:
        return  # nothing to continue: a fresh run
    now = cfg.model_dump(mode="json")
    differ = [f for f in RESUME_FIELDS if before.get(f) != now.get(f)]
    previous_run = read_json(storage.join(cfg.output, "_run", "run.json")) or {}
    prev_date = previous_run.get("scan_date")
    if prev_date not in (None, scan_date):
        differ.append(f"scan_date ({prev_date} != {scan_date})")
    if differ:
        raise ResumeRefused(
            f"--resume: {cfg.output} was written with another {', '.join(differ)} "
            f"(see {cfg_uri}); rerun without --resume to rewrite it. Nothing was written."
        )


def _remove_stale(cfg: FilterConfig, plans: list[ShardPlan], markers: dict[str, dict[str, Any]]) -> list[str]:
    """Delete the outputs of shards that have a marker but are no longer in the input (marker LAST)."""
    current = {p.spec.shard_id for p in plans}
    removed = []
    for sid, m in sorted(markers.items()):
        if sid in current:
            continue
        for rel in (m.get("output"), m.get("quarantine"), f"_manifest/{sid}.jsonl", f"_shards/{sid}.json"):
            if rel:
                _remove(storage.join(cfg.output, *str(rel).split("/")))
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
    if resume:
        _check_resume(cfg, scan_date)
    if announce is not None:  # the plans, the budget and --resume are checked: writing starts now
        skipped = sum(p.skip for p in plans)
        announce(
            f"{cfg.input} -> {cfg.output}: {len(plans) - skipped} shard(s) planned from the scan"
            + (f" ({skipped} skipped: scan shard errors)" if skipped else "")
            + "; filtering..."
        )
    success = storage.join(cfg.output, "_SUCCESS")
    _remove(success)  # a rerun is not successful until it reconciles again
    markers = _markers(cfg.output)
    stale = _remove_stale(cfg, plans, markers)
    run_dir = storage.join(cfg.output, "_run")
    write_json(storage.join(run_dir, "config.json"), cfg.model_dump(mode="json"))
    write_json(storage.join(run_dir, "policy.json"), cfg.policy.model_dump(mode="json"))
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
    problems = reconcile(plans, results)
    by_id = {r.shard_id: r for r in results}
    counted = ("samples", "kept", "dropped", "quarantined", "kept_error_rows")
    stats = {
        "scan_date": scan_date,
        "reconciled": not problems,
        "problems": problems,
        "totals": {k: sum(getattr(r, k) for r in results) for k in counted},
        "shards": [asdict(by_id[p.spec.shard_id]) for p in plans if p.spec.shard_id in by_id],
        "skipped_shards": [
            {"shard": p.spec.shard_id, "source": p.spec.source, "scan_error": p.scan_shard_error}
            for p in plans
            if p.skip
        ],
    }
    rows = [row for p in todo for row in manifest_rows(p)]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    storage.write_bytes_atomic(storage.join(cfg.output, "manifest.parquet"), parquet_bytes(table))
    write_json(storage.join(run_dir, "stats.json"), stats)
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
    write_json(storage.join(run_dir, "run.json"), run_info)
    if problems:
        log.error("not_reconciled", problems=problems)
        raise ReconcileError("accounting does not reconcile:\n  " + "\n  ".join(problems))
    storage.write_bytes_atomic(success, b"")
    log.info("filter_done", **stats["totals"], shards=len(results), skipped=len(stats["skipped_shards"]))
    return stats
