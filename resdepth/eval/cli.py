"""``resdepth-eval --regression R [--diffusion D] --data SPLIT --out DIR [...]`` and
``resdepth-eval merge DIR``.

Every flag is a field of ``EvalConfig`` (``--max-samples`` sets ``max_samples``); ``--help`` lists
them with their docs.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from resdepth.eval.config import EvalConfig
from resdepth.eval.merge import IncompleteEvaluation, merge
from resdepth.eval.run import main
from resdepth.infer.cli import config_parser, parse_config
from resdepth.utils.cli import user_errors, work_list_cli


def build_parser() -> argparse.ArgumentParser:
    """The ``resdepth-eval`` parser: one flag per ``EvalConfig`` field."""
    return config_parser(
        EvalConfig, "resdepth-eval",
        "Evaluate exported regression (and residual diffusion) nets on a split of "
        "shards, on one process, torchrun, srun or a Slurm array; "
        "`resdepth-eval merge DIR` reduces finished parts into metrics.json.",
        "torchrun --nproc-per-node 2 -m resdepth.eval --regression runs/reg "
        "--diffusion runs/diff --data shards/test --out eval --ensemble 8")


def parse_args(argv: list[str]) -> EvalConfig:
    """Command-line flags (and ``key=value`` settings) to a typed ``EvalConfig``."""
    return parse_config(EvalConfig, build_parser(), argv)


def merge_message(out: str) -> str:
    """``merge(out)`` and the line ``resdepth-eval merge`` prints."""
    return f"{merge(out)['num_samples']} samples merged into {out}/metrics.json"


def cli(argv: Optional[list[str]] = None) -> None:
    """``resdepth-eval``: evaluate, or ``merge DIR``; exits 1 with one line on a user error."""
    work_list_cli("resdepth-eval", sys.argv[1:] if argv is None else argv, parse_args, main,
                  merge_message, "Reduce parts/ into metrics.json, report.md and samples.png; "
        "fails listing missing units.", "evaluation output directory",
                  user_errors(IncompleteEvaluation))
