"""Ray tasks for the hygiene filter: one task per shard [ours]. The only Ray-aware part of the filter; the
work itself is `pipeline.hygiene` plain functions (`plan_shard`, `filter_shard`), so the local and Ray runs
produce identical bytes. Ray itself is attached or started by the entry point through
`pipeline.engine.cluster.session` (credentials: never through runtime_env)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import ray

from pipeline.logs import get_logger

T = TypeVar("T")
R = TypeVar("R")

MAX_RETRIES = 2  # per task (a task that still fails fails the run)
MAX_IN_FLIGHT = 512  # tasks submitted and not yet collected


def _apply(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def ray_map(fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float) -> Iterator[tuple[int, R]]:
    """`pipeline.runner.MapFn` on Ray: `fn(x)` for each item as a Ray task, `(index, result)` yielded as each
    task completes (`ray.wait`), so the caller's progress line and error budget see every shard when it is
    done. At most MAX_IN_FLIGHT tasks are in flight at once (more than a cluster runs at a time; Ray queues
    the rest), so a run over a million shards neither holds a million task references nor waits on them all.
    Closing the iterator (a run stopped by its error budget) cancels the tasks not finished. A task that fails
    after its retries raises here (the driver exits non-zero). Shard writes are idempotent, so retries are
    safe."""
    if not items:
        return
    log = get_logger("engine.filter")
    remote = ray.remote(num_cpus=num_cpus, max_retries=MAX_RETRIES, retry_exceptions=False)(_apply)
    fn_ref = ray.put(fn)
    pending: dict[ray.ObjectRef, int] = {}
    submitted = 0
    log.info("tasks_submitted", tasks=len(items), num_cpus=num_cpus, max_in_flight=MAX_IN_FLIGHT)
    try:
        while submitted < len(items) or pending:
            while submitted < len(items) and len(pending) < MAX_IN_FLIGHT:
                pending[remote.remote(fn_ref, items[submitted])] = submitted
                submitted += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)
    finally:
        if pending:
            log.info("tasks_cancelled", tasks=len(pending), submitted=submitted, items=len(items))
            for ref in pending:
                ray.cancel(ref)
