"""Base for every typed config: pydantic with unknown fields rejected (the error names the field)."""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.exitcodes import ExitCode, OperatorError


class ConfigError(OperatorError, ValueError):
    """A configuration problem, reported before any work starts; the message names the field."""

    exit_code = ExitCode.CONFIG
    label = "configuration error"


def read_json_object(path: str | Path, *, field: str) -> dict[str, Any]:
    """The JSON object in `path`; a ConfigError naming `field` (the flag or setting that gave the path) when
    the file is missing, not JSON, or not an object."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{field}: not found: {p}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{field}: {p} is not valid JSON: {exc}") from exc
    except OSError as exc:  # a folder, or a file this user may not read
        raise ConfigError(f"{field}: cannot read {p}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{field}: {p} must hold a JSON object")
    return data


def as_config_error(exc: Exception) -> ConfigError:
    """A ValueError / FileNotFoundError raised while a job reads what the user named (a path, a value) as the
    ConfigError the job reports: the same message, exit code 2."""
    return exc if isinstance(exc, ConfigError) else ConfigError(str(exc))


def _where(loc: tuple[Any, ...], names: Mapping[str, str]) -> str:
    """A pydantic error location as the user gave it: `generator_rules.0.action` from a file, `--rule #1
    action` from the command line (the flag that was typed, then which of its values)."""
    if not loc:
        return "<root>"
    head, rest = str(loc[0]), list(loc[1:])
    if head in names:
        head = names[head]
        if rest and isinstance(rest[0], int):
            head, rest = f"{head} #{rest[0] + 1}", rest[1:]
        return " ".join([head, ".".join(map(str, rest))]) if rest else head
    return ".".join([head, *map(str, rest)])


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)

    @classmethod
    def parse(
        cls, data: dict[str, Any], *, source: str = "config", names: Mapping[str, str] | None = None
    ) -> Self:
        """Validate `data`, turning pydantic's error into a ConfigError that names each bad setting as the
        user gave it: `names` maps a field to what was typed for it (its flag, e.g. `--batch-size`); a field
        not in `names` came from a file and is named as the field."""
        names = names or {}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{_where(err['loc'], names)}: {err['msg']}" for err in exc.errors())
            raise ConfigError(f"invalid {cls.__name__} in {source}: {problems}") from exc

    @classmethod
    def from_file(cls, path: str | Path, *, field: str = "config file") -> Self:
        """The model in the JSON file `path`; a file that cannot be read as an object is a ConfigError naming
        `field`: the flag that gave the path (`--policy`), or what the file is."""
        p = Path(path)
        return cls.parse(read_json_object(p, field=field), source=str(p))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


class JobParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (unknown flag, bad number, value not among the choices) raised as a
    ConfigError: ONE line and exit code 2 through `pipeline.cli.entry.job_main`, like every other
    configuration error."""

    def __init__(self, *args: Any, log_flag: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        if log_flag:  # the jobs whose JSON logs stay off the console (pipeline.cli.entry.job_main quiet=True)
            self.add_argument("--verbose", action="store_true", help="also show the JSON log lines on stderr")

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """`type=` of a plain (not model-generated) flag that counts something: 1 or more."""
    value = int(text)  # argparse reports a ValueError as "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value
