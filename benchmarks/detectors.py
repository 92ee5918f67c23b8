"""Several detectors, model side: one shared backbone pass (``DetectorSet``) vs one pass per detector, in ONE
run.

Three detectors on ONE random-init backbone (saved to a temporary .safetensors so all three carry the same
backbone identity): a UnivFD-layout linear head on the projected embedding (``center_crop_pad``), a
RINE-layout head on every block's ln_2 CLS token (nproj 4, dim 128, the released 2class shape) and a MoLE
detector (the shipped MoLE config's adapted blocks, random non-zero adapters, genscan's ``center_crop``).
Inputs are uint8 batches of images larger than the crop, so both crops give identical arrays and the set
shares one pass (its per-row equality check is inside the timed call).

* shared: ``DetectorSet.predict`` (what a scan with ``--detector A,B,C`` would run per batch);
* separate: three ``Predictor.predict`` calls, one per detector (what three scans would run per batch).

Interleaved round by round with a rotating order; median wall time per batch, median of per-round paired
ratios, and the per-round process-CPU-time ratio. Also: max relative difference of the shared logits from
the separate ones, the block passes each way, and the bytes of distinct parameters held (the set points the
members' frozen modules at one copy).

    .venv/bin/python benchmarks/detectors.py                 # tiny + B/16 on CPU (a few minutes on 2 cores)
    .venv/bin/python benchmarks/detectors.py --sizes L/14     # also on CUDA when present

Writes results/detectors.json and results/detectors.md.
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import byline, load_average, md_page, parser, progress, stamp, write_results  # noqa: E402
from pipeline.models import DetectorConfig, DetectorMeta, Predictor, create_detector  # noqa: E402
from pipeline.models.checks import randomize_adapters  # noqa: E402
from pipeline.models.ensemble import DetectorSet  # noqa: E402

SIZES = {
    # name: (arch, image size, MoLE config whose adapted blocks are used)
    "tiny": ("ViT-Tiny-16-96", 96, "tiny-mole"),
    "B/16": ("ViT-B-16-quickgelu", 224, "vitb16-mole"),
    "L/14": ("ViT-L-14-quickgelu", 224, "vitl14-mole"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _configs(arch: str, size: int, mole_cfg: str) -> list[DetectorConfig]:
    common = {"arch": arch, "pretrained": None, "image_size": size, "generators": []}
    univfd = {**DetectorConfig.load("univfd-vitl14").model_dump(), **common, "name": "univfd-like"}
    rine = {**DetectorConfig.load("rine-vitl14-2class").model_dump(), **common, "name": "rine-like"}
    mole = {**DetectorConfig.load(mole_cfg).model_dump(), **common, "name": "mole"}
    return [DetectorConfig.parse(c, source="benchmark") for c in (univfd, rine, mole)]


def _build(name: str, device: torch.device, tmp: Path) -> list:
    arch, size, mole_cfg = SIZES[name]
    cfgs = _configs(arch, size, mole_cfg)
    torch.manual_seed(0)
    base = create_detector(cfgs[0], pretrained=None)
    bb = tmp / f"{name.replace('/', '')}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in base.visual.state_dict().items()}, str(bb))
    del base
    out = []
    for i, cfg in enumerate(cfgs):
        torch.manual_seed(10 + i)
        det = create_detector(cfg, pretrained=str(bb))
        randomize_adapters(det, seed=i)  # MoLE only: random non-zero adapters and spread-out router gates
        meta = DetectorMeta(detector_id=f"{cfg.name}@bench", generators=[])
        out.append((det.to(device).eval(), meta))
    return out


def _distinct_param_bytes(modules: list[torch.nn.Module]) -> int:
    seen: dict[int, int] = {}
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def bench(name: str, device: torch.device, batch: int, repeats: int, warmup: int, tmp: Path) -> dict:
    arch, size, _ = SIZES[name]
    members = _build(name, device, tmp)
    separate = [Predictor(det, meta, device=device) for det, meta in members]
    bytes_separate = _distinct_param_bytes([d for d, _ in members])
    dset = DetectorSet(members, device=device)  # re-points the members' frozen modules: build it second
    bytes_shared = _distinct_param_bytes([m.det for m in dset.members])
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    batches = {spec: images for spec in dset.inputs}

    def run_shared() -> np.ndarray:
        return dset.predict(batches)["logit"]

    def run_separate() -> np.ndarray:
        return np.stack([p.predict(images)["logit"] for p in separate], axis=1)

    fns = {"shared": run_shared, "separate": run_separate}
    ref = run_separate()
    got = run_shared()
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for k in order[r % 2 :] + order[: r % 2]:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fns[k]()
            _sync(device)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    g = dset.groups[0]
    depth, k = g.primary.det.depth, g.shared_blocks
    passes_shared = depth + (depth - k)  # plain members share all blocks; MoLE runs its own from k on
    med = {key: statistics.median(v) for key, v in wall.items()}
    return {
        "size": name,
        "arch": arch,
        "device": device.type,
        "dtype": "float32",
        "batch": batch,
        "repeats": repeats,
        "detectors": [m.detector_id for m in dset.members],
        "groups": dset.describe()["groups"],
        "depth": depth,
        "shared_blocks": k,
        "block_passes": {"shared": passes_shared, "separate": 3 * depth},
        "block_pass_ratio": passes_shared / (3 * depth),
        "median_s_per_batch": med,
        "images_per_s": {key: batch / v for key, v in med.items()},
        "ratio_of_medians": med["shared"] / med["separate"],
        "ratio_paired_median": statistics.median(
            a / b for a, b in zip(wall["shared"], wall["separate"], strict=True)
        ),
        "cpu_ratio_paired_median": statistics.median(
            a / b for a, b in zip(cpu["shared"], cpu["separate"], strict=True) if b > 0
        ),
        "max_rel_diff_shared_vs_separate": rel,
        "param_bytes": {"shared": bytes_shared, "separate": bytes_separate},
    }


def _row(r: dict) -> list:
    """One run's table row."""
    ips, bp, pb = r["images_per_s"], r["block_passes"], r["param_bytes"]
    return [
        f"{r['size']} ({r['arch']}, {r['shared_blocks']}/{r['depth']} blocks shared by all)",
        *(r["device"], r["batch"], f"{ips['shared']:.2f}", f"{ips['separate']:.2f}"),
        *(f"{r['ratio_of_medians']:.3f}", f"{r['ratio_paired_median']:.3f}"),
        f"{r['cpu_ratio_paired_median']:.3f}",
        f"{bp['shared']} / {bp['separate']} ({r['block_pass_ratio']:.3f})",
        f"{r['max_rel_diff_shared_vs_separate']:.1e}",
        f"{pb['shared'] / 2**20:.1f} / {pb['separate'] / 2**20:.1f}",
    ]


