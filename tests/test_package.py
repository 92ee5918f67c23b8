"""The product as a package: the wheel built from pyproject.toml, installed into a FRESH virtual environment
(only the wheel: its dependencies come from the project's environment through a path entry, no editable
install, no checkout on the path), then used the way an installed user runs it — the `genscan-*` console
scripts from a folder outside the repository: demo data, a tiny detector, a scan on a local Ray whose workers
run the fresh environment's interpreter, the Parquet read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (cmd, proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_scans_from_its_console_scripts(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # built from a copy of what the wheel is made of: setuptools writes build/ and *.egg-info beside the
    # sources, and a test writes only in its tmp dir
    src = tmp_path / "src"
    shutil.copytree(REPO / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    # the package metadata is current: building it prints no setuptools deprecation warning
    assert "Deprecat" not in build.stderr and "deprecat" not in build.stderr, build.stderr[-3000:]
    (wheel,) = wheels.glob("genscan-*.whl")

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
        tmp_path,
        # without PYTHONPATH: a checkout on it (with the genscan.egg-info the build leaves there) reads as
        # "genscan already installed" and pip would install nothing
        {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    # the dependencies: the project environment's site-packages as a plain path entry (its .pth files, the
    # editable install of the checkout among them, are NOT processed that way)
    fresh_site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = sysconfig.get_paths()["purelib"]
    (fresh_site / "zz_project_deps.pth").write_text(deps + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    work = tmp_path / "user"
    work.mkdir()

    where = _run([str(py), "-c", "import pipeline; print(pipeline.__file__)"], work, env).stdout.strip()
    assert where.startswith(str(fresh_site)), where  # the wheel's copy, not the checkout
    assert str(REPO) not in where

    for script in (
        "genscan-scan",
        "genscan-filter",
        "genscan-report",
        "genscan-train",
        "genscan-make-demo-data",
    ):
        out = _run([str(venv / "bin" / script), "--help"], work, env).stdout
        assert "usage:" in out, script

    _run(
        [
            str(venv / "bin" / "genscan-make-demo-data"),
            "--out",
            "shards",
            "--layout",
            "wds",
            "--families",
            "upconv",
            "--n-per-class",
            "6",
            "--shard-size",
            "6",
            "--image-size",
            "64",
        ],
        work,
        env,
    )
    make_detector = (
        "import torch\n"
        "from pipeline.models import DetectorConfig, create_detector, save_detector\n"
        "from pipeline.models.meta import DetectorMeta\n"
        "torch.manual_seed(0)\n"
        "det = create_detector(DetectorConfig.load('tiny-mole'), pretrained=None, "
        "generators=['upconv']).eval()\nsave_detector(det, 'detector', DetectorMeta(threshold=0.5, "
        "unknown_threshold=0.6))\n"
    )
    _run([str(py), "-c", make_detector], work, env)
    scan = _run(
        [
            str(venv / "bin" / "genscan-scan"),
            "--input",
            "shards",
            "--output",
            "scan",
            "--detector",
            "detector",
            "--ray-num-cpus",
            "2",
            "--batch-size",
            "8",
        ],
        work,
        env,
    )
    summary = json.loads(scan.stdout.strip().splitlines()[-1])
    assert summary["status"] == "succeeded" and summary["rows"] == 12, summary

    import pyarrow.dataset as pads

    rows = pads.dataset(str(work / "scan"), format="parquet", partitioning="hive").to_table()
    assert rows.num_rows == 12 and set(rows.column("status").to_pylist()) == {"ok"}

    # the report renders from the templates the wheel carries (package data), not the checkout's
    assert (Path(where).parent / "report" / "templates" / "report.html.j2").is_file()
    report = _run(
        [str(venv / "bin" / "genscan-report"), "--scan", "scan", "--output", "report", "--gallery-size", "2"],
        work,
        env,
    )
    printed = json.loads(report.stdout.strip().splitlines()[-1])
    assert printed["rows"] == 12 and printed["thumbnails"] > 0, printed
    page = (work / "report" / "report.html").read_text()
    assert 'data-metric="totals.rows">12<' in page and 'id="genscan-summary"' in page
    assert 'data-metric="header.run_status">succeeded<' in page
