"""`make demo` = `python jobs/scan_bucket.py --demo` [ours].

Everything below `demo_dir` (default ./demo), each step skipped when its output already exists:
- shards/: WebDataset demo shards (jobs/make_demo_data.py --layout wds, four simulated generator families,
  seed 0) plus one deliberately broken shard and one shard with a corrupt sample, so the summary shows error
  rows;
- train/: a UnivFD-layout training set (jobs/make_demo_data.py --layout univfd, two of the families, seed 1);
- detector/: a tiny MoLE detector trained by the project's own job on Ray Train (jobs/train_detector.py,
  defaults);
- scan/: the scan of shards/ on a local Ray (local folder in and out: no S3 server needed, moto is a dev
  dependency), resumed if a run of today is unfinished.
Then a short summary read back from the Parquet with DuckDB. The figures are measured on SIMULATED demo
fingerprints with a tiny random-init backbone: they show the pipeline works, not real-world accuracy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.logs import get_logger
from pipeline.scan.config import ScanConfig

log = get_logger("pipeline.cli.demo")

# the steps run this installation's jobs as modules (`python -m pipeline.cli.<job>`), so the demo works from a
# checkout and from an installed wheel alike; PYTHONPATH makes the child import the same `pipeline` as this
# process
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
SCAN_FAMILIES = "upconv,diffusion,vqgan,gan_color"
TRAIN_FAMILIES = "upconv,diffusion"


@dataclass(frozen=True)
class DemoSize:
    """How much the demo generates and trains. `make demo` runs the defaults; a test runs a smaller one."""

    scan_per_class: int = 48  # reals and fakes per family in the scanned shards (--n-per-class)
    shard_size: int = 64  # samples per scanned shard
    train_per_class: int = 96  # reals and fakes per family in the training set
    epochs: int | None = None  # None: the training job's default


def _job(module: str, what: str, status: Callable[[str], None] | None, **flags: object) -> None:
    """Run `python -m pipeline.cli.<module> --flag value ...` (a flag per keyword not None, `_` as `-`)."""
    args = [a for k, v in flags.items() if v is not None for a in (f"--{k.replace('_', '-')}", str(v))]
    cmd = [sys.executable, "-m", f"pipeline.cli.{module}", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    log.info("demo_step", step=what, cmd=" ".join(cmd[1:]))
    if status is not None:
        status(f"demo: {what}...")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"demo step {what!r} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _make_data(
    what: str,
    status: Callable[[str], None] | None,
    out: Path,
    layout: str,
    families: str,
    n_per_class: int,
    seed: int,
    shard_size: int | None = None,
) -> None:
    """One of the demo's data sets, written by the demo-data job."""
    _job(
        "make_demo_data",
        what,
        status,
        out=out,
        layout=layout,
        families=families,
        n_per_class=n_per_class,
        seed=seed,
        shard_size=shard_size,
    )