def render_md(res: dict) -> str:
    intro = [
        byline("benchmarks/detectors.py", res, cuda=True) + " (shared machine: read the ratios, not "
        f"absolute numbers). Peak RSS of the run: {res['peak_rss_mib']:.0f} MiB.",
        "Three detectors on ONE random-init backbone: UnivFD-layout (linear on encode_image), RINE-layout "
        "(ln_2 CLS of every block, nproj 4 / dim 128) and MoLE (the shipped MoLE config's adapted blocks). "
        "shared = `DetectorSet.predict`; separate = three `Predictor.predict` calls (one per detector, as "
        "three scans would run). Model side only: decode, I/O and Parquet are not in these numbers. "
        "ratio = shared / separate: of median wall times, median of per-round paired wall ratios, median of "
        "per-round process-CPU-time ratios. Block passes: transformer blocks run per batch.",
    ]
    header = [
        *("backbone", "device", "batch", "shared img/s", "separate img/s", "ratio (medians)"),
        *("ratio (paired)", "cpu ratio", "block passes shared / separate", "max rel diff"),
        "params held shared / separate (MiB)",
    ]
    rows = [_row(r) for r in res["runs"]]
    title = "Several detectors: one shared backbone pass vs one pass per detector"
    return md_page(title, intro, header, rows, [res.get("notes", "")])


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--sizes", nargs="*", choices=list(SIZES), default=["tiny", "B/16"])
    ap.add_argument("--batch", type=int, default=None, help="default: 32 tiny, 8 B/16 and L/14 (64 on CUDA)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15 tiny, 5 larger)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present, else cpu)")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--notes", default="", help="free text appended to the markdown")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load_before = load_average()
    runs = []
    with tempfile.TemporaryDirectory(prefix="genscan-bench-") as tmp:
        for s in args.sizes:
            batch = args.batch or (32 if s == "tiny" else 64 if device.type == "cuda" else 8)
            reps = args.repeats or (15 if s == "tiny" else 5)
            r = bench(s, device, batch, reps, warmup=2 if s == "tiny" else 1, tmp=Path(tmp))
            progress(
                f"{s:5s} {device.type}: shared {r['images_per_s']['shared']:.2f} img/s, separate "
                f"{r['images_per_s']['separate']:.2f} img/s, ratio {r['ratio_of_medians']:.3f} "
                f"(paired {r['ratio_paired_median']:.3f}, block passes {r['block_pass_ratio']:.3f}), "
                f"rel diff {r['max_rel_diff_shared_vs_separate']:.1e}"
            )
            runs.append(r)
    res = {
        **stamp(load_before, cuda=torch.cuda.get_device_name(0) if device.type == "cuda" else None),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runs": runs,
        "notes": args.notes,
    }
    stem = "detectors" if device.type == "cpu" else f"detectors.{device.type}"
    write_results(args.out, stem, res, render_md(res))
    print(f"wrote {args.out / (stem + '.md')} and {args.out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
