"""GPU benchmark, one command: encoder throughput, the scorer's feed, JPEG decode on CPU vs on the GPU, and
the end-to-end scan on local shards with CPU decode and with GPU decode; GPU utilisation and CPU cores used.

    .venv/bin/python benchmarks/gpu.py                 # on a GPU machine (< 8 min on one GPU)
    .venv/bin/python benchmarks/gpu.py --smoke         # CPU, tiny model, seconds: checks the benchmark

Writes <results-dir>/gpu.json and <results-dir>/gpu.md: default results/ for a GPU run, results/tmp/ (ignored
by git) for a smoke run, so a CPU check never replaces the committed GPU figures. Every figure is measured in
this run:
1. encoder images/s, random-init ViT-B/16 and ViT-L/14 MoLE detectors (shipped configs), frozen backbone /
   naive MoLE (per-expert loop) / fused MoLE, fp16 and bf16 autocast, batches 64-512, input already on the
   device;
2. the Predictor feed: uint8 images in host memory -> scores (pinned non-blocking copies on a copy stream,
   normalisation on the device, chunks of the config's gpu_batch_size), fused MoLE, default dtype;
3. decode: `pipeline.scan.decode.decode_image` on one CPU core vs `pipeline.scan.gpu_decode.DeviceDecoder` on
   the GPU (nvjpeg), images/s, process CPU time per second of decoding (= CPU cores it keeps busy), and the
   nvjpeg pixels against the CPU pixels (share of bit-equal images, max |difference|);
4. the scan job (`jobs/scan_bucket.py`, a local Ray, one GPU actor) on local WebDataset shards of JPEGs, with
   `--decode-on cpu` and `--decode-on gpu`: steady images/s (run.json), GPU utilisation (nvidia-smi sampled
   every 250 ms), whole-machine CPU cores busy (/proc/stat), decode seconds per wall second (shard markers).
Derived (labelled so in the report): CPU decode cores one GPU needs = encoder images/s / decode images/s/core.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

from benchmarks._common import parser, progress, write_results  # noqa: E402
from pipeline.models import DetectorConfig, DetectorMeta, Predictor, create_detector, save_detector  # noqa: E402
from pipeline.models.checks import randomize_adapters  # noqa: E402

VARIANTS = ("disabled", "unfused", "fused")
LABEL = {"disabled": "frozen", "unfused": "naive MoLE", "fused": "fused MoLE"}
FULL = {
    "models": {"B/16": "vitb16-mole", "L/14": "vitl14-mole"},
    "dtypes": ("float16", "bfloat16"),
    "batches": (64, 128, 256, 512),
    "min_time_s": 1.0,
    "max_iters": 20,
    "decode_images": 512,
    "jpeg_size": (512, 384),
    "shards": 48,
    "per_shard": 256,
    "scan_model": "vitl14-mole",
    "scan_batch": 512,
}
SMOKE = {
    "models": {"tiny": "tiny-mole"},
    "dtypes": ("bfloat16",),
    "batches": (4, 8),
    "min_time_s": 0.0,
    "max_iters": 2,
    "decode_images": 16,
    "jpeg_size": (160, 120),
    "shards": 2,
    "per_shard": 12,
    "scan_model": "tiny-mole",
    "scan_batch": 8,
}


# ---------------------------------------------------------------------------------------------- sampling
class GpuSampler:
    """nvidia-smi utilisation.gpu / memory.used every 250 ms in a background process (None where no
    nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.available = shutil.which("nvidia-smi") is not None and torch.cuda.is_available()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-i",
                    "0",
                    "-lms",
                    "250",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                util, mem = (float(v) for v in line.strip().split(","))
                self.samples.append((time.time(), util, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def window(self, t0: float, t1: float) -> dict[str, float] | None:
        s = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not s:
            return None
        return {
            "util_mean_pct": round(statistics.fmean(u for u, _ in s), 1),
            "util_median_pct": round(statistics.median(u for u, _ in s), 1),
            "mem_max_mib": max(m for _, m in s),
            "samples": len(s),
        }


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat ((0, 0) where it does not exist)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def cores_busy(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return None if total <= 0 else round((after[0] - before[0]) / total * (os.cpu_count() or 1), 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def timed(fn: Any, device: torch.device, min_time_s: float, max_iters: int) -> list[float]:
    """Per-call seconds: one warm-up call, then calls until min_time_s has passed (>= 2, <= max_iters)."""
    fn()
    sync(device)
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < 2 or (time.perf_counter() - t_start < min_time_s and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------------------------------- 1 + 2
def bench_encoders(p: dict[str, Any], device: torch.device, gpu: GpuSampler) -> tuple[list[dict], list[dict]]:
    runs, feeds = [], []
    for name, config in p["models"].items():
        cfg = DetectorConfig.load(config)
        torch.manual_seed(0)
        det = create_detector(cfg, pretrained=None)
        randomize_adapters(det, seed=0)
        det = det.to(device).eval()
        for dtype in p["dtypes"]:
            for batch in p["batches"]:
                x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
                for v in VARIANTS:
                    det.set_mole_mode(v)
                    t0 = time.time()
                    try:
                        with torch.inference_mode(), _amp(device, dtype):
                            times = timed(partial(det, x), device, p["min_time_s"], p["max_iters"])
                    except torch.OutOfMemoryError:
                        runs.append(
                            {"model": name, "dtype": dtype, "batch": batch, "variant": v, "oom": True}
                        )
                        torch.cuda.empty_cache()
                        continue
                    med = statistics.median(times)
                    runs.append(
                        {
                            "model": name,
                            "config": config,
                            "dtype": dtype,
                            "batch": batch,
                            "variant": v,
                            "median_s": med,
                            "images_per_s": batch / med,
                            "iters": len(times),
                            "gpu": gpu.window(t0, time.time()),
                        }
                    )
                    progress(f"encoder {name} {dtype} b{batch} {LABEL[v]}: {batch / med:.1f} img/s")
                del x
        # the scorer's feed: uint8 in host memory -> scores, chunks of gpu_batch_size, default dtype
        det.set_mole_mode("fused")
        pred = Predictor(det, DetectorMeta(), device=device, dtype="auto")
        n = 2 * (pred.batch_size or p["batches"][-1])
        imgs = np.random.default_rng(0).integers(
            0, 256, (n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8
        )
        t0 = time.time()
        times = timed(partial(pred.predict, imgs), device, p["min_time_s"], p["max_iters"])
        med = statistics.median(times)
        feeds.append(
            {
                "model": name,
                "config": config,
                "dtype": pred.dtype,
                "chunk": pred.batch_size,
                "images_per_call": n,
                "median_s": med,
                "images_per_s": n / med,
                "gpu": gpu.window(t0, time.time()),
            }
        )
        progress(f"predictor feed {name} {pred.dtype}: {n / med:.1f} img/s")
        del det, pred
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return runs, feeds


# ---------------------------------------------------------------------------------------------- 3
def make_jpegs(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """`n` distinct photo-like JPEGs (smooth colour fields + noise, 4:2:0, quality 90) of `size` (w, h)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        f = rng.uniform(5, 40, 3)
        base = np.stack([np.sin(x / f[c] + i) * 70 + np.cos(y / (f[c] + 7)) * 50 + 128 for c in range(3)], -1)
        arr = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(arr).save(b, "JPEG", quality=90)
        out.append(b.getvalue())
    return out


def bench_decode(p: dict[str, Any], device: torch.device, image_size: int) -> dict[str, Any]:
    from pipeline.scan.decode import decode_image
    from pipeline.scan.gpu_decode import DeviceDecoder, device_decodable

    jpegs = make_jpegs(p["decode_images"], p["jpeg_size"])
    sizes = [
        device_decodable(d, image_size=image_size, resize_mode="center_crop", max_pixels=2**31) for d in jpegs
    ]
    assert all(s is not None for s in sizes), "benchmark JPEGs must be device-decodable"
    torch.set_num_threads(1)
    c0, t0 = time.process_time(), time.perf_counter()
    cpu_px = [decode_image(d, image_size=image_size).pixels for d in jpegs]
    cpu_wall, cpu_cpu = time.perf_counter() - t0, time.process_time() - c0
    c0 = time.process_time()
    for d in jpegs:  # what the read task does per shipped image with --decode-on gpu (header only)
        device_decodable(d, image_size=image_size, resize_mode="center_crop", max_pixels=2**31)
    header_cpu = time.process_time() - c0
    dec = DeviceDecoder(device, image_size)
    batch = 256
    out: dict[str, Any] = {
        "images": len(jpegs),
        "jpeg_size": list(p["jpeg_size"]),
        "crop": image_size,
        "cpu_decode_images_per_s_per_core": len(jpegs) / cpu_cpu,
        "cpu_decode_wall_s": cpu_wall,
        "device": str(device),
        "read_side_check_images_per_s_per_core": len(jpegs) / max(header_cpu, 1e-9),
    }
    dec.decode(jpegs[:batch], sizes[:batch])  # warm-up (nvjpeg handles, CUDA context)
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    decoded_px = []
    for i in range(0, len(jpegs), batch):
        r = dec.decode(jpegs[i : i + batch], sizes[i : i + batch])
        if r.fallback:
            raise RuntimeError(f"device decode failed for {len(r.fallback)} benchmark images")
        decoded_px.append(r.pixels)
    sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    dev = torch.cat(decoded_px).cpu().numpy()
    ref = np.stack(cpu_px)
    diff = np.abs(dev.astype(np.int16) - ref.astype(np.int16))
    out.update(
        device_decode_images_per_s=len(jpegs) / wall,
        device_decode_cpu_cores=cpu / wall,
        pixels_bit_equal_images=int(sum(np.array_equal(a, b) for a, b in zip(dev, ref, strict=True))),
        pixels_max_abs_diff=int(diff.max()),
        pixels_differing_share=float((diff > 0).mean()),
    )
    progress(
        f"decode: cpu {out['cpu_decode_images_per_s_per_core']:.0f} img/s/core, {device} "
        f"{out['device_decode_images_per_s']:.0f} img/s using {out['device_decode_cpu_cores']:.2f} cores, "
        f"bit-equal {out['pixels_bit_equal_images']}/{len(jpegs)}, max diff {out['pixels_max_abs_diff']}"
    )
    return out


# ---------------------------------------------------------------------------------------------- 4
def write_shards(folder: Path, p: dict[str, Any]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    jpegs = make_jpegs(min(64, p["per_shard"]), p["jpeg_size"], seed=1)  # distinct images, reused across keys
    n = 0
    for s in range(p["shards"]):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(p["per_shard"]):
                data = jpegs[(s * p["per_shard"] + i) % len(jpegs)]
                info = tarfile.TarInfo(f"s{s:06d}_{i:06d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                n += 1
    return n


def run_scan(
    work: Path,
    shards: Path,
    ckpt: Path,
    decode_on: str,
    p: dict[str, Any],
    use_gpu: bool,
    ray_address: str | None,
    gpu: GpuSampler,
) -> dict[str, Any]:
    out = work / f"scan-{decode_on}"
    args = [
        sys.executable,
        str(ROOT / "jobs" / "scan_bucket.py"),
        "--input",
        str(shards),
        "--output",
        str(out),
        "--detector",
        str(ckpt),
        "--num-actors",
        "1",
        "--batch-size",
        str(p["scan_batch"]),
        "--decode-on",
        decode_on,
        "--stall-timeout-s",
        "300",
    ]
    if use_gpu:
        args += ["--actor-num-gpus", "1", "--actor-num-cpus", "1"]
    if ray_address:
        args += ["--ray-address", ray_address]
    env = {
        **os.environ,
        "GENSCAN_CACHE": str(work / "cache"),
        "GENSCAN_LOG_LEVEL": "INFO",
    }  # INFO: the decode log
    j0, t0 = cpu_jiffies(), time.time()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    j1, t1 = cpu_jiffies(), time.time()
    res: dict[str, Any] = {"decode_on": decode_on, "exit_code": proc.returncode, "wall_s": round(t1 - t0, 2)}
    if proc.returncode != 0:
        res["error"] = (proc.stderr or proc.stdout)[-2000:]
        return res
    try:
        run = json.loads(Path(sorted(glob.glob(str(out / "_run" / "*" / "run.json")))[-1]).read_text())
        timing = (run.get("attempts") or [{}])[-1].get("timing", {})
        markers = [json.loads(Path(m).read_text()) for m in glob.glob(str(out / "_shards" / "*" / "*.json"))]
    except (OSError, IndexError, ValueError, AttributeError) as exc:  # a layout change must not lose the run
        res["error"] = f"cannot read the scan's run files: {type(exc).__name__}: {exc}"
        return res
    stream_s = float(timing.get("stream_s") or (t1 - t0))
    totals = run.get("totals") or {}
    res.update(
        rows=totals.get("rows"),
        counts=totals.get("counts"),
        timing=timing,
        steady_images_per_s=timing.get("steady_images_per_s"),
        machine_cpu_cores_busy=cores_busy(j0, j1),
        decode_s_per_wall_s=round(sum(m.get("decode_s", 0.0) for m in markers) / stream_s, 3),
        gpu=gpu.window(t0, t1),
        device_decode_seen="device_decode_active" in proc.stdout + proc.stderr,
    )
    progress(f"scan decode_on={decode_on}: {res['steady_images_per_s']} img/s steady, rows {res['rows']}")
    return res


# ---------------------------------------------------------------------------------------------- report
def render_md(res: dict[str, Any]) -> str:
    h = res["host"]
    title = "# GPU benchmark"
    if res.get("smoke"):
        title += " — CPU SMOKE RUN (checks the benchmark runs; these are not GPU figures)"
    lines = [
        title,
        "",
        f"Generated by `{res['command']}` on {res['date']}: device **{h['device']}**, torch {h['torch']}, "
        f"CUDA {h['cuda']}, {h['cpu_cores']} CPU cores ({h['cpu']}). All figures measured in this one run.",
        "",
        "## Encoder (input on the device; images/s)",
        "",
        "| model | dtype | batch | frozen | naive MoLE | fused MoLE | fused vs frozen | GPU util % (fused) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    key = {(r["model"], r["dtype"], r["batch"], r["variant"]): r for r in res["encoder"]}
    for m, d, b in dict.fromkeys((r["model"], r["dtype"], r["batch"]) for r in res["encoder"]):
        cells = []
        for v in VARIANTS:
            r = key.get((m, d, b, v), {})
            cells.append("OOM" if r.get("oom") else f"{r.get('images_per_s', float('nan')):.1f}")
        fr, fu = key.get((m, d, b, "disabled"), {}), key.get((m, d, b, "fused"), {})
        ratio = (
            f"{fu['images_per_s'] / fr['images_per_s'] - 1:+.1%}"
            if "images_per_s" in fr and "images_per_s" in fu
            else ""
        )
        util = (fu.get("gpu") or {}).get("util_mean_pct", "n/a")
        lines.append(f"| {m} | {d} | {b} | {' | '.join(cells)} | {ratio} | {util} |")
    lines += [
        "",
        "## Predictor feed (uint8 in host memory -> scores, fused MoLE)",
        "",
        "| model | dtype | chunk | images per call | images/s | GPU util % |",
        "|---|---|---|---|---|---|",
    ]
    for f in res["feed"]:
        lines.append(
            f"| {f['model']} | {f['dtype']} | {f['chunk']} | {f['images_per_call']} | "
            f"{f['images_per_s']:.1f} | {(f.get('gpu') or {}).get('util_mean_pct', 'n/a')} |"
        )
    d = res["decode"]
    lines += [
        "",
        f"## JPEG decode ({d['jpeg_size'][0]}x{d['jpeg_size'][1]}, 4:2:0, q90 -> {d['crop']}² crop)",
        "",
        f"- CPU (`decode_image`, Pillow): {d['cpu_decode_images_per_s_per_core']:.0f} images/s per core",
        f"- read side with `--decode-on gpu` (header check `device_decodable` only): "
        f"{d['read_side_check_images_per_s_per_core']:.0f} images/s per core",
        f"- device {d['device']} (`DeviceDecoder`, batches of 256): {d['device_decode_images_per_s']:.0f} "
        f"images/s, keeping {d['device_decode_cpu_cores']:.2f} CPU cores busy",
        f"- device pixels vs CPU pixels: {d['pixels_bit_equal_images']}/{d['images']} images bit-equal, "
        f"max |difference| {d['pixels_max_abs_diff']}, {d['pixels_differing_share']:.4%} of values differ",
    ]
    lines += [
        "",
        "## End-to-end scan (jobs/scan_bucket.py, local Ray, one scorer actor)",
        "",
        f"{res['scan'].get('images', 0)} images in {res['scan'].get('shards', 0)} local shards, detector "
        f"{res['scan'].get('model')} (random init), Ray batch {res['scan'].get('batch')}.",
        "",
        "| decode on | steady images/s | rows | wall s | GPU util % mean | machine CPU cores busy "
        "| decode s per wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["scan"].get("runs", []):
        if r.get("exit_code") != 0 or r.get("error"):
            lines.append(f"| {r['decode_on']} | failed (exit {r.get('exit_code')}; see gpu.json) | | | | | |")
            continue
        lines.append(
            f"| {r['decode_on']} | {r['steady_images_per_s']} | {r['rows']} | {r['wall_s']} | "
            f"{(r.get('gpu') or {}).get('util_mean_pct', 'n/a')} | {r['machine_cpu_cores_busy']} | "
            f"{r['decode_s_per_wall_s']} |"
        )
    for note in res["scan"].get("notes", []):
        lines += ["", f"- {note}"]
    if res.get("derived"):
        lines += ["", "## Derived (from the figures above, not measured directly)", ""]
        lines += [f"- {k}: {v}" for k, v in res["derived"].items()]
    return "\n".join(lines) + "\n"


def default_results_dir(smoke: bool) -> Path:
    """results/ for a GPU run; results/tmp/ (git-ignored) for a smoke run, which must never replace the
    committed GPU figures with CPU ones."""
    return ROOT / "results" / "tmp" if smoke else ROOT / "results"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument(
        "--smoke", action="store_true", help="CPU, tiny model, a few images: checks the benchmark"
    )
    ap.add_argument(
        "--results-dir",
        default=None,
        help="where gpu.json / gpu.md go (default: results/; --smoke: results/tmp/)",
    )
    ap.add_argument("--work-dir", default=None, help="scratch folder (default: a temp dir, removed after)")
    ap.add_argument(
        "--ray-address", default=None, help="Ray for the scans (default: each scan starts a local one)"
    )
    ap.add_argument("--skip-scan", action="store_true", help="leave out the end-to-end scans")
    args = ap.parse_args(argv)
    p = SMOKE if args.smoke else FULL
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on CPU (the GPU figures need a GPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    results = Path(args.results_dir) if args.results_dir else default_results_dir(args.smoke)
    results.mkdir(parents=True, exist_ok=True)
    work_ctx = (
        contextlib.nullcontext(args.work_dir)
        if args.work_dir
        else tempfile.TemporaryDirectory(prefix="genscan-gpu-")
    )
    res: dict[str, Any] = {
        "command": "benchmarks/gpu.py" + (" --smoke" if args.smoke else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": args.smoke,
        "host": {
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cpu": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(),
        },
    }
    t_all = time.perf_counter()
    with work_ctx as work_s, GpuSampler() as gpu:
        work = Path(work_s)
        res["encoder"], res["feed"] = bench_encoders(p, device, gpu)
        scan_cfg = DetectorConfig.load(p["scan_model"])
        res["decode"] = bench_decode(p, device, scan_cfg.image_size)
        res["scan"] = {"model": p["scan_model"], "batch": p["scan_batch"], "runs": [], "notes": []}
        if not args.skip_scan:
            res["scan"]["images"] = write_shards(work / "shards", p)
            res["scan"]["shards"] = p["shards"]
            ckpt = work / "detector"
            save_detector(create_detector(scan_cfg, pretrained=None), ckpt)
            modes = ["cpu", "gpu"] if cuda else ["cpu"]
            if not cuda:
                res["scan"]["notes"].append("decode on gpu: needs a GPU scorer actor (CPU smoke run)")
            for mode in modes:
                r = run_scan(work, work / "shards", ckpt, mode, p, cuda, args.ray_address, gpu)
                res["scan"]["runs"].append(r)
                if mode == "gpu" and r.get("exit_code") == 0 and not r.get("device_decode_seen"):
                    res["scan"]["notes"].append(
                        "decode on gpu: the run succeeded but no scorer reported a device-decoded row (no "
                        "`device_decode_active` log): the read stage did not ship JPEGs, so that "
                        "row measured CPU decode again (is prepare_shard wired to "
                        "pipeline.scan.gpu_decode.decode_or_ship?)"
                    )
    fused = [r for r in res["encoder"] if r.get("variant") == "fused" and "images_per_s" in r]
    if fused and res["decode"]["cpu_decode_images_per_s_per_core"] > 0:
        best = max(fused, key=lambda r: r["images_per_s"])
        res["derived"] = {
            "CPU decode cores one GPU needs at its best fused rate": (
                f"{best['images_per_s'] / res['decode']['cpu_decode_images_per_s_per_core']:.1f} cores "
                f"({best['model']} {best['dtype']} batch {best['batch']}: {best['images_per_s']:.0f} img/s / "
                f"{res['decode']['cpu_decode_images_per_s_per_core']:.0f} img/s per core, "
                f"{res['decode']['jpeg_size'][0]}x{res['decode']['jpeg_size'][1]} JPEGs)"
            ),
        }
    res["total_s"] = round(time.perf_counter() - t_all, 1)
    write_results(results, "gpu", res, render_md(res), default=str)
    print(json.dumps({"total_s": res["total_s"], "results": str(results / "gpu.md")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
