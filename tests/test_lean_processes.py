"""The processes of a scan, a filter or a training run that never run a model must not load torch: the
scan's driver (it reads detector metas), its read+decode tasks, routing tasks and writer actors, the hygiene
filter's driver and copy tasks, the demo-data writer, and training's read tasks and epoch clock. torch +
open_clip cost ~0.9 GB of resident memory and seconds of start-up per process, paid by every read-task
process of a cluster. Checked in a fresh interpreter: import what such a process imports, run the driver's
detector check on a real checkpoint, decode a real shard, copy it as the filter does, write demo shards, and
look at sys.modules."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.shards import write_shards
from tests.support.subproc import run_python

PROBE = r"""
import json, sys
import pipeline.cli.filter_shards, pipeline.engine.filter, pipeline.engine.scan, pipeline.engine.train_data
import pipeline.scan.job
from pipeline.data.synthetic import DemoConfig, generate
from pipeline.hygiene.copy import ShardWriter
from pipeline.shards import iter_samples
from pipeline.scan.detectors import detector_info
from pipeline.scan.prepare import prepare_shard
from pipeline.train.feed import DecodeStage
info = detector_info(sys.argv[1])
rows = sum(len(b["status"]) for b in prepare_shard(sys.argv[2], "shard-000000", image_size=info.image_size,
                                                   resize_mode=info.resize_mode, chunk_rows=4))
copy = ShardWriter(sys.argv[3])  # the filter's byte-exact copy of whole samples
for sample in iter_samples(sys.argv[2]):
    copy.write(sample)
copy.commit()
generate(DemoConfig(out=sys.argv[4], layout="wds", families=["upconv"], n_per_class=2))  # make_demo_data
heavy = sorted(m for m in ("torch", "open_clip", "torchvision", "timm") if m in sys.modules)
print(json.dumps({"rows": rows, "copied": copy.count, "detector_id": info.detector_id, "heavy": heavy}))
"""


def test_driver_and_read_side_never_import_torch(tmp_path: Path) -> None:
    from pipeline.models import create_detector, save_detector

    meta = save_detector(create_detector("tiny-mole", pretrained=None), tmp_path / "det")
    ((shard, _),) = write_shards(str(tmp_path / "shards"), 1, 6, size=(64, 64), fmt="jpg")
    out = run_python(
        "-c", PROBE, str(tmp_path / "det"), str(shard), str(tmp_path / "copy.tar"), str(tmp_path / "demo")
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        got["rows"] == 6 and got["copied"] == 6 and got["detector_id"] == meta.detector_id
    )  # the work really ran
    assert got["heavy"] == []
