"""Command-line flags from a config dataclass: one ``--flag`` per field, its doc as help, plus
``key=value`` positionals (the form ``resdepth-launch`` uses); evaluation and prediction share it."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Literal, Union

from resdepth.config.core import from_dict, parse_overrides

_UNSET = object()


def _flag_type(tp):
    """What argparse converts a flag's text with; the typed config then checks the value."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return str, list(typing.get_args(tp))
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _flag_type(args[0])
    return tp, None


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """One ``--flag`` per field of the config dataclass ``cls`` (its doc as help), plus
    ``key=value`` positionals."""
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="settings as key=value (the form resdepth-launch uses); flags win")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, choices = _flag_type(hints[f.name])
        doc = f.metadata.get("doc", "")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=_UNSET, help=doc)
        else:
            parser.add_argument(flag, dest=f.name, type=tp, choices=choices, default=_UNSET,
                                help=f"{doc} (default: {f.default!r})")
    return parser


def config_parser(cls: type, prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """The parser of a command whose flags are the fields of ``cls`` (``add_config_flags``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     epilog=f"Example: {example}")
    return add_config_flags(parser, cls)


def parse_config(cls: type, parser: argparse.ArgumentParser, argv: list[str]):
    """Flags and ``key=value`` settings of ``parser`` (built by ``add_config_flags``) to ``cls``."""
    ns = parser.parse_intermixed_args(argv)
    data = parse_overrides(ns.overrides)
    data.update({k: v for k, v in vars(ns).items() if v is not _UNSET and k != "overrides"})
    return from_dict(cls, data)
