"""Evaluation: ``main(cfg)`` scores exported nets on a split, identically on any number of processes.

``parse_args(argv)`` builds the ``EvalConfig`` from ``resdepth-eval`` flags; ``merge(out_dir)``
reduces the per-unit parts of a finished (possibly multi-task) evaluation into ``metrics.json``.
"""
from resdepth.eval.config import EvalConfig


def main(cfg: EvalConfig) -> int:
    """Evaluate as configured (see ``resdepth.eval.run.main``); 0 when this process's work is done."""
    from resdepth.eval.run import main as _main

    return _main(cfg)


def parse_args(argv: list[str]) -> EvalConfig:
    """``resdepth-eval`` flags to an ``EvalConfig`` (see ``resdepth.eval.__main__``)."""
    from resdepth.eval.__main__ import parse_args as _parse

    return _parse(argv)


def merge(out_dir) -> dict:
    """Reduce ``out_dir/parts`` into ``metrics.json`` and the report; raises listing missing units."""
    from resdepth.eval.run import merge as _merge

    return _merge(out_dir)


__all__ = ["EvalConfig", "main", "merge", "parse_args"]
