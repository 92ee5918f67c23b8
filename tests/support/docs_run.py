"""Run the documentation's fenced command blocks as a user runs them: each ```bash block of README.md and
docs/*.md, in the doc's order, in a workspace (a temp dir), through bash with `set -euo pipefail`; the shell
variables a block assigns are set in the doc's later blocks, as in a reader's shell.

What a block may carry: a marker on the line just above its fence, `<!-- docs-test: ... -->`:
  skip: <reason>   not run here, and why (a cloud account, `make test` itself, ...): the reason is in the doc
  file <name>      not a command: the block's text is written to <name> in the workspace before the doc's
                   blocks run (a policy file a block reads)
  same as <doc>    every command of the block is one of <doc>'s run blocks, word for word (checked by
                   tests/test_docs_commands.py), so it is run there, not twice
Blocks without a language are listings (layouts, trees), not commands. The ```sql / ```python blocks of
docs/queries.md are run by tests/test_queries_doc.py; a ```sql block elsewhere runs here, its statements in
order on one DuckDB connection with the S3 filesystem registered (the route docs/queries.md shows); other
blocks carry a marker.

The substitutions, the only differences from what the doc says (SUBSTITUTIONS below):
  * `ray job submit [flags] -- python jobs/...` runs `python jobs/...` as a driver attached to the test run's
    shared Ray head (RAY_ADDRESS), as under `ray job submit`; the job server itself is tested by
    tests/test_scan_job.py and tests/test_multinode.py;
  * `.venv/bin/python` and `python` are this test run's interpreter (a wrapper first on PATH);
  * `s3://NAME/` is `s3://<prefix>-NAME/` on the run's moto S3 server (bucket names unique per module);
  * `/tmp/` is the workspace's tmp/ (tests write only in their temp dirs);
  * sizes a doc gives for its own data (`--n-per-class`) are the `sizes` a module passes (small), and a
    module may append flags to a job's commands (`extra`: e.g. fewer training epochs than the default 20);
  * `vitl14-linear` is `tiny-linear`: the corpus here is scanned with random-init tiny backbones, and a linear
    head trained from stored features must be on the scanning backbone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARK = re.compile(r"^<!-- docs-test: (skip|file|same as)(?::|\s)\s*(.+?) -->$")
# the docs whose bash blocks each module runs (a doc is run by one module; tests/test_docs_commands.py checks
# that every doc with a bash block to run is listed here and that its module exists)
RUN_BY = {
    "README.md": "tests/test_docs_readme.py",
    "demo_data.md": "tests/test_docs_guides.py",
    "detectors.md": "tests/test_docs_guides.py",
    "hygiene.md": "tests/test_docs_readme.py",  # after the README: its quarantine block reads demo/clean
    "schema.md": "tests/test_docs_readme.py",  # its queries read the README's s3://bucket/scan
    "training.md": "tests/test_docs_training.py",
}
QUERY_DOC = "queries.md"  # its sql / python blocks: tests/test_queries_doc.py


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # the fence's line number (1-based)
    lang: str
    text: str
    mark: tuple[str, str] | None  # ("skip", reason) | ("file", name) | ("same as", doc)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """Every fenced block of `doc`, with its language and marker."""
    out: list[Block] = []
    lines = doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        j = i + 1
        while not lines[j].strip().startswith("```"):
            j += 1
        m = MARK.match(lines[i - 1].strip()) if i else None
        mark = (m.group(1), m.group(2)) if m else None
        out.append(Block(doc.name, i + 1, fence[3:].strip(), "\n".join(lines[i + 1 : j]) + "\n", mark))
        i = j + 1
    return out


def runnable(doc: Path) -> list[Block]:
    """The blocks of `doc` the docs test runs (not marked skip): bash, and sql outside docs/queries.md."""
    return [
        b
        for b in blocks(doc)
        if b.mark is None and (b.lang == "bash" or (b.lang == "sql" and doc.name != QUERY_DOC))
    ]


def commands(text: str) -> list[str]:
    """The commands of a block as a reader runs them: continuation lines joined, comments and blank lines
    dropped, whitespace collapsed, the project's interpreter (`.venv/bin/python`) written `python`."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).replace(".venv/bin/python", "python")
        if line.strip():
            out.append(" ".join(line.split()))
    return out


@dataclass
class Workspace:
    """Where one doc's blocks run: cwd (a `jobs` link to the checkout), env (the shared S3 + Ray head),
    the bucket prefix and the sizes it substitutes."""

    root: Path
    env: dict[str, str]
    bucket_prefix: str
    sizes: dict[str, str]
    extra: dict[str, str] = field(default_factory=dict)  # job script -> flags appended to its commands
    shell: list[str] = field(default_factory=list)  # the assignments of blocks run so far (`DAY=...`)

    def bucket(self, name: str) -> str:
        return f"{self.bucket_prefix}-{name}"

    def fs(self):  # noqa: ANN201 - s3fs is imported lazily
        """An S3 filesystem on the workspace's endpoint (never a cached one of an earlier test's server)."""
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.env["AWS_ENDPOINT_URL"], skip_instance_cache=True)


