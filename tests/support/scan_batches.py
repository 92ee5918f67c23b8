"""Scan stage inputs without a model, for the scan's and the runner's unit tests: prepared batches of a
small written shard (`prepare_shard` over it), a deterministic stand-in with `Predictor.predict`'s output
contract, the run context the rows are written under, rows scored and tagged as a scorer's (`scored`), and
`check_table`, what a written scan table must be."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.output import PROVENANCE_VERDICTS, SCHEMA, SCHEMA_VERSION, STATUSES
from pipeline.scan.prepare import prepare_shard
from pipeline.scan.rows import RunContext, concat
from pipeline.scan.score import score_batch, tag_scored_by
from tests.support.shards import corrupt_image_sample, good_samples, write_shard

IMAGE_SIZE = 32
LABELS = ["real", "famA", "famB"]


class MeanPredictor:
    """Deterministic stand-in with Predictor.predict's output contract: p_fake = mean pixel / 255."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images: np.ndarray) -> dict:
        assert images.dtype == np.uint8 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
        self.calls.append(len(images))
        p = images.reshape(len(images), -1).mean(1).astype(np.float32) / 255.0
        scores = np.stack([1 - p, p / 2, p / 2], 1).astype(np.float32)
        return {
            "p_fake": p,
            "logit": np.log(p / (1 - p)),
            "is_fake": p >= 0.5,
            "top_generator": [LABELS[i] for i in scores.argmax(1)],
            "generator_scores": scores,
        }


def concat_all(chunks) -> dict:
    return concat(list(chunks))


def prepared(tmp_path, name: str = "a", n: int = 6) -> dict:
    """The prepared rows of a shard `name` of `n` good images and one corrupt one (last)."""
    samples = good_samples(n, seed=7) + [corrupt_image_sample("bad")]
    url = write_shard(str(tmp_path / f"{name}.tar"), samples)
    return concat_all(prepare_shard(url, name, image_size=IMAGE_SIZE))


def run_context() -> RunContext:
    return RunContext(run_id="r1", source="s3://b/p/", detector_id="tiny@abc", labels=LABELS)


def scored(batch: dict) -> dict:
    """`batch` scored by `MeanPredictor`, its rows tagged as a scorer that loaded `run_context()`'s detector
    (threshold 0.4) tags them: the rows a shard writer receives."""
    rows = score_batch(MeanPredictor(), batch, n_labels=len(LABELS))
    detector_id = run_context().detector_id
    tag_scored_by(rows, detector_id, 0.4, [detector_id])
    return rows


def check_table(table: pa.Table) -> None:
    """Raise ValueError unless `table` has exactly SCHEMA (names, types, order) and valid statuses."""
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise ValueError(f"table schema differs from scan schema v{SCHEMA_VERSION}:\n{table.schema}")
    bad = set(table.column("status").to_pylist()) - set(STATUSES)
    if bad:
        raise ValueError(f"unknown status values: {sorted(bad)}")
    bad = set(table.column("provenance_verdict").drop_null().to_pylist()) - set(PROVENANCE_VERDICTS)
    if bad:
        raise ValueError(f"unknown provenance_verdict values: {sorted(bad)}")
