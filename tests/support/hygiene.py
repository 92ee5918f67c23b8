"""What the hygiene tests (filter, policy, report, gallery, queries doc) share: generated WebDataset
corpora, tiny detectors whose scores spread over them, REAL scans of them (jobs/scan_bucket.py's config and
the scan code) and the filter's test policy and output comparison.

`shared_scans` scans one corpus on two days (two detectors, so day-over-day numbers differ) once per test
session (in-process, no Ray start); the filter, report and queries-doc modules all read it.
`write_sidecar_corpus` + `scan_in_process` are the report gallery's img2dataset-style corpus and its scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import storage
from tests.support.shards import (
    Sample,
    corrupt_image_sample,
    good_samples,
    image_bytes,
    no_image_sample,
    tar_bytes,
    truncated_tar_bytes,
    write_raw,
)

DAY1, DAY2 = "2026-11-22", "2026-11-23"
GENERATORS = ("famA", "upconv")
LABELS = ("real", *GENERATORS)

# The filter tests' policy over `shared_scans` (the truncated shard BROKEN has a shard_error row in the scan).
RULES = ["--rule", "upconv=quarantine@0.9", "--rule", "unknown=quarantine", "--on-shard-error", "skip"]
BROKEN = "shard-000009"
# records of one run (timestamps, timings): they differ between runs by design
RUN_RECORDS = ("_run/run.json", "_run/log.jsonl", "_run/driver-stderr.log")


@dataclass
class Corpus:
    root: str  # --input of scan and filter
    shards: dict[str, list[Sample]]  # shard uri -> samples written (in tar order)


def write_corpus(root: str, *, with_truncated: bool = False, seed: int = 0) -> Corpus:
    """Three small shards (one in a sub-folder) with an extra member type, a corrupt image and an image-less
    sample; optionally a fourth, truncated shard (the scan turns it into a shard_error row)."""
    return _corpus_samples(root, with_truncated=with_truncated, seed=seed, write=True)


def _corpus_samples(root: str, *, with_truncated: bool, seed: int = 0, write: bool = False) -> Corpus:
    shards: dict[str, list[Sample]] = {}
    layout = [("shard-000000.tar", 7), ("shard-000001.tar", 6), ("part/shard-000002.tar", 5)]
    for i, (name, n) in enumerate(layout):
        samples = good_samples(
            n, seed=seed + i, prefix=f"{i:02d}_", size=(24, 20), generators=("real", "famA", "upconv")
        )
        for s in samples[::2]:
            s.files["txt"] = f"caption of {s.key}".encode()
        if i == 0:
            samples.insert(3, corrupt_image_sample(f"{i:02d}_bad"))
        if i == 1:
            samples.insert(2, no_image_sample(f"{i:02d}_noimg"))
        uri = storage.join(root, *name.split("/"))
        if write:
            write_raw(uri, tar_bytes(samples))
        shards[uri] = samples
    if with_truncated:
        samples = good_samples(6, seed=seed + 9, prefix="09_", size=(24, 20))
        uri = storage.join(root, "shard-000009.tar")
        if write:
            write_raw(uri, truncated_tar_bytes(samples))
        shards[uri] = samples
    return Corpus(root=root, shards=shards)


def make_detector(corpus: Corpus, ckpt_dir: str, seed: int = 0) -> str:
    """A tiny random-init MoLE detector whose linear heads are set from the corpus' own features so that its
    scores SPREAD over the test images (a random head gives near-constant p_fake): the fake logit is the first
    principal component of the features (unit variance x 2.5, centred), the attribution logits use the first
    two components, so p_fake crosses 0.5 and some attributions fall below the unknown threshold."""
    import io

    import torch
    from PIL import Image

    from pipeline.models import DetectorConfig, create_detector, save_detector
    from pipeline.models.meta import DetectorMeta
    from pipeline.models.preprocess import prepare_image, to_model_input

    torch.manual_seed(seed)
    cfg = DetectorConfig.load("tiny-mole")
    det = create_detector(cfg, pretrained=None, generators=list(GENERATORS)).eval()
    images = []
    for samples in corpus.shards.values():
        for s in samples:
            data = s.files.get("png") or s.files.get("jpg")
            try:
                images.append(prepare_image(Image.open(io.BytesIO(data)).convert("RGB"), cfg))
            except Exception:  # noqa: BLE001, S112 - corrupt test images are expected
                continue
    with torch.inference_mode():
        feats = det(to_model_input(np.stack(images), cfg)).features.double()
    mean = feats.mean(0)
    _, sv, v = torch.linalg.svd(feats - mean, full_matrices=False)
    pcs = [v[i] / (sv[i] / (len(images) - 1) ** 0.5) for i in range(2)]  # projections with unit std

    def head(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.stack(rows)
        return w.float(), (-(w @ mean)).float()

    with torch.no_grad():
        w, b = head([2.5 * pcs[0]])
        det.head_fake.weight.copy_(w.reshape(det.head_fake.weight.shape))
        det.head_fake.bias.copy_(b.reshape(det.head_fake.bias.shape))
        w, b = head([-2.0 * pcs[0], 2.0 * pcs[1], -2.0 * pcs[1]])
        det.head_gen.weight.copy_(w)
        det.head_gen.bias.copy_(b)
    save_detector(det, ckpt_dir, DetectorMeta(threshold=0.5, unknown_threshold=0.6))
    return ckpt_dir


def real_scans(corpus: Corpus, out: str, runs: list[tuple[str, str]]) -> None:
    """The scan job's own flags -> config -> `run_scan`, once per (scan_date, detector), in THIS process with
    the in-process executor (`pipeline.scan.execute.local_executor`): the real read / decode / score / write
    code and output contract, without starting a Ray for every session (the Ray plan has its own tests:
    tests/test_scan_job.py, tests/test_reliability_*.py, tests/test_multinode.py)."""
    import torch

    from pipeline.cli.scan_bucket import build_config, parse_args
    from pipeline.scan.job import run_scan

    threads = torch.get_num_threads()
    try:
        for day, det in runs:
            cfg = build_config(
                parse_args(
                    [
                        "--input",
                        corpus.root,
                        "--output",
                        out,
                        "--detector",
                        det,
                        "--scan-date",
                        day,
                        "--batch-size",
                        "16",
                    ]
                )
            )
            run = run_scan(cfg)
            if run["status"] != "succeeded":
                raise RuntimeError(f"scan failed: {run}")
    finally:
        torch.set_num_threads(threads)  # the scorer sets its own thread count


def make_scans(corpus: Corpus, out: str, days: dict[str, int]) -> str:
    """Real scans of `corpus` into `out`: one scan_date per entry, each with a spread tiny detector of that
    seed."""
    runs = [
        (day, make_detector(corpus, f"{out.rstrip('/')}-detector-{seed}", seed=seed))
        for day, seed in days.items()
    ]
    real_scans(corpus, out, runs)
    return out


@dataclass
class Shared:
    corpus: Corpus  # 3 good shards + 1 truncated one (a shard_error row in the scan)
    scan: str  # scan_date=DAY1 (detector seed 1) and scan_date=DAY2 (seed 0)


def shared_scans(tmp_path_factory) -> Shared:
    """Once per session (cached under the session's base temp dir; tests run in one process)."""
    base = tmp_path_factory.getbasetemp() / "hygiene-shared"
    done = base / "DONE"
    corpus_root, scan = str(base / "in"), str(base / "scan")
    if not done.exists():
        if base.exists():
            import shutil

            shutil.rmtree(base)
        base.mkdir()
        corpus = write_corpus(corpus_root, with_truncated=True)
        make_scans(corpus, scan, {DAY1: 1, DAY2: 0})
        done.write_text("ok")
    return Shared(corpus=write_corpus_index(corpus_root), scan=scan)


def write_corpus_index(root: str) -> Corpus:
    """The Corpus of an already written `write_corpus(root, with_truncated=True)` (same seeds -> same
    samples)."""
    return _corpus_samples(root, with_truncated=True)


def good_shards(corpus: Corpus) -> dict[str, list]:
    """The corpus' shards without the truncated one."""
    return {u: s for u, s in corpus.shards.items() if BROKEN not in u}


def tree_bytes(root: Path, skip: tuple[str, ...] = RUN_RECORDS) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes) but the run records in `skip`: two filter outputs that
    should be byte-identical compare equal."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)) not in skip
    }