def workspace(
    root: Path, shared: dict, bucket_prefix: str, sizes: dict[str, str], extra: dict[str, str] | None = None
) -> Workspace:
    """A workspace under `root` attached to the run's shared S3 server and Ray head (`shared_s3_ray`)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # this process's product code opens s3:// on the shared server
    root.mkdir(parents=True, exist_ok=True)
    (root / "jobs").symlink_to(REPO / "jobs")
    (root / "tmp").mkdir()
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        **shared["env"],
        "RAY_ADDRESS": shared["head"].address,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "2",
    }
    return Workspace(root, env, bucket_prefix, sizes, extra or {})


def substitute(text: str, ws: Workspace) -> str:
    """The doc's text as it runs here (the module docstring lists every substitution)."""
    text = text.replace("\\\n", " ")  # continuation lines joined, so a prefix spanning them is one match
    text = re.sub(r"ray job submit\b[^\n]*?--\s+(?=python )", "", text)
    text = text.replace(".venv/bin/python", "python")
    text = re.sub(r"s3://([a-z0-9][a-z0-9.-]*)/", lambda m: f"s3://{ws.bucket(m.group(1))}/", text)
    text = text.replace("/tmp/", f"{ws.root}/tmp/")
    text = text.replace("vitl14-linear", "tiny-linear")
    for flag, value in ws.sizes.items():
        text = re.sub(rf"({re.escape(flag)}[ =])\S+", rf"\g<1>{value}", text)
    for job, flags in ws.extra.items():  # appended before a trailing comment
        text = re.sub(
            rf"^([^#\n]*\b{re.escape(job)}\b[^#\n]*?)(\s*#.*)?$", rf"\g<1> {flags}\g<2>", text, flags=re.M
        )
    return text


def run_block(block: Block, ws: Workspace, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    """Run one block in the workspace, after the shell variables earlier blocks of its doc assigned (a reader
    runs a doc's blocks in one shell); returns the finished bash process."""
    text = substitute(block.text, ws)
    script = ws.root / f".block-{block.doc}-{block.line}.sh"
    # bash -x with a timestamp per command: a failure shows what ran, and when
    script.write_text(
        "\n".join(["set -euo pipefail", *ws.shell, "PS4='+ ${EPOCHREALTIME} '", "set -x", text])
    )
    ws.shell += [ln for ln in text.splitlines() if re.match(r"^[A-Z_][A-Z0-9_]*=", ln)]
    proc = subprocess.run(
        ["bash", str(script)], cwd=ws.root, env=ws.env, capture_output=True, text=True, timeout=timeout_s
    )
    script.with_suffix(".log").write_text(proc.stderr)  # each command's start time (PS4) and its console
    return proc


def run_sql(block: Block, ws: Workspace) -> subprocess.CompletedProcess:
    """A sql block's statements in order on one DuckDB connection (s3fs registered for s3:// paths, with the
    workspace's endpoint); stdout holds each statement's rows."""
    import duckdb

    con = duckdb.connect()
    con.register_filesystem(ws.fs())
    text = "\n".join(ln for ln in substitute(block.text, ws).splitlines() if not ln.lstrip().startswith("--"))
    out = []
    try:
        for stmt in (s.strip() for s in text.split(";")):
            if stmt:
                res = con.sql(stmt)
                out.append(repr(res.fetchall()) if res is not None else "")
    except duckdb.Error as exc:
        return subprocess.CompletedProcess(["duckdb"], 1, "\n".join(out), f"{stmt}\n{exc}")
    return subprocess.CompletedProcess(["duckdb"], 0, "\n".join(out), "")


def run_doc(doc: Path, ws: Workspace) -> dict[str, subprocess.CompletedProcess]:
    """A doc as a reader follows it: its `file` blocks written into the workspace, then its bash blocks in
    order, stopping at the first that fails (the later ones build on it). {block.where: process}."""
    for b in blocks(doc):
        if b.mark and b.mark[0] == "file":
            (ws.root / b.mark[1]).write_text(b.text)
    out: dict[str, subprocess.CompletedProcess] = {}
    for block in runnable(doc):
        out[block.where] = proc = run_sql(block, ws) if block.lang == "sql" else run_block(block, ws)
        if proc.returncode != 0:
            break
    return out


def check(ran: dict[str, subprocess.CompletedProcess], block: Block) -> None:
    """`block` was reached (no earlier block of its doc failed) and exited 0."""
    assert block.where in ran, f"{block.where} not reached: an earlier block failed"
    proc = ran[block.where]
    assert proc.returncode == 0, (
        f"{block.where} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
        f"--- stderr (bash -x)\n{proc.stderr[-6000:]}"
    )


def all_ran(ran: dict[str, subprocess.CompletedProcess], blocks: list[Block]) -> bool:
    return len(ran) == len(blocks) and all(p.returncode == 0 for p in ran.values())
