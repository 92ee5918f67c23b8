"""Running this checkout's Python entry points as a user runs them: a separate process from the repository
root, with this checkout's `pipeline` first on the path, output captured as text."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` from the repository root (stdout and stderr captured as text, killed after `timeout`
    seconds); `env` is the whole environment (default: this process's), PYTHONPATH set to this checkout."""
    base = os.environ if env is None else env
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, "PYTHONPATH": str(REPO)},
    )
