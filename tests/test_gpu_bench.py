"""benchmarks/gpu.py --smoke: the one-command GPU benchmark runs on CPU (tiny model) into a tmp results dir,
including its end-to-end scan against a real Ray head, and its report accounts for every image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _committed() -> dict[str, bytes | None]:
    files = (ROOT / "results" / "gpu.json", ROOT / "results" / "gpu.md")
    return {f.name: f.read_bytes() if f.exists() else None for f in files}


@pytest.mark.slow
def test_gpu_benchmark_smoke_writes_results(tmp_path: Path, shared_s3_ray: dict) -> None:
    res_dir = tmp_path / "results"
    committed = _committed()
    head = shared_s3_ray["head"]  # the run's shared head (tests/conftest.py)
    env = {**head.env, "OMP_NUM_THREADS": "1", "GENSCAN_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu.py"),
            "--smoke",
            "--results-dir",
            str(res_dir),
            "--work-dir",
            str(tmp_path / "work"),
            "--ray-address",
            head.address,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((res_dir / "gpu.json").read_text())
    md = (res_dir / "gpu.md").read_text()
    assert res["smoke"] and res["host"]["device"] == "cpu"
    got = {(r["batch"], r["variant"]) for r in res["encoder"] if r["images_per_s"] > 0}
    assert got == {(b, v) for b in (4, 8) for v in ("disabled", "unfused", "fused")}
    assert res["feed"][0]["images_per_s"] > 0
    d = res["decode"]  # decode_jpeg on CPU against Pillow: bit-equal on every benchmark image
    assert d["pixels_bit_equal_images"] == d["images"] == 16 and d["pixels_max_abs_diff"] == 0
    (run,) = res["scan"]["runs"]
    assert run["exit_code"] == 0, run.get("error")
    assert run["rows"] == res["scan"]["images"] == 24 and run["counts"]["ok"] == 24
    assert run["steady_images_per_s"] and run["steady_images_per_s"] > 0
    assert "## End-to-end scan" in md and "| cpu |" in md and "needs a GPU scorer actor" in md
    assert md.startswith("# GPU benchmark — CPU SMOKE RUN")  # never titled as GPU figures
    assert _committed() == committed  # the repository's results/ were not touched


def test_smoke_output_goes_to_an_ignored_folder_by_default() -> None:
    """Without --results-dir a smoke run writes results/tmp/ (git-ignored), a GPU run results/."""
    from benchmarks.gpu import default_results_dir

    assert default_results_dir(smoke=False) == ROOT / "results"
    smoke = default_results_dir(smoke=True)
    assert smoke == ROOT / "results" / "tmp"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(smoke / "gpu.md")], cwd=ROOT, capture_output=True, check=False
    )
    assert ignored.returncode == 0, "results/tmp/ must be ignored by git"
