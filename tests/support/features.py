"""Real feature-store inputs for tests: a tiny open_clip backbone saved as a weights file, detectors on it in
the peers' formats (genscan linear, a ClipBased-SID ``weights.pth`` imported with jobs/import_detector's code,
UnivFD, MoLE, RINE), and scans that keep their features (the scan job's own config -> `run_scan`, in
process)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch
from torch import nn


def tiny_backbone_file(path: Path, seed: int = 0) -> Path:
    """A random-init tiny CLIP (LayerNorms perturbed so features are not trivial) as open_clip's own
    safetensors files carry it (``visual.*`` keys)."""
    from safetensors.torch import save_file

    from tests.support.peer_detectors import tiny_clip

    model = tiny_clip(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"visual.{k}": v.contiguous() for k, v in model.visual.state_dict().items()}, str(path))
    return path


def genscan_detector(
    out: Path, config: str, *, backbone: Path | None, seed: int = 0, scale: float = 20.0
) -> str:
    """A genscan checkpoint of `config` on `backbone` (None: random init stored in the checkpoint) with a
    random real/fake head scaled so logits spread over a few units."""
    from pipeline.models import DetectorConfig, create_detector, save_detector

    torch.manual_seed(seed)
    det = create_detector(DetectorConfig.load(config), pretrained=None if backbone is None else str(backbone))
    if isinstance(det.head_fake, nn.Linear):
        with torch.no_grad():
            det.head_fake.weight.mul_(scale)
    save_detector(det, out)
    return str(out)


def clipbased_detector(out: Path, backbone: Path, *, seed: int = 3, width: int = 128) -> str:
    """A ClipBased-SID ``weights.pth`` (``{"model": {"fc.weight", "fc.bias"}}``, as their ``load_weights``
    reads it) imported onto the tiny backbone with the clipbased-tiny config."""
    from pipeline.models.importer import import_detector

    torch.manual_seed(seed)
    fc = nn.Linear(width, 1)
    with torch.no_grad():
        fc.weight.mul_(20.0)
    peer = out.parent / f"{out.name}-weights.pth"
    peer.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": collections.OrderedDict((f"fc.{k}", v) for k, v in fc.state_dict().items())}, peer)
    import_detector("clipbased", peer, out, config="clipbased-tiny", backbone_weights=str(backbone))
    return str(out)


def feature_scan(
    input_: str,
    output: str,
    detector: str,
    *,
    features: str,
    precision: str = "float16",
    scan_date: str,
    extra: list[str] | None = None,
) -> dict:
    """The scan job's flags (+ `extra`) -> config -> `run_scan` in this process (the in-process executor)."""
    from pipeline.cli.scan_bucket import build_config, parse_args
    from pipeline.scan.job import run_scan

    threads = torch.get_num_threads()
    try:
        args = ["--input", input_, "--output", output, "--detector", detector, "--scan-date", scan_date]
        args += [
            "--features",
            features,
            "--features-precision",
            precision,
            "--batch-size",
            "16",
            *(extra or []),
        ]
        return run_scan(build_config(parse_args(args)))
    finally:
        torch.set_num_threads(threads)  # the scorer sets torch's threads for its process


def read_rows(output: str) -> dict[tuple[str, str], dict]:
    """Every scan row by (shard, key) (shard_error rows by (shard, ''))."""
    import pyarrow.parquet as pq

    out = {}
    for f in sorted(Path(output).glob("scan_date=*/*.parquet")):
        for r in pq.read_table(f).to_pylist():
            out[(r["shard"], r["key"] or "")] = r
    return out


def read_features(output: str) -> dict[tuple[str, str], np.ndarray]:
    """Every stored feature by (shard, key), dequantised by the store's own reader."""
    from pipeline.feature_store import read_part

    out = {}
    for f in sorted(Path(output).glob("_features/scan_date=*/*.parquet")):
        part = read_part(str(f))
        for k, v in zip(part.keys, part.features(), strict=True):
            out[(next(iter(part.shards)), k)] = v
    return out
