"""Nightly hygiene filter: drop / quarantine generated images from WebDataset shards using a scan.

    python jobs/filter_shards.py --scan out/scan --input data/shards --output data/clean \
        [--policy policy.json | --threshold 0.7 --rule unknown=quarantine --rule upconv=drop@0.9 ...]
        [--dry-run]
        # on the scan's provenance_verdict (docs/provenance.md), applied first
        [--rule verdict:ai_declared=drop]
        # keep shards already filtered with the same scan, input, scan date and policy
        [--resume]

Every FilterConfig and FilterPolicy field is a flag (see --help); `--rule` adds a generator rule; a policy
file (`--policy`) excludes the inline policy flags. A rule naming a label the scan's detector does not have is
a configuration error. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.entry import job_main, shard_map, with_console
from pipeline.cli.flags import JobParser, ModelFlags, absolute_paths, add_model_flags
from pipeline.exitcodes import ExitCode, OperatorError, help_epilog, one_line
from pipeline.hygiene.plan import FilterPaths, PlanError, check_filter_policy
from pipeline.hygiene.policy import FilterConfig, FilterPolicy
from pipeline.hygiene.run import run_filter
from pipeline.preflight import Location, check_storage
from pipeline.runner import ErrorBudgetExceeded
from pipeline.settings import ConfigError

VERDICT_PREFIX = "verdict:"


def parse_rule(text: str) -> dict[str, Any]:
    """`GEN=ACTION` or `GEN=ACTION@THRESHOLD` -> a GeneratorRule dict; `verdict:VERDICT=ACTION` -> a
    ProvenanceRule dict (both validated by the policy model)."""
    if text.startswith(VERDICT_PREFIX):
        verdict, sep, action = text.removeprefix(VERDICT_PREFIX).partition("=")
        if not sep or "@" in action:
            raise ConfigError(f"--rule: {text!r} is not verdict:VERDICT=ACTION")
        return {"verdict": verdict, "action": action}
    gen, sep, rest = text.partition("=")
    if not sep:
        raise ConfigError(f"generator_rules: {text!r} is not GEN=ACTION[@THRESHOLD]")
    action, at, thr = rest.partition("@")
    rule: dict[str, Any] = {"generator": gen, "action": action}
    if at:
        try:
            rule["threshold"] = float(thr)
        except ValueError as exc:
            raise ConfigError(f"generator_rules: threshold {thr!r} in {text!r} is not a number") from exc
    return rule


def _parser() -> tuple[JobParser, ModelFlags, ModelFlags]:
    ap = JobParser(description=__doc__, epilog=help_epilog("filter_shards"))
    ap.add_argument(
        "--policy", default=None, help="FilterPolicy JSON file (exclusive with the inline policy flags)"
    )
    ap.add_argument(
        "--rule",
        action="append",
        default=[],
        help="GEN=ACTION[@THRESHOLD] or verdict:VERDICT=ACTION (provenance_verdict, e.g. "
        "verdict:ai_declared=drop), repeatable",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep shards whose marker matches this run's plan (same scan, input, scan date, policy)",
    )
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="JSON logs and Ray's output on stderr (default: one progress line; the JSON logs go to "
        "<output>/_run/log.jsonl)",
    )
    run = add_model_flags(
        ap.add_argument_group("run settings (FilterConfig)"),
        FilterConfig,
        skip={"policy"},
        names={"task_num_cpus": "task-cpus"},
    )
    policy = add_model_flags(
        ap.add_argument_group("policy (FilterPolicy; or --policy FILE)"),
        FilterPolicy,
        skip={"generator_rules", "provenance_rules"},
    )
    return ap, run, policy


def build_config(args: argparse.Namespace) -> FilterConfig:
    _, run_flags, policy_flags = _parser()
    inline = policy_flags.given(args)
    rules = [parse_rule(r) for r in args.rule]
    if generator_rules := [r for r in rules if "generator" in r]:
        inline["generator_rules"] = generator_rules
    if provenance_rules := [r for r in rules if "verdict" in r]:
        inline["provenance_rules"] = provenance_rules
    if args.policy and inline:
        flags = ", ".join(sorted({policy_flags.flags.get(k, "--rule") for k in inline}))
        raise ConfigError(
            f"--policy and inline policy flags ({flags}) are exclusive: put everything in the policy file"
        )
    typed = {**policy_flags.named(args), "generator_rules": "--rule", "provenance_rules": "--rule"}
    policy = (
        FilterPolicy.from_file(args.policy, field="--policy")
        if args.policy
        else FilterPolicy.parse(inline, source="command line", names=typed)
    )
    data = run_flags.given(args)
    absolute_paths(data, ("scan", "input", "output"))
    return FilterConfig.parse(
        {**data, "policy": policy.model_dump()},
        source="command line",
        names=run_flags.named(args),
    )


@job_main("filter")
def main(argv: list[str] | None = None) -> int:
    args = _parser()[0].parse_args(argv)
    return with_console("filter", args.verbose, lambda console, runlog: _main(args, console, runlog))


def _main(args: argparse.Namespace, console: Any, runlog: Any) -> int:
    resume = bool(args.resume)  # how to run, not what: not part of the saved config
    cfg = build_config(args)
    # before any work: every location reachable, the rules name the scan's labels
    check_storage(
        [Location("scan output", cfg.scan), Location("input", cfg.input)],
        [] if cfg.dry_run else [Location("output", cfg.output)],
    )
    check_filter_policy(cfg.scan, cfg.scan_date, cfg.policy)
    if not cfg.dry_run:
        runlog.destination = FilterPaths(cfg.output).run_file("log.jsonl")
    progress = console.shards("filter", images_key="samples")
    try:
        # the status line comes once the plans are checked: a refusal found while planning is the only line
        with shard_map(cfg.engine, cfg.ray_address, cfg.task_num_cpus) as map_fn:
            stats = run_filter(cfg, map_fn, resume=resume, on_shard=progress, announce=console.status)
    except (PlanError, ErrorBudgetExceeded) as exc:  # decided from the plans, before any write
        runlog.discard()  # the output stays untouched
        suffix = "; nothing was written" if isinstance(exc, ErrorBudgetExceeded) else ""
        console.line(one_line(exc, "filter") + suffix)
        return exc.exit_code
    except OperatorError as exc:  # failed while writing: that shard is not committed, no _SUCCESS
        console.line(f"{one_line(exc, 'filter')} (log: {runlog.publish()})")
        return exc.exit_code
    finally:
        console.end_progress()
    if not cfg.dry_run:
        t = stats["totals"]
        console.line(
            f"filter succeeded: {len(stats['shards'])} shards, {t['samples']} samples: kept {t['kept']}, "
            f"dropped {t['dropped']}, quarantined {t['quarantined']}; log: {runlog.publish()}"
        )
    print(
        json.dumps(
            stats
            if cfg.dry_run
            else {
                "output": cfg.output,
                **stats["totals"],
                "shards": len(stats["shards"]),
                "skipped_shards": len(stats["skipped_shards"]),
            },
            indent=2,
        )
    )
    return ExitCode.OK
