"""The read side of training on Ray: the lazily planned Ray Data datasets of decoded (and, for `train`,
augmented) uint8 images, and the `EpochClock` actor their read tasks follow.

Kept apart from `pipeline.engine.train` on purpose: the read tasks and the clock actor import only this module
and the torch-free `pipeline.train.feed` stages, so a read-task process does not load torch (≈0.9 GB of
resident memory and ~3 s of start-up per process; measured in docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from pipeline.train.feed import DecodeSpec, DecodeStage, listing_chunk, n_chunks


@ray.remote(num_cpus=0)
class EpochClock:
    """The training epoch the read tasks of the `train` dataset are producing (set by rank 0)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get(self) -> int:
        return self.epoch


def _read_chunks(
    batch: dict[str, np.ndarray],
    *,
    table: list[Any],
    chunk_rows: int,
    seed: int,
    epoch: int,
    stage: DecodeStage,
    clock: Any = None,
) -> dict[str, np.ndarray]:
    """Ray Data task body: chunk ids -> listing rows (the listing table comes from the object store) -> the
    decode stage. `table` is a one-element list so Ray passes the ObjectRef itself, not its value; with a
    `clock` the epoch comes from it."""
    tab = ray.get(table[0])
    if clock is not None:
        epoch = ray.get(clock.get.remote())
    return stage(listing_chunk(tab, batch["id"], chunk_rows=chunk_rows, seed=seed, epoch=epoch))


def stream_dataset(
    table_ref: Any,
    n_rows: int,
    spec: DecodeSpec,
    *,
    epoch: int,
    chunk_rows: int,
    read_tasks: int | None,
    clock: Any = None,
) -> ray.data.Dataset:
    """A lazily planned dataset of decoded uint8 images in CPU Ray Data tasks, for epoch `epoch` (`-1`:
    listing order, no augmentation randomness needed) or, with `clock`, for whatever epoch it says."""
    n = max(n_chunks(n_rows, chunk_rows), 1)
    ds = ray.data.range(n, override_num_blocks=n) if n_rows else ray.data.range(0)
    return ds.map_batches(
        _read_chunks,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=read_tasks) if read_tasks is not None else None,
        num_cpus=1,
        fn_kwargs={
            "table": [table_ref],
            "chunk_rows": chunk_rows,
            "seed": spec.seed,
            "epoch": epoch,
            "stage": DecodeStage(spec),
            "clock": clock,
        },
    )