# ------------------------------------------------------------- the report gallery's img2dataset-style corpus
GALLERY_DAY = "2026-11-23"
BIG = "000001"  # the 600x400 image
JS_URL_KEY = "010000"  # its sidecar's url is javascript: (must never become a link)


def write_sidecar_corpus(root: str) -> Corpus:
    """img2dataset-style shards (jpg + json {url, caption, label} + txt per sample): three good shards with a
    corrupt image, an image-less sample, one 600x400 image (BIG) and a javascript: url (JS_URL_KEY), plus a
    truncated fourth shard."""
    rng = np.random.default_rng(0)
    shards: dict[str, list[Sample]] = {}
    for i, n in enumerate([6, 5, 5]):
        samples = []
        for j in range(n):
            key = f"{i:02d}{j:04d}"
            meta = {
                "url": f"https://example.com/img/{key}.jpg",
                "caption": f"caption of {key}",
                "label": j % 2,
            }
            if key == JS_URL_KEY:
                meta["url"] = "javascript:alert(1)"
            size = (600, 400) if key == BIG else (64, 48)
            samples.append(
                Sample(
                    key,
                    {
                        "jpg": image_bytes(rng, size, "jpg"),
                        "json": json.dumps(meta).encode(),
                        "txt": f"text of {key}".encode(),
                    },
                )
            )
        if i == 0:
            samples.insert(2, corrupt_image_sample("00bad"))
        if i == 1:
            samples.insert(1, no_image_sample("01noimg"))
        uri = storage.join(root, f"shard-{i:06d}.tar")
        write_raw(uri, tar_bytes(samples))
        shards[uri] = samples
    cut = [Sample(f"09{j:04d}", {"jpg": image_bytes(rng, (64, 48), "jpg")}) for j in range(5)]
    uri = storage.join(root, "shard-000009.tar")
    write_raw(uri, truncated_tar_bytes(cut))
    shards[uri] = cut
    return Corpus(root=root, shards=shards)


def scan_in_process(corpus: Corpus, out: str, detector: str, day: str = GALLERY_DAY) -> None:
    """One scan of `corpus` (scan_date `day`) in this process with the scan's local executor."""
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import run_scan

    run = run_scan(ScanConfig(input=corpus.root, output=out, detector=detector, scan_date=day, batch_size=16))
    assert run["status"] == "succeeded"
