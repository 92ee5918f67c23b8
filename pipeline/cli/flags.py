"""Command-line flags generated from a job's pydantic config [ours]: ONE declaration per setting (the model
field: name, type, default, description) gives the flag, its type or choices and its --help; nothing is typed
twice. Flags the user did not give stay unset (None), so a `--config-file`'s value is kept; flags given
override it, and both go through the model's own validation (`StrictModel.parse`) together.

    parser = argparse.ArgumentParser(...)
    fields = add_model_flags(parser, ScanConfig, repeat={"detector"})
    data = {**file_values, **given(args, fields)}
    cfg = ScanConfig.parse(data, source=...)

Types: str / int / float -> `type=`; `Literal[...]` -> `choices=`; bool -> `--x`, `--x true|false`, `--no-x`;
`list[str]` -> one comma-separated value (`--train-generators a,b`); `X | None` is X. A field in `repeat` may
be given several times (`--detector A --detector B` == `--detector A,B`).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pipeline.exitcodes import help_epilog

# JobParser lives beside ConfigError in settings: `python -m pipeline.models` parses with it too
from pipeline.settings import JobParser, StrictModel
from pipeline.storage import absolute

M = TypeVar("M", bound=StrictModel)


def _truth(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _BoolFlag(argparse.Action):
    """A bool field: `--x` (true), `--x true|false`, or `--no-x` (false)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        negated = ["--no-" + s[2:] for s in option_strings if s.startswith("--")]
        # type=: argparse turns _truth's ArgumentTypeError into the parser's one-line error
        super().__init__([*option_strings, *negated], dest, nargs="?", const=None, type=_truth, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                raise argparse.ArgumentError(self, f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
        else:
            setattr(namespace, self.dest, True if values is None else values)


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X (the flag is optional anyway)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _help(field: FieldInfo) -> str:
    text = (field.description or "").replace("%", "%%")
    default = field.default
    if default is not PydanticUndefined and default is not None and not isinstance(default, BaseModel):
        text += f" [default: {default}]" if text else f"[default: {default}]"
    elif field.is_required():
        text += " [required]"
    return text


class ModelFlags:
    """The flags `add_model_flags` added for one model: `given(args)` is what the user typed, by field
    name."""

    def __init__(self, flags: dict[str, str], repeat: set[str]) -> None:
        self.flags, self.repeat = flags, repeat  # field -> its flag ("--batch-size")

    def named(self, args: argparse.Namespace, file: Mapping[str, Any] | None = None) -> dict[str, str]:
        """field -> flag, so a validation error names each setting as the user gives it
        (`StrictModel.parse(names=...)`): by its flag, a missing one too, except a field whose value came
        from ``file`` (a --config-file), named as the field."""
        given = self.given(args)
        return {name: flag for name, flag in self.flags.items() if name in given or name not in (file or {})}

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        values = {name: getattr(args, name, None) for name in self.flags}
        return {n: ",".join(v) if n in self.repeat else v for n, v in values.items() if v is not None}


def absolute_paths(data: dict[str, Any], keys: Iterable[str], *, lists: Iterable[str] = ()) -> None:
    """Make the local paths among `data[key]` absolute in place (`pipeline.storage.absolute`); a key in
    `lists` holds a comma-separated list of them (`--detector A,B`)."""
    lists = set(lists)
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            parts = value.split(",") if key in lists else [value]
            data[key] = ",".join(absolute(p) for p in parts)


def add_model_flags(
    parser: argparse.ArgumentParser | Any,
    model: type[BaseModel],
    *,
    skip: Iterable[str] = (),
    names: Mapping[str, str] | None = None,
    repeat: Iterable[str] = (),
) -> ModelFlags:
    """Add one flag per field of `model` (except `skip`) to `parser` (or an argument group); `names` renames a
    field's flag (field -> flag name without the dashes)."""
    names = dict(names or {})
    skip, repeat = set(skip), set(repeat)
    fields: dict[str, str] = {}
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + names.get(name, name.replace("_", "-"))
        kind = _unwrap(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": _help(field)}
        if kind is bool:
            kwargs.update(action=_BoolFlag, metavar="true|false")
        elif typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            kwargs.update(choices=choices, type=type(choices[0]))
        elif typing.get_origin(kind) is list:
            kwargs.update(type=_comma_list, metavar="A,B,...")
        elif kind in (int, float):
            kwargs["type"] = kind
        if name in repeat:
            kwargs["action"] = "append"
        parser.add_argument(flag, **kwargs)
        fields[name] = flag
    return ModelFlags(fields, repeat)


def config_from_flags(
    model: type[M], argv: list[str] | None, *, doc: str | None, job: str, **options: Any
) -> M:
    """A job whose every setting is a flag (its JSON log kept off the console: `--verbose`): its parser (`doc`
    as the description, `job`'s exit codes as the epilog), `model`'s fields as flags in one argument group
    (`add_model_flags(**options)`), `argv` parsed, and the model validated from the flags given, so a missing
    or bad value is named by its flag."""
    parser = JobParser(description=doc, epilog=help_epilog(job), log_flag=True)
    flags = add_model_flags(parser.add_argument_group(f"settings ({model.__name__})"), model, **options)
    args = parser.parse_args(argv)
    return model.parse(flags.given(args), source="command line", names=flags.flags)
