"""Nightly hygiene filter: drop / quarantine generated images from WebDataset shards using a scan.

    python jobs/filter_shards.py --scan out/scan --input data/shards --output data/clean \
        [--policy policy.json | --threshold 0.7 --rule unknown=quarantine --rule upconv=drop@0.9 ...] [--dry-run]
        [--rule verdict:ai_declared=drop]   # on the scan's provenance_verdict (docs/provenance.md), applied first
        [--resume]   # keep shards already filtered with the same scan, input, scan date and policy

Exit codes: 0 success (every shard reconciled), 1 error budget exceeded (more than --max-shard-error-rate of the
shards or --max-sample-error-rate of the samples have a scan error; nothing written), 2 bad config/policy, 3 refused (the scan does not cover the
input exactly; nothing written), 4 failed while writing (accounting did not reconcile, or a source image is not
the one the scan hashed; that shard is not committed, no _SUCCESS); storage preflight (scan, input, output; before
any work): 3 not found, 5 access denied, 6 no credentials, 7 cannot connect (README, "Exit codes"). A rule naming
a label the scan's detector does not have is a config error (2). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from typing import Any

from pipeline import storage
from pipeline.hygiene.plan import PlanError
from pipeline.hygiene.policy import FilterConfig, FilterPolicy
from pipeline.hygiene.run import ReconcileError, SourceChangedError, run_filter
from pipeline.preflight import Location, StorageError, check_filter_policy, check_storage
from pipeline.runner import ErrorBudgetExceeded, MapFn, local_map
from pipeline.settings import ConfigError

VERDICT_PREFIX = "verdict:"


def parse_rule(text: str) -> dict[str, Any]:
    """`GEN=ACTION` or `GEN=ACTION@THRESHOLD` -> a GeneratorRule dict; `verdict:VERDICT=ACTION` -> a
    ProvenanceRule dict (both validated by the policy model)."""
    if text.startswith(VERDICT_PREFIX):
        verdict, sep, action = text.removeprefix(VERDICT_PREFIX).partition("=")
        if not sep or "@" in action:
            raise ConfigError(f"provenance_rules: {text!r} is not verdict:VERDICT=ACTION")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", required=True, help="scan output root (scan_date=*/ and _shards/)")
    ap.add_argument("--input", required=True, help="source shards, exactly as given to the scan")
    ap.add_argument("--output", required=True)
    ap.add_argument("--scan-date", default=None, help="YYYY-MM-DD; default: the latest partition")
    ap.add_argument("--policy", default=None, help="FilterPolicy JSON file (exclusive with the inline flags)")
    ap.add_argument(
        "--threshold", type=float, default=None, help="explicit p_fake threshold (default: is_fake)"
    )
    ap.add_argument("--fake-action", default=None, help="drop | quarantine (default drop)")
    ap.add_argument("--error-action", default=None, help="keep | drop | quarantine error rows (default keep)")
    ap.add_argument("--on-shard-error", default=None, help="fail | skip (default fail)")
    ap.add_argument(
        "--rule",
        action="append",
        default=[],
        help="GEN=ACTION[@THRESHOLD] or verdict:VERDICT=ACTION (provenance_verdict, e.g. "
        "verdict:ai_declared=drop), repeatable",
    )
    ap.add_argument("--dry-run", action="store_true", help="print what would happen, write nothing")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep shards whose marker matches this run's plan (same scan, input, scan date, policy)",
    )
    ap.add_argument("--engine", default="local", help="local | ray (one Ray task per shard)")
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="JSON logs and Ray's output on stderr (default: one progress line; the JSON logs go to "
        "<output>/_run/log.jsonl)",
    )
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--task-cpus", type=float, default=0.5)
    ap.add_argument(
        "--max-shard-error-rate",
        type=float,
        default=None,
        help="fail (exit 1) when more than this share of shards has a scan shard error (default 0.5)",
    )
    ap.add_argument(
        "--max-sample-error-rate",
        type=float,
        default=None,
        help="fail (exit 1) when more than this share of samples has a scan error status (default 0.25)",
    )
    return ap.parse_args(argv)


def build_config(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> FilterConfig:
    args = args if args is not None else parse_args(argv)

    inline = {
        "threshold": args.threshold,
        "fake_action": args.fake_action,
        "error_action": args.error_action,
        "on_shard_error": args.on_shard_error,
    }
    inline = {k: v for k, v in inline.items() if v is not None}
    if args.rule:
        rules = [parse_rule(r) for r in args.rule]
        generator_rules = [r for r in rules if "generator" in r]
        provenance_rules = [r for r in rules if "verdict" in r]
        if generator_rules:
            inline["generator_rules"] = generator_rules
        if provenance_rules:
            inline["provenance_rules"] = provenance_rules
    if args.policy and inline:
        raise ConfigError(
            f"--policy and inline policy flags ({', '.join(sorted(inline))}) are exclusive: "
            "put everything in the policy file"
        )
    policy = (
        FilterPolicy.from_file(args.policy) if args.policy else FilterPolicy.parse(inline, source="flags")
    )
    budget = {
        k: getattr(args, k)
        for k in ("max_shard_error_rate", "max_sample_error_rate")
        if getattr(args, k) is not None
    }
    return FilterConfig.parse(
        {
            **budget,
            "scan": args.scan,
            "input": args.input,
            "output": args.output,
            "scan_date": args.scan_date,
            "policy": policy.model_dump(),
            "dry_run": args.dry_run,
            "engine": args.engine,
            "ray_address": args.ray_address,
            "task_num_cpus": args.task_cpus,
        },
        source="command line",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.console import Console
    from pipeline.logs import RunLog

    # the JSON logs go to the run log (published as <output>/_run/log.jsonl); stderr shows the console only
    with Console(args.verbose, "filter") as console, RunLog(tee=console.echo()) as runlog:
        runlog.attach(console.stderr_log, "driver-stderr.log")  # Ray's own driver output, kept beside the log
        return _main(args, console, runlog)


def _main(args: argparse.Namespace, console: Any, runlog: Any) -> int:
    resume = bool(args.resume)  # how to run, not what: not part of the saved config
    try:
        cfg = build_config(args=args)
    except ConfigError as exc:
        console.line(f"config error: {exc}")
        return 2
    try:  # before any work: every location reachable, the rules name the scan's labels
        check_storage(
            [Location("scan output", cfg.scan), Location("input", cfg.input)],
            [] if cfg.dry_run else [Location("output", cfg.output)],
        )
        check_filter_policy(cfg.scan, cfg.scan_date, cfg.policy)
    except StorageError as exc:
        console.line(f"storage error: {exc}")
        return exc.exit_code
    except ConfigError as exc:
        console.line(f"config error: {exc}")
        return 2
    except PlanError as exc:
        console.line(f"refused: {exc}")
        return 3
    if not cfg.dry_run:
        runlog.destination = storage.join(cfg.output, "_run", "log.jsonl")
    console.status(
        f"{cfg.input} -> {cfg.output}: planning every shard from the scan"
        + (", starting Ray" if cfg.engine == "ray" else "")
        + "..."
    )
    progress = console.shards("filter", images_key="samples")
    try:
        with contextlib.ExitStack() as stack:
            map_fn: MapFn = local_map
            if cfg.engine == "ray":  # the one Ray-aware part: shards filtered as Ray tasks
                from pipeline.engine import cluster
                from pipeline.engine.filter import ray_map

                stack.enter_context(cluster.session(cfg.ray_address))
                map_fn = functools.partial(ray_map, num_cpus=cfg.task_num_cpus)
            stats = run_filter(cfg, map_fn, resume=resume, on_shard=progress)
    except PlanError as exc:
        runlog.discard()  # refused before writing: the output stays untouched
        console.line(f"refused: {exc}")
        return 3
    except ErrorBudgetExceeded as exc:
        runlog.discard()
        console.line(f"filter failed: {exc}; nothing was written")
        return 1
    except (ReconcileError, SourceChangedError) as exc:
        console.line(f"failed: {exc} (log: {runlog.publish()})")
        return 4
    finally:
        console.end_progress()
    if cfg.dry_run:
        runlog.discard()
    else:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
