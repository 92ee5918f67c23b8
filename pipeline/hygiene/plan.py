"""Plan a filter run [ours]: find each input shard's scan rows, check the scan covers the shard exactly, and
decide keep / drop / quarantine for every sample. Reads only (scan Parquet, completion markers, tar headers);
nothing here writes, so every coverage problem is reported before the first output byte."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow.parquet as pq

from pipeline import output, storage
from pipeline.exitcodes import ExitCode, OperatorError
from pipeline.hygiene.policy import FilterConfig, FilterPolicy
from pipeline.logs import get_logger
from pipeline.runner import ErrorTally, MapFn, map_ordered
from pipeline.shards import index_shard

SCAN_COLUMNS = [
    "shard",
    "key",
    "status",
    "error",
    "p_fake",
    "is_fake",
    "threshold",
    "top_generator",
    "sha256",
]
# read when the file has it (scan schema v3); older files' rows have no verdict
OPTIONAL_SCAN_COLUMNS = ["provenance_verdict"]


class PlanError(OperatorError, RuntimeError):
    """The scan does not cover the input exactly (or the input cannot be read); raised before any write."""

    exit_code = ExitCode.NOT_FOUND
    label = "refused"


@dataclass(frozen=True)
class ShardSpec:
    """Where one shard's inputs and outputs live."""

    source: str
    shard_id: str
    name: str  # path relative to the input root, e.g. "part1/shard-000000.tar"
    scan_file: str
    scan_marker: str
    output: str
    quarantine: str
    manifest: str
    marker: str


@dataclass(frozen=True)
class FilterPaths:
    """THE filter's output layout, under its `output` root:

    <same relative name as the source>.tar  cleaned shard: kept samples, members byte-identical to the source
    _quarantine/<name>.tar                  quarantined samples (only for shards that have some)
    _manifest/<shard_id>.jsonl              every removed / quarantined sample, error rows kept "to report"
    _shards/<shard_id>.json                 the shard's counts, written LAST = the shard's commit marker
    _run/config.json, policy.json           the run's config and policy (written before any shard)
    _run/stats.json                         deterministic per-shard and total counts (reconciled)
    _run/run.json                           timings, versions, scan date, error budget (changes between runs)
    _run/log.jsonl, driver-stderr.log       the job's JSON log and Ray's driver output (jobs/filter_shards.py)
    manifest.parquet                        all manifest rows of the run
    _SUCCESS                                written only after every shard reconciled

    A shard's marker records its cleaned and quarantine shards relative to the root, '/'-separated (`file`
    resolves them), so an output can be moved."""

    output: str

    def file(self, rel: str) -> str:
        return storage.join(self.output, *rel.split("/"))

    @staticmethod
    def quarantine_name(name: str) -> str:
        return f"_quarantine/{name}"

    def manifest(self, shard_id: str) -> str:
        return self.file(f"_manifest/{shard_id}.jsonl")

    @property
    def marker_dir(self) -> str:
        return self.file("_shards")

    def marker(self, shard_id: str) -> str:
        return storage.join(self.marker_dir, f"{shard_id}.json")

    def run_file(self, name: str) -> str:
        return self.file(f"_run/{name}")

    @property
    def manifest_table(self) -> str:
        return self.file("manifest.parquet")

    @property
    def success(self) -> str:
        return self.file("_SUCCESS")


@dataclass(frozen=True)
class Decision:
    key: str
    action: str  # keep | drop | quarantine
    reason: str  # "" (plain keep) | fake | generator:<name> | provenance:<verdict> | error:<status>
    status: str
    p_fake: float | None
    top_generator: str | None
    threshold: float | None  # the threshold the decision used (None: the scan's is_fake column)
    error: str | None
    sha256: str | None = None  # the scan's hash of the image member (checked when the shard is rewritten)


