"""The contract between a training run's worker loop and the runner that feeds it [ours]: `TrainHooks`.

The runner (`pipeline.engine.train` on Ray Train, `pipeline.train.local` in process) supplies the device, the
batches of each epoch and split, the collectives and where epoch states go; the loop (`pipeline.train.loop`)
knows nothing else about where it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS_DIR = "_checkpoints"  # under --out: per-epoch training states (Ray Train's storage)
EVAL_BATCH = 64  # images per batch of `eval_batches`, whichever runner

# a runner's progress callback (driver side): `on_epoch(done)` as each epoch starts, once more at the end
OnEpoch = Callable[[int], None]


class TrainHooks:
    """What the worker loop needs from its runner: rank, device, DDP, the data feed, collectives and
    checkpoints."""

    world_rank: int = 0
    world_size: int = 1

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device())

    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        """This rank's disjoint part of epoch `epoch` (0-based), augmented when the config says so."""
        raise NotImplementedError

    def eval_batches(self, split: str) -> Iterable[dict[str, np.ndarray]]:
        """The whole `split` ("val" | "train"), unaugmented, listing order (rank 0 only)."""
        raise NotImplementedError

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_sum(self, values: list[float]) -> list[float]:
        return values

    def latest_state(self, into: Path) -> Path | None:
        """The last epoch's training state to resume from, fetched into the local directory `into` (the loop
        deletes it once read): the directory holding it, or None."""
        return None

    def report(self, metrics: dict[str, Any], state_dir: Path | None = None) -> None:
        return None
