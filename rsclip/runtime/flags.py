"""Command-line flags generated from typed config dataclasses: defaults and help text live on the fields.

Each field of a job's config (``EmbedConfig``, ``TrainConfig``, ``DetectConfig``) declares its help with
:func:`setting`; :func:`add_arguments` turns the fields into ``--flags`` (nested dataclass fields become flags
of their own) and :func:`from_arguments` builds the config back from the parsed flags, so a default is
written in exactly one place. Flags not given stay unset, so a config file can fill them
(:func:`given_arguments`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

_HELP = "help"
_FLAG_GROUP = "group"
_CHOICES = "choices"


def setting(default: Any = dataclasses.MISSING, *, help: str, group: str | None = None, choices=None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text (and flag group / choices) for the generated command line."""
    meta = {_HELP: help, _FLAG_GROUP: group, _CHOICES: choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _sequence(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


def _argument(tp, default) -> dict[str, Any]:
    """argparse keywords for a field of type ``tp``."""
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return {"action": "append", "type": typing.get_args(inner)[0]}
    if origin is tuple:
        return {"type": _sequence(typing.get_args(inner)[0]), "metavar": "A,B,..."}
    if inner in (int, float, str):
        return {"type": inner}
    raise TypeError(f"no command-line form for a field of type {tp!r}")


def add_arguments(parser: argparse.ArgumentParser, cls, *, exclude: tuple[str, ...] = (),
                  required: tuple[str, ...] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` (recursing into nested dataclasses) to ``parser``.

    Help text and groups come from :func:`setting`; the default shown is the field's. Flags default to
    None (unset). Names in ``required`` must be given.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            add_arguments(parser, tp, exclude=exclude, required=required)
            continue
        meta = field.metadata
        if _HELP not in meta:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text (declare it with flags.setting)")
        default = _default(field)
        shown = "" if default in (None, dataclasses.MISSING, [], ()) else f" (default: {default})"
        target = parser
        if meta.get(_FLAG_GROUP):
            target = groups.setdefault(meta[_FLAG_GROUP], parser.add_argument_group(meta[_FLAG_GROUP]))
        kwargs = _argument(tp, default)
        if meta.get(_CHOICES):
            kwargs["choices"] = meta[_CHOICES]
        target.add_argument(_flag(field.name), dest=field.name, default=None, required=field.name in required,
                            help=meta[_HELP].replace("%", "%%") + shown, **kwargs)


def given_arguments(namespace: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of ``cls`` (nested dataclasses as dicts) whose flags were given in ``namespace``."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            nested = given_arguments(namespace, tp)
            if nested:
                values[field.name] = nested
        elif getattr(namespace, field.name, None) is not None:
            values[field.name] = getattr(namespace, field.name)
    return values


def build(cls, values: dict[str, Any]):
    """An instance of ``cls`` from plain ``values`` (nested dataclasses from dicts, lists to tuples where the
    field is a tuple); fields not in ``values`` keep their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value, tp = values[field.name], hints[field.name]
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            value = build(inner, value)
        elif typing.get_origin(inner) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def from_arguments(namespace: argparse.Namespace, cls):
    """The config ``cls`` from parsed flags: given flags override the fields' defaults."""
    return build(cls, given_arguments(namespace, cls))
