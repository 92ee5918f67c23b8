"""Encoder throughput: frozen backbone vs naive MoLE (per-expert loop) vs fused MoLE, in ONE run.

Every model is built at random init (no download) from the shipped configs, with random NON-ZERO adapter and
router weights. For each model the three variants run on the SAME module (``set_mole_mode``: "disabled" =
frozen backbone, "unfused" = naive per-expert loop, "fused"), interleaved round by round with a rotating
order, so machine-load drift hits all variants alike. We report the median time per batch, images/s, and the
overhead over frozen both as a ratio of medians and as the median of per-round paired ratios.

    .venv/bin/python benchmarks/encoder.py            # tiny, B/16, L/14 (several minutes on 2 cores)
    .venv/bin/python benchmarks/encoder.py --quick    # tiny + B/16, fewer repeats (into results/tmp/)

CPU fp32 always; on CUDA also fp32 / fp16 / bf16 autocast. Writes results/encoder.json and results/encoder.md.
(PLATFORM.md: setting MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ high before start helps L/14 on CPU.)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import (  # noqa: E402
    byline,
    load_average,
    md_page,
    parser,
    progress,
    results_dir,
    stamp,
    write_results,
)
from pipeline.models import DetectorConfig, create_detector  # noqa: E402
from pipeline.models.checks import randomize_adapters, rel_err  # noqa: E402

VARIANTS = ("disabled", "unfused", "fused")
LABEL = {"disabled": "frozen", "unfused": "naive MoLE", "fused": "fused MoLE"}
MODELS = {"tiny": "tiny-mole", "B/16": "vitb16-mole", "L/14": "vitl14-mole"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    name: str, config: str, device: torch.device, dtype: str, batch: int, repeats: int, warmup: int
) -> dict:
    cfg = DetectorConfig.load(config)
    torch.manual_seed(0)
    det = create_detector(cfg, pretrained=None)
    randomize_adapters(det, seed=0)
    det = det.to(device).eval()
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    amp = (
        contextlib.nullcontext()
        if dtype == "float32"
        else torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))
    )
    flops: dict[str, float] = {}
    with torch.inference_mode(), amp:
        from torch.utils.flop_counter import FlopCounterMode

        for v in VARIANTS:  # matmul/conv/attention FLOPs per image (load-independent)
            det.set_mole_mode(v)
            with FlopCounterMode(display=False) as fc:
                det(x[:1])
            flops[v] = float(fc.get_total_flops())
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    outs = {}
    with torch.inference_mode(), amp:
        for v in VARIANTS:  # warm up every path (and build the fused cache)
            det.set_mole_mode(v)
            for _ in range(warmup):
                outs[v] = det(x).features.float()
        _sync(device)
        for r in range(repeats):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for v in order:
                det.set_mole_mode(v)
                if v == "fused":
                    det(x[:1])  # the cache is built outside the timed call (weights do not change)
                _sync(device)
                c0, t0 = time.process_time(), time.perf_counter()
                det(x)
                _sync(device)
                times[v].append(time.perf_counter() - t0)
                cpu[v].append(time.process_time() - c0)
    med = {v: statistics.median(t) for v, t in times.items()}
    paired = {
        v: statistics.median(a / b for a, b in zip(times[v], times["disabled"], strict=True)) - 1.0
        for v in ("unfused", "fused")
    }
    cpu_paired = {
        v: statistics.median(a / b for a, b in zip(cpu[v], cpu["disabled"], strict=True)) - 1.0
        for v in ("unfused", "fused")
    }
    counts = det.param_counts()
    return {
        "model": name,
        "config": config,
        "arch": cfg.arch,
        "adapted_blocks": counts["adapted_blocks"],
        "depth": counts["depth"],
        "image_size": cfg.image_size,
        "device": str(device),
        "dtype": dtype,
        "batch": batch,
        "repeats": repeats,
        "median_s": med,
        "images_per_s": {v: batch / med[v] for v in VARIANTS},
        "overhead_ratio_of_medians": {v: med[v] / med["disabled"] - 1.0 for v in ("unfused", "fused")},
        "overhead_paired_median": paired,
        "overhead_cpu_time_paired_median": cpu_paired,
        "gflop_per_image": {v: flops[v] / 1e9 for v in VARIANTS},
        "flop_overhead": {v: flops[v] / flops["disabled"] - 1.0 for v in ("unfused", "fused")},
        "fused_vs_naive_max_rel_err": rel_err(outs["fused"], outs["unfused"]),
        "all_times_s": times,
        "all_cpu_times_s": cpu,
    }


def render_md(res: dict) -> str:
    command = f"benchmarks/encoder.py{' --quick' if res['quick'] else ''}"
    intro = [
        byline(command, res) + " (shared machine: compare ratios within this run, not absolute numbers "
        "across runs).",
        "Random-init weights, random non-zero adapters; all variants on the same module, interleaved "
        "round by round; median over repeats. Overhead = time / frozen time - 1: wall = ratio of median wall "
        "times, (paired) = median of per-round wall ratios, cpu = median of per-round "
        "process-CPU-time ratios (less sensitive to other processes on a shared machine).",
    ]
    header = [
        *("model", "adapted blocks", "device", "dtype", "batch", "frozen img/s", "naive img/s"),
        *("fused img/s", "naive overhead: wall (paired) / cpu", "fused overhead: wall (paired) / cpu"),
        *("GFLOP/img frozen", "fused FLOP overhead", "fused vs naive rel err"),
    ]
    rows = []
    for r in res["runs"]:
        ips, ov, pr = r["images_per_s"], r["overhead_ratio_of_medians"], r["overhead_paired_median"]
        cp = r["overhead_cpu_time_paired_median"]
        overheads = [
            f"{ov[v] * 100:+.1f} % ({pr[v] * 100:+.1f} %) / {cp[v] * 100:+.1f} %"
            for v in ("unfused", "fused")
        ]
        rows.append(
            [
                f"{r['model']} ({r['arch']})",
                f"{len(r['adapted_blocks'])}/{r['depth']}",
                *(r["device"], r["dtype"], r["batch"]),
                *(f"{ips[v]:.2f}" for v in ("disabled", "unfused", "fused")),
                *overheads,
                f"{r['gflop_per_image']['disabled']:.2f}",
                f"{r['flop_overhead']['fused'] * 100:+.2f} %",
                f"{r['fused_vs_naive_max_rel_err']:.1e}",
            ]
        )
    title = "Encoder benchmark: frozen vs naive MoLE vs fused MoLE"
    return md_page(title, intro, header, rows, [res.get("notes", "")])


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="tiny + B/16 only, fewer repeats")
    ap.add_argument("--models", nargs="*", choices=list(MODELS), default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per model (default 30/9/5, quick 10/3)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--notes", default="", help="free text appended to the markdown (e.g. what was reached and why)"
    )
    args = ap.parse_args(argv)
    args.out = results_dir(args.out, args.quick)

    torch.set_num_threads(args.threads)
    models = args.models or (["tiny", "B/16"] if args.quick else list(MODELS))
    default_repeats = {"tiny": 10, "B/16": 3, "L/14": 3} if args.quick else {"tiny": 30, "B/16": 9, "L/14": 5}
    load_before = load_average()
    runs = []
    targets = [(torch.device("cpu"), "float32")]
    if torch.cuda.is_available():
        targets += [(torch.device("cuda"), d) for d in ("float32", "float16", "bfloat16")]
    for device, dtype in targets:
        for m in models:
            reps = args.repeats or default_repeats[m]
            r = bench_model(m, MODELS[m], device, dtype, args.batch, reps, warmup=1 if m != "tiny" else 3)
            progress(
                f"{m:5s} {device.type}/{dtype}: frozen {r['images_per_s']['disabled']:.2f} img/s, "
                f"naive {r['overhead_ratio_of_medians']['unfused'] * 100:+.1f} %, "
                f"fused {r['overhead_ratio_of_medians']['fused'] * 100:+.1f} % "
                f"(paired {r['overhead_paired_median']['fused'] * 100:+.1f} %, "
                f"cpu {r['overhead_cpu_time_paired_median']['fused'] * 100:+.1f} %)"
            )
            runs.append(r)
    res = {
        **stamp(
            load_before,
            cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            malloc_env={k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
        ),
        "quick": args.quick,
        "runs": runs,
        "notes": args.notes,
    }
    write_results(args.out, "encoder", res, render_md(res))
    print(f"wrote {args.out / 'encoder.md'} and {args.out / 'encoder.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