@dataclass
class ShardPlan:
    spec: ShardSpec
    samples: int = 0
    decisions: list[Decision] = field(default_factory=list)  # aligned with the source's samples, tar order
    non_sample_members: int = 0
    problems: list[str] = field(default_factory=list)
    scan_shard_error: str | None = None
    skip: bool = False

    def counts(self) -> dict[str, int]:
        c = Counter(d.action for d in self.decisions)
        return {"samples": self.samples, "keep": c["keep"], "drop": c["drop"], "quarantine": c["quarantine"]}


def resolve_scan_date(scan_root: str, requested: str | None) -> str:
    """The scan date to filter by (the latest partition when None); PlanError when it is not there."""
    try:
        return output.resolve_scan_date(scan_root, requested)
    except output.ScanOutputError as exc:
        raise PlanError(str(exc)) from exc


def shard_specs(cfg: FilterConfig, scan_date: str) -> list[ShardSpec]:
    specs = []
    scan = output.RunPaths(cfg.scan, scan_date)
    out = FilterPaths(cfg.output)
    try:
        uris = storage.list_shards(cfg.input)
    except FileNotFoundError as exc:  # no input, or no .tar under it: nothing the scan could cover
        raise PlanError(f"input: {exc}") from exc
    for uri in uris:
        sid = storage.shard_id(uri, cfg.input)
        name = storage.relative_name(uri, cfg.input)
        specs.append(
            ShardSpec(
                source=uri,
                shard_id=sid,
                name=name,
                scan_file=scan.parquet(sid),
                scan_marker=scan.marker(sid),
                output=out.file(name),
                quarantine=out.file(out.quarantine_name(name)),
                manifest=out.manifest(sid),
                marker=out.marker(sid),
            )
        )
    clash = {s.output for s in specs} & {s.source for s in specs}
    if clash:
        raise PlanError(f"output shards would overwrite source shards: {sorted(clash)[:5]}")
    ids = Counter(s.shard_id for s in specs)
    dup = [k for k, n in ids.items() if n > 1]
    if dup:
        raise PlanError(f"input shards map to the same shard id: {dup}")
    return specs


def _score(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


def decide(row: dict[str, Any], policy: FilterPolicy) -> Decision:
    """The policy applied to one scan row (see FilterPolicy / GeneratorRule for the order of rules)."""
    key, status = row["key"], row["status"]
    p_fake = _score(row.get("p_fake"))
    gen = row.get("top_generator")
    err = row.get("error")

    def make(action: str, reason: str, threshold: float | None) -> Decision:
        return Decision(key, action, reason, status, p_fake, gen, threshold, err, row.get("sha256"))

    verdict = row.get("provenance_verdict")
    for prule in policy.provenance_rules:
        if verdict is not None and prule.verdict == verdict:
            return make(prule.action, f"provenance:{verdict}", None)
    if status != "ok" or p_fake is None:
        reason = f"error:{status}" if status != "ok" else "error:missing_score"
        return make(policy.error_action, reason, None)
    base_threshold = policy.threshold
    base_flag = p_fake >= base_threshold if base_threshold is not None else bool(row.get("is_fake"))
    for rule in policy.generator_rules:
        if rule.generator == gen:
            threshold = rule.threshold if rule.threshold is not None else base_threshold
            flagged = p_fake >= rule.threshold if rule.threshold is not None else base_flag
            return (
                make(rule.action, f"generator:{gen}", threshold) if flagged else make("keep", "", threshold)
            )
    if base_flag:
        return make(policy.fake_action, "fake", base_threshold)
    return make("keep", "", base_threshold)


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in items[:n])
    return shown + (f", … ({len(items)} in all)" if len(items) > n else "")


