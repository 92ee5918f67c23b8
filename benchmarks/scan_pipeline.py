"""Scan pipeline throughput, in ONE run on the SAME shards [ours]:

  encoder-only   Predictor.predict on pre-decoded uint8 batches (the ceiling: model time only)
  dataloader     a plain PyTorch loop: DataLoader(IterableDataset over shards: read_shard + decode_image,
                 1 worker process) -> Predictor in the main process — what a hand-written scanner does
  scan           the product: pipeline.scan.job.run_scan on a local Ray (read+decode CPU tasks -> scorer
                 actor -> Parquet + markers), measured (a) steady-state after the first scored rows and
                 (b) wall time including Ray start, actor start and model load

Model: ViT-B/32 MoLE (vitb32-mole) at random init (no weights here) — inference dominates decode (model time
>= 20x decode time per 256 px JPEG on this CPU), which is the production regime (L/14 on a GPU). The tiny demo
model is decode-bound on 2 cores and says little about the pipeline. Every mode gets the same torch thread
count. GPU: wherever CUDA is present the same script runs the GPU variant (model on cuda, fp16, decode stays
in CPU tasks, larger batch) — code path only on this CPU machine.

    python benchmarks/scan_pipeline.py [--images 256] [--batch-size 16] [--config vitb32-mole]
Writes results/pipeline.json and results/pipeline.md (`--out DIR/STEM`: DIR/STEM.json|md); scratch data under
results/tmp/pipeline/ (git-ignored; `--scratch DIR` puts it elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's pipeline package and benchmarks._common
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import parser, write_results  # noqa: E402
from pipeline.logs import get_logger  # noqa: E402

log = get_logger("benchmarks.scan_pipeline")
STEADY_TARGET = 0.93  # scan steady / encoder-only
TMP = REPO / "results" / "tmp" / "pipeline"


def make_data(n_images: int, shard_size: int, image_size: int, scratch: Path = TMP) -> Path:
    out = scratch / f"shards-{n_images}-{shard_size}-{image_size}"
    if not any(out.glob("*.tar")):
        fams = ["upconv", "diffusion", "vqgan", "gan_color"]
        per_class = max(1, n_images // (2 * len(fams)))
        subprocess.run(
            [
                sys.executable,
                str(REPO / "jobs/make_demo_data.py"),
                "--out",
                str(out),
                "--layout",
                "wds",
                "--families",
                ",".join(fams),
                "--n-per-class",
                str(per_class),
                "--seed",
                "0",
                "--image-size",
                str(image_size),
                "--shard-size",
                str(shard_size),
                "--format",
                "jpeg",
                "--jpeg-quality",
                "90",
            ],
            check=True,
            capture_output=True,
        )
    return out


def make_detector(config: str, scratch: Path = TMP) -> Path:
    from pipeline.models import DetectorConfig, create_detector, save_detector

    out = scratch / f"det-{config}"
    if not (out / "detector.safetensors").exists():
        torch.manual_seed(0)
        save_detector(create_detector(DetectorConfig.load(config), pretrained=None), out)
    return out


def decode_all(shards: list[str], image_size: int) -> np.ndarray:
    from pipeline.scan.decode import decode_image
    from pipeline.shards import read_shard

    px = []
    for url in shards:
        for s in read_shard(url).samples:
            r = decode_image(s.image, image_size=image_size)
            if r.status == "ok":
                px.append(r.pixels)
    return np.stack(px)


def bench_encoder(pred, pixels: np.ndarray, batch: int) -> float:
    pred.predict(pixels[:batch])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(pixels), batch):
        pred.predict(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - t)


class ShardImages(torch.utils.data.IterableDataset):
    """read_shard + decode_image per shard, shards split across DataLoader workers."""

    def __init__(self, shards: list[str], image_size: int) -> None:
        self.shards, self.image_size = shards, image_size

    def __iter__(self):
        from pipeline.scan.decode import decode_image
        from pipeline.shards import read_shard

        info = torch.utils.data.get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for url in mine:
            for s in read_shard(url).samples:
                r = decode_image(s.image, image_size=self.image_size)
                if r.status == "ok":
                    yield r.pixels


def _collate(items: list[np.ndarray]) -> np.ndarray:
    return np.stack(items)


def bench_dataloader(pred, shards: list[str], image_size: int, batch: int, workers: int) -> tuple[float, int]:
    ds = ShardImages(shards, image_size)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=batch, num_workers=workers, collate_fn=_collate, prefetch_factor=2 if workers else None
    )
    t = time.perf_counter()
    n = 0
    for x in dl:
        pred.predict(x)
        n += len(x)
    return n / (time.perf_counter() - t), n


def bench_scan(shards_dir: Path, det: Path, run: int, args: argparse.Namespace, gpu: bool) -> dict:
    from pipeline.engine.scan import RayScanExecutor
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import run_scan

    out = Path(args.scratch) / f"scan-{os.getpid()}-{run}"
    cfg = ScanConfig(
        input=str(shards_dir),
        output=str(out),
        detector=str(det),
        scan_date="2026-01-01",
        batch_size=args.batch_size,
        num_actors=1,
        torch_threads=args.threads,
        actor_num_cpus=1.0 if not gpu else 1.0,
        actor_num_gpus=1.0 if gpu else 0.0,
        dtype="float16" if gpu else "float32",
        read_num_cpus=0.5,
        ray_num_cpus=os.cpu_count(),
    )
    t = time.perf_counter()
    res = run_scan(cfg, executor=RayScanExecutor())
    wall = time.perf_counter() - t
    tot = res["totals"]
    timing = res["attempts"][-1].get("timing", {})
    return {
        "rows": tot["rows"],
        "ok": tot["counts"].get("ok", 0),
        "wall_s": round(wall, 2),
        "images_per_s_wall": round(tot["rows"] / wall, 2),
        "images_per_s_steady": timing.get("steady_images_per_s"),
        "timing": timing,
        "decode_s": round(tot["decode_s"], 2),
        "infer_s": round(tot["infer_s"], 2),
        "read_s": round(tot["read_s"], 3),
        "write_s": round(tot["write_s"], 3),
    }


def render_md(r: dict) -> str:
    m, q = r["median"], r["ratios"]

    def ok(v: float, target: float) -> str:
        if v > 1.05:
            return "a ratio above 1 is load variation between the modes, not evidence — see below"
        return "met" if v >= target else "NOT met"

    scans = r["scan"]
    lines = [
        "# Scan pipeline throughput (benchmarks/scan_pipeline.py)",
        "",
        f"One run, same {r['images']} images in {r['shards']} WebDataset shards (256 px JPEG, demo "
        f"generator), detector `{r['config']}` (random init), device {r['device']}, dtype "
        f"{r['dtype']}, batch {r['batch_size']}, {r['torch_threads']} torch threads in every mode, "
        f"{r['cpu_count']} cores. Medians of {len(scans)} interleaved rounds. 1-min load average "
        f"{r['load_avg_1m']} at the end of the run (with 2 cores, anything well above 2 means other work "
        "competed) — the ratios are what this measures.",
        "",
        "| mode | images/s (median) | all rounds |",
        "|---|---|---|",
        f"| encoder-only (Predictor on pre-decoded batches) | {m['encoder_only']} | "
        f"{r['encoder_only_images_per_s']} |",
        f"| plain PyTorch DataLoader loop (1 decode worker + model) | {m['dataloader']} | "
        f"{r['dataloader_images_per_s']} |",
        f"| scan, steady (from model ready to last Parquet) | {m['scan_steady']} | "
        f"{[s['images_per_s_steady'] for s in scans]} |",
        f"| scan, wall (incl. Ray start, actor start, model load) | {m['scan_wall']} | "
        f"{[s['images_per_s_wall'] for s in scans]} |",
        "",
        f"- scan steady / encoder-only = **{q['scan_steady_vs_encoder']}** (target ≥ {STEADY_TARGET}: "
        f"{ok(q['scan_steady_vs_encoder'], STEADY_TARGET)})",
        f"- scan steady / DataLoader loop = **{q['scan_steady_vs_dataloader']}** (target ≥ 1.0: "
        f"{ok(q['scan_steady_vs_dataloader'], 1.0)})",
        "- **model-actor busy fraction** during the scan (steady images/s × infer_s / rows; both "
        "measured in the same time window, so the machine's load cancels out): "
        f"{[round((s['images_per_s_steady'] or 0) * s['infer_s'] / max(s['rows'], 1), 3) for s in scans]} — "
        "the share of the scan during which the model was computing; 1.0 = the pipeline never starves it.",
        f"- scan wall / DataLoader loop = {q['scan_wall_vs_dataloader']} (start-up included: Ray + "
        "actor + model load are a fixed cost that a nightly scan of millions of images amortises; a "
        "short benchmark run does not)",
        f"- decode: {r['decode_ms_per_image']} ms/image on one core; in the scan, decode_s / infer_s = "
        f"{[round(s['decode_s'] / max(s['infer_s'], 1e-9), 3) for s in scans]} — inference "
        "dominates, so decode done ahead while the actor loads its model flatters the steady number by at "
        "most that share.",
        f"- scan phase timings per round (s): {[s['timing'] for s in scans]}",
        "",
        "Reading these numbers: the modes run one after another in one process tree on a 2-core machine, so",
        "a change of machine load between them shifts the ratios (the load average above says how busy the",
        "machine was). A scan/encoder ratio above 1 would be load drift, never a speed-up (the "
        "scan cannot beat",
        "the model's own speed). The load-independent figure is the busy fraction: what keeps it "
        "below 1.0 is",
        "the scan's own overhead around the model (decode hand-off, Ray transfers, row building, Parquet",
        "writes). On this CPU-only machine the read+decode tasks, Ray's own processes and the "
        "model's threads",
        "share the same 2 cores; the DataLoader loop has no Ray processes beside it. On a GPU node the model",
        "runs on the GPU while decode runs on CPU workers, so that contention does not exist there.",
        "",
        "Why this model: ViT-B/32 MoLE makes inference dominate (model time ≥ 20× decode time here), the",
        "production regime (ViT-L/14 on a GPU, decode on CPU workers). The tiny demo model is "
        "decode-bound on 2",
        "cores, where every design just measures the JPEG decoder.",
        "",
        "How the scan keeps up: read+decode run in CPU tasks (never fused into the model actor: "
        "the read stage",
        "reserves memory, so Ray cannot fuse it), the scorer actor holds the model and takes a "
        "fractional CPU",
        "share, writer actors on the workers write each shard's Parquet and marker, and the driver "
        "receives one",
        "small summary row per scored batch. On a GPU the same script runs the GPU variant (fp16, "
        "batch ≥ 128,",
        "decode stays on CPU) — not measured here (no GPU).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--config", default="vitb32-mole")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--source-size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads for every mode")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "results" / "pipeline"))
    p.add_argument("--scratch", default=str(TMP), help="scratch data: shards, detector, scan outputs")
    p.add_argument("--report-only", action="store_true", help="re-render <out>.md from <out>.json")
    args = p.parse_args()
    if args.report_only:
        out = Path(args.out)
        out.with_suffix(".md").write_text(render_md(json.loads(out.with_suffix(".json").read_text())))
        return 0

    from pipeline.models import DetectorConfig, Predictor, load_detector

    gpu = torch.cuda.is_available()
    if gpu:
        args.batch_size = max(args.batch_size, 128)
    torch.set_num_threads(args.threads)
    cfg = DetectorConfig.load(args.config)
    shards_dir = make_data(args.images, args.shard_size, args.source_size, Path(args.scratch))
    shards = sorted(str(s) for s in shards_dir.glob("*.tar"))
    det_dir = make_detector(args.config, Path(args.scratch))
    det, meta = load_detector(str(det_dir))
    pred = Predictor(det, meta, device="cuda" if gpu else "cpu", dtype="float16" if gpu else "float32")
    pixels = decode_all(shards, cfg.image_size)
    t = time.perf_counter()
    decode_all(shards[:2], cfg.image_size)
    decode_ms = (time.perf_counter() - t) * 1000 / (2 * args.shard_size)

    enc, dl, scans = [], [], []
    for r in range(args.repeats):  # interleaved: the machine is shared and noisy
        enc.append(bench_encoder(pred, pixels, args.batch_size))
        dl.append(bench_dataloader(pred, shards, cfg.image_size, args.batch_size, workers=1)[0])
        scans.append(bench_scan(shards_dir, det_dir, r, args, gpu))
        log.info("bench_round", round=r, encoder=enc[-1], dataloader=dl[-1], scan=scans[-1])
    enc_m, dl_m = statistics.median(enc), statistics.median(dl)
    steady = statistics.median(s["images_per_s_steady"] or 0.0 for s in scans)
    wall = statistics.median(s["images_per_s_wall"] for s in scans)
    result = {
        "config": args.config,
        "device": "cuda" if gpu else "cpu",
        "dtype": "float16" if gpu else "float32",
        "images": len(pixels),
        "shards": len(shards),
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "decode_ms_per_image": round(decode_ms, 2),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "encoder_only_images_per_s": [round(x, 2) for x in enc],
        "dataloader_images_per_s": [round(x, 2) for x in dl],
        "scan": scans,
        "median": {
            "encoder_only": round(enc_m, 2),
            "dataloader": round(dl_m, 2),
            "scan_steady": steady,
            "scan_wall": wall,
        },
        "ratios": {
            "scan_steady_vs_encoder": round(steady / enc_m, 3),
            "scan_steady_vs_dataloader": round(steady / dl_m, 3),
            "scan_wall_vs_dataloader": round(wall / dl_m, 3),
        },
    }
    out = Path(args.out)
    write_results(out.parent, out.stem, result, render_md(result))
    print(json.dumps(result["median"] | result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
