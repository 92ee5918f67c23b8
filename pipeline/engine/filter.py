"""Ray tasks for the hygiene filter: one task per shard [ours]. The only Ray-aware part of the filter; the
work itself is `pipeline.hygiene` plain functions (`plan_shard`, `filter_shard`), so the local and Ray runs
produce identical bytes."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import ray

from pipeline.logs import get_logger

T = TypeVar("T")
R = TypeVar("R")

# never secrets: Ray logs runtime_envs (see pipeline.engine.cluster.SECRET_NAMES); workers inherit them instead
_FORWARD_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "GENSCAN_LOG_LEVEL")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to `address` (or RAY_ADDRESS, as under `ray job submit`), else start a local Ray.
    AWS_* variables are forwarded to workers (they take their environment when they start)."""
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
    kwargs: dict = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)


def _apply(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def ray_map(fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 0.5, max_retries: int = 2) -> list[R]:
    """`[fn(x) for x in items]` as Ray tasks, results in input order. A task that fails after its retries
    fails the whole map (the driver exits non-zero). Shard writes are idempotent, so retries are safe."""
    if not items:
        return []
    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False)(_apply)
    fn_ref = ray.put(fn)
    refs = [remote.remote(fn_ref, x) for x in items]
    get_logger("engine.filter").info("tasks_submitted", tasks=len(refs), num_cpus=num_cpus)
    return ray.get(refs)


def make_ray_map(address: str | None, num_cpus: float) -> Callable[[Callable[[T], R], Sequence[T]], list[R]]:
    ensure_ray(address)

    def _map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return ray_map(fn, items, num_cpus=num_cpus)

    return _map


__all__ = ["ensure_ray", "make_ray_map", "ray_map"]
