"""THE exit-code table of every genscan job [ours].

Operators' scripts (and `ray job submit` callers reading `driver_exit_code`) branch on these numbers, so they
never change meaning. README.md's "Exit codes" table is checked against this module by
tests/test_preflight.py; each job's `--help` lists the codes it can return from `JOB_CODES` below.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    RUN_FAILED = 1  # a systemic failure after the start, or the error budget was exceeded
    CONFIG = 2  # a flag, config field or policy value is wrong (the message names it)
    NOT_FOUND = 3  # a named location does not exist, or the job refused: the input is not what it needs
    WRITE_FAILED = 4  # the filter failed while writing: accounting did not reconcile / source changed
    ACCESS_DENIED = 5  # credentials rejected, or not allowed to list / write there
    NO_CREDENTIALS = 6  # no AWS credentials found
    CANNOT_CONNECT = 7  # the endpoint is unreachable or keeps answering 5xx / Slow Down


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.RUN_FAILED: "run failed (run.json says why) or the error budget was exceeded",
    ExitCode.CONFIG: "configuration error: a flag, config field or policy value is wrong",
    ExitCode.NOT_FOUND: "not found / refused: an input or output location does not exist, or the input is "
    "not what the job needs",
    ExitCode.WRITE_FAILED: "failed while writing: accounting did not reconcile, or a source changed",
    ExitCode.ACCESS_DENIED: "access denied by the store",
    ExitCode.NO_CREDENTIALS: "no credentials found",
    ExitCode.CANNOT_CONNECT: "cannot connect to the store's endpoint",
}

_STORAGE = (ExitCode.NOT_FOUND, ExitCode.ACCESS_DENIED, ExitCode.NO_CREDENTIALS, ExitCode.CANNOT_CONNECT)

# Which codes each job can return (the README's table columns, each job's --help).
JOB_CODES: dict[str, tuple[ExitCode, ...]] = {
    "scan_bucket": (ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.CONFIG, *_STORAGE),
    "filter_shards": (ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.CONFIG, ExitCode.WRITE_FAILED, *_STORAGE),
    "report": (ExitCode.OK, ExitCode.CONFIG, *_STORAGE),
    "rescore": (ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.CONFIG, *_STORAGE),
    # the training side: 3 = stored features missing (train --features-from) / a weights file refused (import)
    "train_detector": (ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.CONFIG, *_STORAGE),
    "import_detector": (ExitCode.OK, ExitCode.CONFIG, *_STORAGE),
    # storage preflight (s3:// inputs, every output): 3 = an output that cannot be a folder, 5-7 the store
    "calibrate": (ExitCode.OK, ExitCode.CONFIG, *_STORAGE),
    "evaluate": (ExitCode.OK, ExitCode.CONFIG, *_STORAGE),
    "make_demo_data": (ExitCode.OK, ExitCode.CONFIG, *_STORAGE),
}


def help_epilog(job: str) -> str:
    """The 'Exit codes' paragraph of a job's --help, from the table above."""
    lines = [f"  {int(c)}  {MEANING[c]}" for c in sorted(JOB_CODES[job])]
    return "Exit codes (README.md, 'Exit codes'):\n" + "\n".join(lines)


class OperatorError(Exception):
    """A failure an operator can act on: `str()` is the ONE line the console shows, `exit_code` the job's exit
    code. Subclasses set both class attributes; `label` prefixes the line ("configuration error: …"); an empty
    label means "<job> failed"."""

    exit_code: ExitCode = ExitCode.RUN_FAILED
    label: str = ""


def one_line(exc: OperatorError, job: str) -> str:
    """The console message for `exc` in job `job`: one line headed by its label; an operator error's message
    is written for the console (never a traceback), and only a refusal listing several problems runs on below
    it."""
    return f"{exc.label or job + ' failed'}: {str(exc).strip()}"
