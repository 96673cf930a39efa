"""``resdepth-eval --regression R [--diffusion D] --data SPLIT --out DIR [...]`` and
``resdepth-eval merge DIR``.

Every flag is a field of ``EvalConfig`` (``--max-samples`` sets ``max_samples``); ``--help`` lists
them with their docs.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Literal, Optional, Union

from resdepth.config.core import from_dict, parse_overrides
from resdepth.eval.config import EvalConfig

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resdepth-eval",
        description="Evaluate exported regression (and residual diffusion) nets on a split of "
                    "shards, on one process, torchrun, srun or a Slurm array; "
                    "`resdepth-eval merge DIR` reduces finished parts into metrics.json.",
        epilog="Example: torchrun --nproc-per-node 2 -m resdepth.eval --regression runs/reg "
               "--diffusion runs/diff --data shards/test --out eval --ensemble 8")
    return add_config_flags(parser, EvalConfig)


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


def parse_config(cls: type, parser: argparse.ArgumentParser, argv: list[str]):
    """Flags and ``key=value`` settings of ``parser`` (built by ``add_config_flags``) to ``cls``."""
    ns = parser.parse_intermixed_args(argv)
    data = parse_overrides(ns.overrides)
    data.update({k: v for k, v in vars(ns).items() if v is not _UNSET and k != "overrides"})
    return from_dict(cls, data)


def parse_args(argv: list[str]) -> EvalConfig:
    """Command-line flags (and ``key=value`` settings) to a typed ``EvalConfig``."""
    return parse_config(EvalConfig, build_parser(), argv)


def _user_errors() -> tuple[type[BaseException], ...]:
    from resdepth.eval.parts import IncompleteEvaluation
    from resdepth.utils.cli import user_errors

    return user_errors(IncompleteEvaluation)


def cli(argv: Optional[list[str]] = None) -> None:
    from resdepth.utils.cli import work_list_cli

    def main(cfg: EvalConfig) -> int:
        from resdepth.eval.run import main

        return main(cfg)

    def merge(out: str) -> str:
        from resdepth.eval.run import merge

        return f"{merge(out)['num_samples']} samples merged into {out}/metrics.json"

    work_list_cli("resdepth-eval", sys.argv[1:] if argv is None else argv, parse_args, main, merge,
                  "Reduce parts/ into metrics.json, report.md and samples.png; fails listing "
                  "missing units.", "evaluation output directory", _user_errors())


if __name__ == "__main__":
    cli()
