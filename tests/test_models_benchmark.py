"""The encoder benchmark harness on the tiny config (timings are not asserted; structure and FLOPs are)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_encoder", ROOT / "benchmarks" / "encoder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_encoder_benchmark_tiny(tmp_path: Path) -> None:
    bench = _load_bench()
    r = bench.bench_model("tiny", "tiny-mole", torch.device("cpu"), "float32", batch=2, repeats=2, warmup=1)
    assert set(r["median_s"]) == {"disabled", "unfused", "fused"}
    assert all(len(v) == 2 and min(v) > 0 for v in r["all_times_s"].values())
    assert r["fused_vs_naive_max_rel_err"] <= 1e-5
    # 2 of 4 blocks carry 32 adapter columns + 3 router columns (+ alignment padding) next to a 512-wide MLP
    assert 0.0 < r["flop_overhead"]["fused"] < 0.05 and 0.0 < r["flop_overhead"]["unfused"] < 0.05
    torch_threads = torch.get_num_threads()
    assert (
        bench.main(
            ["--models", "tiny", "--repeats", "1", "--threads", str(torch_threads), "--out", str(tmp_path)]
        )
        == 0
    )
    res = json.loads((tmp_path / "encoder.json").read_text())
    assert [x["model"] for x in res["runs"]] == ["tiny"] and res["load_before"]
    md = (tmp_path / "encoder.md").read_text()
    assert "| tiny (ViT-Tiny-16-96) | 2/4 | cpu | float32 | 8 |" in md