def add_bad_shards(shards: Path) -> None:
    """One shard that is not a tar and one with a corrupt image and an image-less sample (status rows)."""
    import io
    import tarfile

    (shards / "shard-900000.tar").write_bytes(b"this object is not a tar archive")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, payload in (
            ("broken-0.jpg", b"\xff\xd8\xff\xe0 truncated jpeg"),
            ("broken-0.json", b'{"label": 0, "generator": "real"}'),
            ("noimage-1.json", b'{"label": 1, "generator": "upconv"}'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    (shards / "shard-900001.tar").write_bytes(buf.getvalue())


def prepare(demo_dir: Path, status: Callable[[str], None] | None, size: DemoSize) -> dict[str, Path]:
    paths = {k: demo_dir / k for k in ("shards", "train", "detector", "scan")}
    if not any(paths["shards"].glob("shard-0*.tar")):
        _make_data(
            "demo shards",
            status,
            paths["shards"],
            "wds",
            SCAN_FAMILIES,
            n_per_class=size.scan_per_class,
            seed=0,
            shard_size=size.shard_size,
        )
        add_bad_shards(paths["shards"])
    if not paths["train"].exists():
        _make_data(
            "training set",
            status,
            paths["train"],
            "univfd",
            TRAIN_FAMILIES,
            n_per_class=size.train_per_class,
            seed=1,
        )
    if not (paths["detector"] / "detector.safetensors").exists():
        _job(
            "train_detector",
            "train detector (Ray Train, one CPU worker)",
            status,
            data=paths["train"],
            config="tiny-mole",
            method="mole",
            train_generators=TRAIN_FAMILIES,
            out=paths["detector"],
            epochs=size.epochs,
        )
    return paths


def labels_table(shards: Path) -> Any:
    """(shard, key, generator) of the demo shards, from their json members — for the summary only."""
    import pyarrow as pa

    from pipeline.shards import read_shard
    from pipeline.storage import shard_id

    rows = [
        {
            "shard": shard_id(str(tar), str(shards)),
            "key": s.key,
            "generator": (s.meta or {}).get("generator", "?"),
        }
        for tar in sorted(shards.glob("*.tar"))
        for s in read_shard(str(tar)).samples
    ]
    return pa.Table.from_pylist(
        rows, schema=pa.schema([("shard", pa.string()), ("key", pa.string()), ("generator", pa.string())])
    )


def summary(scan_dir: Path, shards: Path) -> str:
    """A short text summary read back from the Parquet with DuckDB (one hive-partitioned glob)."""
    import duckdb

    from pipeline.output import parquet_glob

    con = duckdb.connect()
    glob = parquet_glob(str(scan_dir)).replace("'", "''")
    con.execute(f"CREATE VIEW scan AS SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
    con.register("truth", labels_table(shards))
    out = []

    def table(title: str, sql: str) -> None:
        res = con.execute(sql)
        out.extend([f"\n{title}", "  " + " | ".join(d[0] for d in res.description)])
        out.extend("  " + " | ".join(_fmt(v) for v in r) for r in res.fetchall())

    table("rows by status", "SELECT status, count(*) AS n FROM scan GROUP BY status ORDER BY n DESC")
    table(
        "fake rate (status ok)",
        "SELECT count(*) AS scanned, avg(is_fake::INT) AS fake_rate, "
        "any_value(threshold) AS threshold, any_value(detector_id) AS detector FROM scan WHERE status = 'ok'",
    )
    table(
        "top generators (status ok)",
        "SELECT top_generator, count(*) AS n FROM scan WHERE status = 'ok' "
        "GROUP BY ALL ORDER BY n DESC LIMIT 6",
    )
    table(
        "per shard",
        "SELECT scan_date, shard, count(*) AS rows, sum((status='ok')::INT) AS ok, "
        "sum(is_fake::INT) AS flagged FROM scan GROUP BY ALL ORDER BY shard",
    )
    table(
        "flagged by TRUE generator (demo labels; simulated fingerprints, tiny model)",
        "SELECT t.generator, count(*) AS n, avg(s.is_fake::INT) AS flagged_rate, avg(s.p_fake) AS "
        "mean_p_fake FROM scan s JOIN truth t USING (shard, key) WHERE s.status = 'ok' GROUP BY "
        "ALL ORDER BY 1",
    )
    return "\n".join(out)


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def run_demo(
    demo_dir: Path,
    executor: Any = None,
    *,
    status: Callable[[str], None] | None = None,
    on_shard: Callable[..., None] | None = None,
    size: DemoSize = DemoSize(),
) -> tuple[int, str]:
    """Prepare (if needed), scan (with `executor`: the entry point passes the Ray one; None: in-process),
    summarise. Returns (exit code, summary text). status / on_shard: the job's console (a line per step, the
    scan's progress line); size: how much data and training (`make demo`: the defaults)."""
    from pipeline.scan.job import ScanFailed, run_scan

    demo_dir = demo_dir.resolve()
    paths = prepare(demo_dir, status, size)
    cfg = ScanConfig(
        input=str(paths["shards"]),
        output=str(paths["scan"]),
        detector=str(paths["detector"]),
        resume=True,
        batch_size=32,
        ray_num_cpus=2,
        actor_num_cpus=0.5,
        read_num_cpus=0.5,
        torch_threads=1,
    )
    try:
        if status is not None:
            status("demo: scanning the demo shards (starting Ray, loading the detector)...")
        run = run_scan(cfg, executor=executor, on_shard=on_shard)
    except ScanFailed as exc:
        return 1, f"demo scan failed: {exc}"
    head = (
        f"demo scan {run['status']}: run {run['run_id']} ({run['scan_date']}), {run['totals']['rows']} rows "
        f"from {run['shards_total']} shards -> {paths['scan']}"
    )
    return (0 if run["status"] == "succeeded" else 1), head + summary(paths["scan"], paths["shards"])
