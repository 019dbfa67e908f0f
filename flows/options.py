"""Command-line options derived from a pydantic settings model: one option per field, with the field's
type, choices, default and description, so the CLI cannot drift from the settings it fills in.

A field `shard_size: int = 16` becomes `--shard-size N`; a `Literal` field gets its values as
choices; a tuple or list field takes a comma-separated string (the model's validators split it); a
`dict[str, float]` field takes `NAME=AMOUNT`, repeatable; a boolean field that defaults to true becomes
`--no-<name>`. Options the user does not give are left out of the namespace (`argparse.SUPPRESS`),
so the model applies its own defaults and validation.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` → X (any other annotation as it is)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
        if len(arguments) == 1:
            return arguments[0]
    return annotation


def _base(annotation: Any) -> Any:
    """The type under `Annotated[...]` and `| None`."""
    annotation = _unwrap_optional(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return _unwrap_optional(annotation)


def _name_amount(text: str) -> tuple[str, float]:
    name, _, amount = text.partition("=")
    try:
        return name.strip(), float(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants NAME=AMOUNT such as GPU=1, got {text!r}") from None


def _default_text(field: FieldInfo) -> str:
    """' (default: X)' for a field with a plain default (long lists cut after six entries)."""
    default = field.default
    if field.default_factory is not None or field.is_required() or default is None:
        return ""
    if isinstance(default, tuple | list):
        shown = ",".join(map(str, default[:6])) + (",..." if len(default) > 6 else "")
        return f" (default: {shown or 'none'})"
    return f" (default: {default})"


def add_field_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    fields: Iterable[str],
    *,
    prefix: str = "",
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Add one option per named field of `model`, its destination `<prefix><field>`.

    `aliases` maps a field to an extra option string (e.g. `--dask-workers` for `n_workers`).
    """
    aliases = aliases or {}
    for name in fields:
        field = model.model_fields[name]
        annotation = _base(field.annotation)
        origin = typing.get_origin(annotation)
        flag = "--" + (prefix + name).replace("_", "-")
        destination = prefix + name
        help_text = (field.description or "").replace("%", "%%")
        extra = [aliases[name]] if name in aliases else []
        if annotation is bool:
            if field.default is True:
                parser.add_argument(
                    "--no-" + (prefix + name).replace("_", "-"),
                    *extra,
                    dest=destination,
                    action="store_false",
                    default=argparse.SUPPRESS,
                    help=f"do not {help_text}" if help_text else None,
                )
            else:
                parser.add_argument(
                    flag,
                    *extra,
                    dest=destination,
                    action="store_true",
                    default=argparse.SUPPRESS,
                    help=help_text,
                )
            continue
        options: dict[str, Any] = {"dest": destination, "default": argparse.SUPPRESS}
        if origin is typing.Literal:
            options["choices"] = [str(value) for value in typing.get_args(annotation)]
        elif origin is dict:
            options.update(type=_name_amount, action="append", metavar="NAME=AMOUNT")
        elif annotation in (int, float):
            options["type"] = annotation
        options["help"] = help_text + _default_text(field)
        parser.add_argument(flag, *extra, **options)


def given_fields(args: argparse.Namespace, model: type[BaseModel], *, prefix: str = "") -> dict[str, Any]:
    """The fields of `model` the user gave on the command line (repeated NAME=AMOUNT pairs as a dict)."""
    given = {}
    for name, field in model.model_fields.items():
        if hasattr(args, prefix + name):
            value = getattr(args, prefix + name)
            given[name] = dict(value) if typing.get_origin(_base(field.annotation)) is dict else value
    return given


def settings_error(exc: ValidationError, *, prefix: str = "") -> str:
    """A pydantic error about run settings as one line that names the options: "--limit: Input should
    be greater than or equal to 1; ..." (a model-level error names no option)."""
    parts = []
    for error in exc.errors():
        option = "--" + (prefix + str(error["loc"][0])).replace("_", "-") + ": " if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{option}{message}")
    return "; ".join(parts)
