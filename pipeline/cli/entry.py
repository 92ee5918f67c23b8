"""What every job's `main` shares [ours]: operator errors -> ONE console line + THE exit code, and (for the
jobs without a progress console of their own) JSON logs kept off the console.

    @job_main("report", quiet=True)
    def main(argv=None) -> int: ...

quiet: the JSON log lines go to a run log (`pipeline.logs.RunLog`), published where the job says
(`RunLog.set_destination(...)`, e.g. `<output>/log.jsonl`) and otherwise dropped; with `--verbose`,
GENSCAN_VERBOSE=1 or under `ray job submit` they are also echoed to stderr. The scan, the filter and training
open their own console and run log (progress lines, Ray's output).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pipeline.console import Console, submitted_job, verbose
from pipeline.exitcodes import OperatorError, one_line
from pipeline.logs import RunLog

if TYPE_CHECKING:
    from pipeline.runner import MapFn


def job_main(job: str, *, quiet: bool = False) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a job's `main(argv=None)`: an OperatorError that reaches it (a usage mistake, a config or
    storage error not handled closer to where it happened) is ONE stderr line and the exit code of THE table
    (`pipeline.exitcodes`), never a traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            loud = verbose() or "--verbose" in (sys.argv[1:] if argv is None else argv) or submitted_job()
            logs = RunLog(tee=sys.stderr if loud else None) if quiet else contextlib.nullcontext()
            with logs:
                try:
                    return int(main(argv))
                except OperatorError as exc:
                    sys.stderr.write(one_line(exc, job) + "\n")
                    return int(exc.exit_code)

        return run

    return wrap


def with_console(job: str, loud: bool, body: Callable[[Any, Any], int]) -> int:
    """Run `body(console, runlog)` with the job's console (status lines and ONE progress line on stderr;
    `pipeline.console.Console`) and its run log (every JSON log line, published beside the job's outputs, with
    Ray's own driver output attached as driver-stderr.log; dropped at the end when the job never set where it
    goes, e.g. refused before starting): the scan, the filter, the re-score, training."""
    with Console(loud, job) as console, RunLog(tee=console.echo()) as runlog:
        runlog.attach(console.stderr_log, "driver-stderr.log")
        return body(console, runlog)


@contextlib.contextmanager
def shard_map(engine: str, ray_address: str | None, task_num_cpus: float) -> Iterator[MapFn]:
    """The executor a job of one task per shard (the filter, the re-score) runs its shards with: in process
    (`local_map`), or for `engine="ray"` one Ray task of `task_num_cpus` CPUs per shard inside the job's
    cluster session (attached or started here, the one Ray-aware part of these jobs)."""
    if engine != "ray":
        from pipeline.runner import local_map

        yield local_map
        return
    from pipeline.engine import cluster
    from pipeline.engine.filter import ray_map

    with cluster.session(ray_address):
        yield functools.partial(ray_map, num_cpus=task_num_cpus)
