"""THE Ray Data plan of the scan — the only place with from_items / map_batches [ours].

    from_items(shard list, one block per shard)
      -> map_batches(prepare_batch)   CPU tasks: read_shard + decode_image, yields chunks of rows
      -> map_batches(Scorer)          actor pool, fractional num_cpus, num_gpus from config, fused detector
      -> iter_batches on the driver   (pipeline.scan.job collects rows per shard and writes them)

The two map stages have different compute strategies and resources, so Ray does not fuse them: decode never
runs inside the model actors. Actor pools that take every CPU hang (ray#44687), hence fractional num_cpus.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray
from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

from pipeline.logs import get_logger
from pipeline.scan.config import ScanConfig
from pipeline.scan.prepare import prepare_batch
from pipeline.scan.score import Scorer

log = get_logger("pipeline.engine.scan")


def prepare_on_node(batch: dict[str, np.ndarray], **kwargs: object) -> Iterator[dict[str, np.ndarray]]:
    """prepare_batch, tagging each row with the Ray node id of the task that read the shard (`_node`, kept in
    the shard's stats as `node_id`: shows which node did the work, e.g. in tests/test_multinode.py)."""
    node = ray.get_runtime_context().get_node_id()
    for out in prepare_batch(batch, **kwargs):
        out["_node"] = np.full(len(out["shard"]), node, dtype=object)
        yield out


def build_dataset(shards: list[tuple[str, str]], cfg: ScanConfig, *, image_size: int,
                  resize_mode: str) -> ray.data.Dataset:  # fmt: skip
    """shards: [(shard_url, shard_id)]."""
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.enable_operator_progress_bars = True
    ctx.execution_options.preserve_order = False
    items = [{"shard_url": url, "shard": sid} for url, sid in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        prepare_on_node,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"image_size": image_size, "resize_mode": resize_mode, "max_pixels": cfg.max_pixels,
                   "chunk_rows": cfg.chunk_rows},  # fmt: skip
        compute=TaskPoolStrategy(size=cfg.read_concurrency) if cfg.read_concurrency else None,
        num_cpus=cfg.read_num_cpus,
        # A memory reservation for the shard held in memory. It also keeps decode out of the actors: Ray fuses
        # a task map into the next actor map when their resource args match (e.g. equal num_cpus).
        memory=cfg.read_memory_mb * 2**20,
    )
    ds = ds.map_batches(
        Scorer,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"detector": cfg.detector, "device": cfg.device, "dtype": cfg.dtype,
                               "torch_threads": cfg.torch_threads},  # fmt: skip
        compute=ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.actor_num_cpus,
        num_gpus=cfg.actor_num_gpus,
    )
    return ds


def iter_scored(shards: list[tuple[str, str]], cfg: ScanConfig, *, image_size: int,
                resize_mode: str) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    """Stream scored row batches (numpy dicts) to the driver as the pipeline produces them."""
    ds = build_dataset(shards, cfg, image_size=image_size, resize_mode=resize_mode)
    log.info("scan_plan", shards=len(shards), batch_size=cfg.batch_size, actors=cfg.num_actors,
             actor_num_cpus=cfg.actor_num_cpus, actor_num_gpus=cfg.actor_num_gpus, read_num_cpus=cfg.read_num_cpus)  # fmt: skip
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
