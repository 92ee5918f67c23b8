"""How a scan's shards get processed: the work description the driver hands to an executor and the
in-process executor [ours]. No Ray here: the Ray executor is `pipeline.engine.scan.RayScanExecutor`, chosen
by the entry point (jobs/scan_bucket.py) and passed in.

An executor is `executor(todo, work) -> Iterator[(shard_id, summary)]`: it reads, decodes, scores and WRITES
each shard of `todo` ([(shard_url, shard_id)]) where the rows are, and yields each shard's summary (= its
marker) as it completes. `work.timing` receives the executor's timings (ray_connect_s, first_rows_s,
model_ready_s, …).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.scan.carry import CarryItem, carried_then_rest, carry_local
from pipeline.scan.config import ScanConfig
from pipeline.scan.prepare import prepare_shard
from pipeline.scan.rows import RunContext
from pipeline.scan.score import Scorer
from pipeline.scan.write import ShardSink, tag_identity


@dataclass
class ScanWork:
    """Everything an executor needs besides the shard list."""

    cfg: ScanConfig
    ctx: RunContext  # what the shard writer needs from the driver (run id, source, labels, fusion, policy)
    scan_date: str
    # the (image_size, preprocess) inputs the read stage decodes (`RunDetectors.inputs`): the detector's
    # first, then the further ones a detector set needs
    inputs: list[tuple[int, str]]
    timing: dict[str, float] = field(default_factory=dict)
    # shard id -> its stored identity from the listing (recorded in each marker; None: unknown)
    identities: dict[str, str | None] = field(default_factory=dict)
    # shards to carry forward from an earlier night (`--incremental`), before the scan; those that cannot be
    # carried are scanned
    carry: list[CarryItem] = field(default_factory=list)

    def scorer_kwargs(self) -> dict[str, Any]:
        """The scorer's constructor arguments (the local and the Ray executor alike): the config's fields of
        those names, the device and every input the detectors read."""
        fields = {
            "detector",
            "dtype",
            "torch_threads",
            "decode_on",
            "fusion",
            "features",
            "features_precision",
        }
        return {**self.cfg.model_dump(include=fields), "device": self.cfg.device, "inputs": self.inputs}

    def prepare_kwargs(self) -> dict[str, Any]:
        """The read stage's arguments (`prepare_shard`; the local and the Ray executor alike)."""
        (image_size, resize_mode), *also = self.inputs
        return {
            **self.cfg.model_dump(include={"max_pixels", "chunk_rows", "decode_on", "provenance"}),
            "image_size": image_size,
            "resize_mode": resize_mode,
            "also": also,
            "trust_anchors_pem": self.cfg.trust_anchors_pem,
        }


class ScanExecutor(Protocol):
    def __call__(
        self, todo: list[tuple[str, str]], work: ScanWork
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...


def local_executor(todo: list[tuple[str, str]], work: ScanWork) -> Iterator[tuple[str, dict[str, Any]]]:
    """Scan in this process (no Ray): carried shards first (a thread pool of copies), then one scorer, shards
    one after another, each written as soon as read; no scorer is loaded when there is nothing to scan."""
    todo = list(todo)
    yield from carried_then_rest(carry_local(work.carry), todo)
    if not todo:
        return
    t0 = time.perf_counter()
    scorer = Scorer(**work.scorer_kwargs())
    sink = ShardSink(work.ctx, work.cfg.output, work.scan_date)
    work.timing["model_ready_s"] = round(time.perf_counter() - t0, 3)
    rows = 0
    t_ready = time.perf_counter()
    for url, shard in todo:
        for batch in prepare_shard(url, shard, **work.prepare_kwargs()):
            tag_identity(batch, work.identities.get(shard))
            work.timing.setdefault("first_rows_s", round(time.perf_counter() - t0, 3))
            for stats in sink.add(scorer(batch)):
                rows += int(stats["rows"])
                yield stats["shard"], stats
    active = time.perf_counter() - t_ready
    work.timing["stream_s"] = round(time.perf_counter() - t0, 3)
    work.timing["steady_images_per_s"] = round(rows / active, 2) if active > 0 else 0.0
