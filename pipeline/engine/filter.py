"""Ray tasks for the hygiene filter: one task per shard [ours]. The only Ray-aware part of the filter; the
work itself is `pipeline.hygiene` plain functions (`plan_shard`, `filter_shard`), so the local and Ray runs
produce identical bytes. Ray itself is attached or started by the entry point through
`pipeline.engine.cluster.session` (credentials: never through runtime_env)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import ray

from pipeline.logs import get_logger

T = TypeVar("T")
R = TypeVar("R")


def _apply(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def ray_map(
    fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 0.5, max_retries: int = 2
) -> list[R]:
    """`[fn(x) for x in items]` as Ray tasks, results in input order. A task that fails after its retries
    fails the whole map (the driver exits non-zero). Shard writes are idempotent, so retries are safe."""
    if not items:
        return []
    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False)(_apply)
    fn_ref = ray.put(fn)
    refs = [remote.remote(fn_ref, x) for x in items]
    get_logger("engine.filter").info("tasks_submitted", tasks=len(refs), num_cpus=num_cpus)
    return ray.get(refs)


__all__ = ["ray_map"]
