"""The re-score job's configuration [ours]: a light module (no torch) so the command line and its --help are
generated from it at once (pipeline.cli.rescore)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.output import ScanDate
from pipeline.runner import ErrorBudgetConfig
from pipeline.storage import within


class RescoreConfig(ErrorBudgetConfig):
    """The re-score job's configuration, saved as `<output>/_run/<D>/config.json`."""

    scan: str = Field(description="the scan output whose stored features are re-scored (local or s3://)")
    scan_date: ScanDate | None = Field(None, description="the scan date to re-score; default: the latest")
    detector: str = Field(description="checkpoint dir of a linear / UnivFD / ClipBased detector")
    output: str = Field(description="where the re-scored partition is written (a scan output)")
    run_id: str | None = Field(
        None, description="run id recorded in every row; default <scan_date>-rescore-<random>"
    )
    resume: bool = Field(
        False, description="continue an unfinished re-score: shards with a marker are skipped"
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: shards one after another in this process; ray: one Ray task per shard (CPU)",
    )
    ray_address: str | None = Field(
        None, description="engine ray: an address; None: RAY_ADDRESS or a local Ray"
    )
    task_num_cpus: float = Field(0.5, gt=0, description="CPUs per Ray task (one shard each)")

    @model_validator(mode="after")
    def _output_outside_scan(self) -> RescoreConfig:
        # into the scan itself, --resume took the scan's own markers for finished re-score shards and
        # "succeeded" re-scoring nothing; without it, the partition would be the scan's
        if within(self.output, self.scan):
            raise ValueError("output must not be the scan folder or inside it (write the re-score elsewhere)")
        return self
