"""THE Ray Data plan of the scan — the only place with from_items / map_batches [ours].

    from_items(shard list, one block per shard)
      -> map_batches(prepare_on_node) CPU tasks: read_shard + decode_image, yields chunks of rows
      -> map_batches(Scorer)          actor pool, fractional num_cpus, num_gpus from config, fused detector
      -> map_batches(route_to_writers) small CPU tasks: each shard's rows go to ONE writer actor (by shard id)
      -> writer actors                collect a shard's rows, write its Parquet, then its marker (on the
                                      workers)
      -> iter_batches on the driver   one tiny row per scored batch: row count, scorer-ready time, and the
                                      summaries (= markers) of the shards that batch completed

The driver never holds rows (img2dataset / clip-retrieval pattern: workers write their own outputs), so its
cost is per batch, not per row, and the head's memory does not grow with pending shards.

The read and score stages have different compute strategies and resources, so Ray does not fuse them: decode
never runs inside the model actors. Actor pools that take every CPU hang (ray#44687), hence fractional
num_cpus. Writers and the routing tasks reserve no CPU (see WRITER_NUM_CPUS); writers are pinned to nodes with
CPUs, so they never land on a head started with 0 CPUs.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy
from ray.util.placement_group import NODE_ID_LABEL_KEY
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.console import verbose
from pipeline.engine import cluster
from pipeline.logs import get_logger
from pipeline.scan.carry import CarryItem, CarryResult, carried_then_rest, carry_batch
from pipeline.scan.execute import ScanWork
from pipeline.scan.prepare import prepare_shard
from pipeline.scan.rows import RunContext
from pipeline.scan.score import Scorer
from pipeline.scan.write import ShardSink, tag_identity

log = get_logger("pipeline.engine.scan")

# Writers and routing tasks reserve no CPU: their work is small (µs per row, mostly waiting on storage), and
# any reservation beside the scorer actors and read tasks can leave a node without room for a read task — the
# actor-pool hang of ray#44687 (seen here on a 1-CPU node: 0.5 + 0.5 + 0.05 > 1). Writers are pinned (softly)
# to nodes that HAVE CPUs, so a head started with 0 CPUs never writes. A writer reserves memory instead (it
# holds a shard's pending rows): Ray places an actor that requests NO resource at all on a random node,
# ignoring a soft node affinity, so without a reservation the pin would not hold. Nodes without CPUs are
# excluded by a hard label selector as well, which also holds when a writer restarts after losing its node.
WRITER_NUM_CPUS = 0.0
WRITER_MEMORY_MB = 64
ROUTE_NUM_CPUS = 0.0


def prepare_on_node(batch: dict[str, np.ndarray], **kwargs: Any) -> Iterator[dict[str, np.ndarray]]:
    """prepare_shard of each shard item, tagging each row with the Ray node id of the task that read the shard
    (`_node`, kept in the shard's stats as `node_id`: shows which node did the work, e.g. in
    tests/test_multinode.py) and with the shard's stored identity from the driver's listing (the item's
    `identity`, recorded in its marker)."""
    node = ray.get_runtime_context().get_node_id()
    for url, shard, identity in zip(batch["shard_url"], batch["shard"], batch["identity"], strict=True):
        for out in prepare_shard(str(url), str(shard), **kwargs):
            out["_node"] = np.full(len(out["shard"]), node, dtype=object)
            tag_identity(out, str(identity))
            yield out


def build_dataset(shards: list[tuple[str, str]], work: ScanWork, scorer: type = Scorer) -> ray.data.Dataset:
    """Read + decode -> score. shards: [(shard_url, shard_id)]; work: the run's read and score settings (the
    same as the local executor's) and each shard's stored identity, recorded in its marker; scorer: the actor
    class (a model-free one in benchmarks/driver.py)."""
    cfg = work.cfg
    ctx = DataContext.get_current()
    # Ray Data's own progress (bars, or a periodic dump when stderr is not a terminal) only for --verbose: the
    # job's console has its one progress line (pipeline.console)
    ctx.enable_progress_bars = verbose()
    ctx.enable_operator_progress_bars = verbose()
    if not verbose():
        # Ray Data's high-memory advice names a code argument (`memory=` of a map call) the user cannot set;
        # the read stage's reservation is --read-memory-mb, and the router's worker memory is the imported
        # libraries
        ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    ctx.execution_options.preserve_order = False
    items = [
        {"shard_url": url, "shard": sid, "identity": work.identities.get(sid) or ""} for url, sid in shards
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        prepare_on_node,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs=work.prepare_kwargs(),
        compute=TaskPoolStrategy(size=cfg.read_concurrency) if cfg.read_concurrency else None,
        num_cpus=cfg.read_num_cpus,
        # A memory reservation for the shard held in memory. It also keeps decode out of the actors: Ray fuses
        # a task map into the next actor map when their resource args match (e.g. equal num_cpus).
        memory=cfg.read_memory_mb * 2**20,
    )
    return ds.map_batches(
        scorer,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs=work.scorer_kwargs(),
        compute=ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.actor_num_cpus,
        num_gpus=cfg.actor_num_gpus,
    )


class ShardWriterActor(ShardSink):
    """A `ShardSink` in an actor on a worker node; records its node id in every marker it writes."""

    def __init__(self, ctx: RunContext, output: str, scan_date: str) -> None:
        super().__init__(ctx, output, scan_date, writer_node=ray.get_runtime_context().get_node_id())


def writer_index(shard: str, n_writers: int) -> int:
    """The writer of a shard: stable across processes (crc32, not Python's salted hash)."""
    return zlib.crc32(shard.encode("utf-8")) % n_writers


def route_to_writers(batch: dict[str, np.ndarray], writers: list[Any]) -> dict[str, np.ndarray]:
    """Send each shard's rows of this batch to its writer and wait (backpressure; a failed write fails this
    task, which Ray retries — the writer drops rows it already has). Returns ONE row for the driver."""
    shards = np.asarray(batch["shard"], dtype=object)
    refs = []
    for shard in dict.fromkeys(shards.tolist()):
        sel = np.flatnonzero(shards == shard)
        part = {k: v[sel] for k, v in batch.items()}
        refs.append(writers[writer_index(str(shard), len(writers))].add.remote(part))
    done = [stats for result in ray.get(refs) for stats in result]
    ready = batch["_actor_ready"]  # every scorer (Scorer, benchmarks' NullScorer) stamps its rows
    return {
        "rows": np.asarray([len(shards)], np.int64),
        "ready": np.asarray([np.min(ready, initial=np.inf)], np.float64),
        "done": np.asarray([json.dumps(done)], dtype=object),
    }


class RayScanExecutor:
    """The scan on Ray (`pipeline.scan.execute.ScanExecutor`): attaches to / starts Ray through
    `cluster.session`, runs the plan, yields each shard's summary as its writer commits it."""

    def __init__(self, scorer: type = Scorer) -> None:
        self.scorer = scorer

    def __call__(self, todo: list[tuple[str, str]], work: ScanWork) -> Iterator[tuple[str, dict[str, Any]]]:
        cfg, timing = work.cfg, work.timing
        tc = time.perf_counter()
        with cluster.session(cfg.ray_address, cfg.ray_num_cpus):
            timing["ray_connect_s"] = round(time.perf_counter() - tc, 3)
            todo = list(todo)
            if work.carry:
                t0 = time.perf_counter()
                yield from carried_then_rest(carry_on_workers(work.carry), todo)
                timing["carry_s"] = round(time.perf_counter() - t0, 3)
            if todo:
                yield from self._run(todo, work)

    def _run(self, todo: list[tuple[str, str]], work: ScanWork) -> Iterator[tuple[str, dict[str, Any]]]:
        cfg, timing = work.cfg, work.timing
        n_writers = max(1, min(cfg.num_actors, len(todo)))
        actor = ray.remote(num_cpus=WRITER_NUM_CPUS, memory=WRITER_MEMORY_MB * 2**20, max_restarts=3)(
            ShardWriterActor
        )
        alive = [n for n in ray.nodes() if n.get("Alive")]
        cpu_nodes = sorted(n["NodeID"] for n in alive if n.get("Resources", {}).get("CPU"))
        no_cpu = sorted(n["NodeID"] for n in alive if not n.get("Resources", {}).get("CPU"))
        # never on a node without CPUs (a head started with 0 CPUs), also not when a writer restarts after its
        # node was lost: the soft pin then no longer applies and Ray would pick any node with memory
        never = {"label_selector": {NODE_ID_LABEL_KEY: f"!in({','.join(no_cpu)})"}} if no_cpu else {}
        pins = [NodeAffinitySchedulingStrategy(node_id=n, soft=True) for n in cpu_nodes] or ["SPREAD"]
        writers = [
            actor.options(scheduling_strategy=pins[i % len(pins)], **never).remote(
                work.ctx, cfg.output, work.scan_date
            )
            for i in range(n_writers)
        ]
        try:
            ds = build_dataset(todo, work, self.scorer)
            # a bounded task pool: tiny CPU requests would otherwise let Ray start dozens of worker processes
            ds = ds.map_batches(
                route_to_writers,
                batch_size=None,
                batch_format="numpy",
                fn_kwargs={"writers": writers},
                num_cpus=ROUTE_NUM_CPUS,
                compute=TaskPoolStrategy(size=max(2, 2 * n_writers)),
            )
            log.info(
                "scan_plan",
                shards=len(todo),
                batch_size=cfg.batch_size,
                actors=cfg.num_actors,
                writers=n_writers,
                actor_num_cpus=cfg.actor_num_cpus,
                actor_num_gpus=cfg.actor_num_gpus,
                read_num_cpus=cfg.read_num_cpus,
            )
            t0, wall0, cpu0 = time.perf_counter(), time.time(), time.thread_time()
            ready_at, rows_total, handle_cpu = float("inf"), 0, 0.0
            for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                h0 = time.thread_time()
                timing.setdefault("first_rows_s", round(time.perf_counter() - t0, 3))
                ready_at = min(ready_at, float(np.min(out["ready"], initial=np.inf)))
                for done in out["done"]:
                    for stats in json.loads(done):
                        rows_total += int(stats["rows"])
                        yield stats["shard"], stats  # the caller's per-shard handling runs here
                handle_cpu += time.thread_time() - h0
            timing["stream_s"] = round(time.perf_counter() - t0, 3)
            # CPU of this (the driver's main) thread while the shards streamed, and the part of it spent
            # handling what arrived (the rest is Ray Data's consumer loop, which polls every ~10 ms)
            timing["driver_stream_cpu_s"] = round(time.thread_time() - cpu0, 4)
            timing["driver_handle_cpu_s"] = round(handle_cpu, 4)
            if ready_at < float("inf"):
                timing["model_ready_s"] = round(ready_at - wall0, 3)
                active = time.time() - ready_at
                timing["steady_images_per_s"] = round(rows_total / active, 2) if active > 0 else 0.0
            pending = {s: p for w in writers for s, p in ray.get(w.pending.remote()).items()}
            duplicates = sum(ray.get([w.duplicates.remote() for w in writers]))
            if duplicates:
                log.warning("duplicate_rows_dropped", rows=duplicates)
            if pending:
                log.error("shards_incomplete", pending=dict(list(pending.items())[:5]))
        finally:
            for w in writers:
                ray.kill(w)


# Carry-forward copies run as Ray tasks on the workers, CARRY_BATCH shards per task and at most
# CARRY_IN_FLIGHT tasks at once: the driver's work per carried shard is one small result, and a copy
# (server-side on S3) needs no CPU of note, so the tasks reserve little and never crowd out the scan.
CARRY_BATCH = 64
CARRY_IN_FLIGHT = 16
CARRY_NUM_CPUS = 0.05


def _carry_task(items: list[CarryItem]) -> list[CarryResult]:
    return carry_batch(items, writer_node=ray.get_runtime_context().get_node_id())


def carry_on_workers(items: list[CarryItem]) -> Iterator[CarryResult]:
    """`carry_batch` over `items` in Ray tasks; results as the tasks complete (bounded number in flight)."""
    task = ray.remote(num_cpus=CARRY_NUM_CPUS, max_retries=3)(_carry_task)
    batches = [items[i : i + CARRY_BATCH] for i in range(0, len(items), CARRY_BATCH)]
    pending: list[Any] = []
    nxt = 0
    while nxt < len(batches) or pending:
        while nxt < len(batches) and len(pending) < CARRY_IN_FLIGHT:
            pending.append(task.remote(batches[nxt]))
            nxt += 1
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            yield from ray.get(ref)