def plan_shard(spec: ShardSpec, policy: FilterPolicy) -> ShardPlan:
    """Check one shard against its scan and decide every sample. Problems are collected, never raised."""
    plan = ShardPlan(spec=spec)
    if not storage.exists(spec.scan_file):
        plan.problems.append(f"{spec.source}: not covered by the scan (no {spec.scan_file})")
        return plan
    if not storage.exists(spec.scan_marker):
        plan.problems.append(
            f"{spec.source}: scan of this shard is incomplete (no completion marker {spec.scan_marker})"
        )
        return plan
    fs, path = storage.filesystem(spec.scan_file)
    table = pq.read_table(path, filesystem=fs)
    missing_cols = [c for c in SCAN_COLUMNS if c not in table.column_names]
    if missing_cols:
        plan.problems.append(f"{spec.scan_file}: not a scan file, missing columns {missing_cols}")
        return plan
    rows = table.select(
        SCAN_COLUMNS + [c for c in OPTIONAL_SCAN_COLUMNS if c in table.column_names]
    ).to_pylist()
    shard_errors = [r for r in rows if r["status"] == output.SHARD_ERROR]
    sample_rows = [r for r in rows if r["status"] != output.SHARD_ERROR]
    if shard_errors:
        plan.scan_shard_error = shard_errors[0]["error"] or "shard_error"
        if policy.on_shard_error == "skip":
            plan.skip = True
            return plan
        plan.problems.append(
            f"{spec.source}: the scan could not read this shard to its end ({plan.scan_shard_error}); "
            "fix or remove the shard, or leave it out of the output with --on-shard-error skip (in a "
            'policy file: "on_shard_error": "skip")'
        )
        return plan
    wrong = sorted({str(r["shard"]) for r in rows if r["shard"] != spec.shard_id})
    if wrong:
        plan.problems.append(
            f"{spec.scan_file}: rows name other shard ids {wrong} (expected {spec.shard_id!r})"
        )
        return plan
    try:
        index = index_shard(spec.source)
    except Exception as exc:  # noqa: BLE001 - any read failure is a planning problem, reported with the shard
        plan.problems.append(f"{spec.source}: source shard cannot be read ({type(exc).__name__}: {exc})")
        return plan
    plan.samples = len(index.samples)
    plan.non_sample_members = len(index.skipped)
    scan_keys = Counter(r["key"] for r in sample_rows)
    source_keys = Counter(sample.key for sample in index.samples)
    if scan_keys != source_keys:
        not_scanned = sorted((source_keys - scan_keys).elements())
        not_in_source = sorted(str(k) for k in (scan_keys - source_keys).elements())
        detail = []
        if not_scanned:
            detail.append(f"not in the scan: {_preview(not_scanned)}")
        if not_in_source:
            detail.append(f"in the scan but not in the source: {_preview(not_in_source)}")
        plan.problems.append(
            f"{spec.source}: scan covers the shard only partially — {len(sample_rows)} scan rows vs "
            f"{plan.samples} samples in the source; " + "; ".join(detail)
        )
        return plan
    # Pair the i-th occurrence of a key in the source with its i-th scan row (keys are normally unique).
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reversed(sample_rows):
        by_key[r["key"]].append(r)
    plan.decisions = [decide(by_key[sample.key].pop(), policy) for sample in index.samples]
    return plan


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
            f"the scan (scan_date={scan_date}) does not cover the input exactly; "
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
        failed_samples=sum(d.status in output.SAMPLE_ERROR_STATUSES for p in plans for d in p.decisions),
    )


def check_filter_policy(scan: str, scan_date: str | None, policy: FilterPolicy) -> None:
    """The policy's generator rules must name labels of the scan's detector (`_run/<date>/detector.json`),
    else ConfigError naming the known labels. A scan without detector.json (not written by this project's
    scan) cannot be checked: logged, not refused."""
    if not policy.generator_rules:
        return
    day = resolve_scan_date(scan, scan_date)
    uri = output.RunPaths(scan, day).run_file("detector.json")
    info = output.read_json(uri)
    if not info or not info.get("labels"):
        get_logger("hygiene.plan").warning("policy_labels_unchecked", detector_json=uri)
        return
    policy.check_labels(
        [str(x) for x in info["labels"]],
        where=f"the scan's detector {info.get('detector_id', '?')} (scan_date={day})",
    )
