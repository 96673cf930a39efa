"""``resdepth-predict --regression R [--diffusion D] --events FILE --out DIR --window-ms 50`` and
``resdepth-predict merge DIR``.

Every flag is a field of ``PredictConfig``; ``--help`` lists them with their docs. Run it under
``torchrun`` (``python -m resdepth.predict``) or ``resdepth-launch predict`` to share a long
recording between processes and array tasks.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from resdepth.infer.cli import config_parser, parse_config
from resdepth.predict.config import PredictConfig
from resdepth.predict.run import IncompletePrediction, main, merge
from resdepth.utils.cli import user_errors, work_list_cli


def build_parser() -> argparse.ArgumentParser:
    """The ``resdepth-predict`` parser: one flag per ``PredictConfig`` field."""
    return config_parser(
        PredictConfig, "resdepth-predict",
        "Depth from a raw event recording with exported regression (and residual "
        "diffusion) nets: depth (and ensemble std) per window, colour previews, "
        "frames.csv and a preview video; `resdepth-predict merge DIR` writes "
        "frames.csv and the video of a prediction split between array tasks.",
        "torchrun --nproc-per-node 2 -m resdepth.predict --regression runs/reg "
        "--diffusion runs/diff --events outdoor_day1_data.hdf5 --window-ms 50 --out pred")


def parse_args(argv: list[str]) -> PredictConfig:
    """Command-line flags (and ``key=value`` settings) to a typed ``PredictConfig``."""
    return parse_config(PredictConfig, build_parser(), argv)


def merge_message(out: str) -> str:
    """``merge(out)`` and the line ``resdepth-predict merge`` prints."""
    return f"windows listed in {merge(out)}"


def main_reporting_interrupt(cfg: PredictConfig) -> int:
    """``main(cfg)``; Ctrl-C is one line saying what is kept (each unit's files are renamed into
    place, its part last)."""
    try:
        return main(cfg)
    except KeyboardInterrupt:
        print(f"resdepth-predict: interrupted; the finished units in {cfg.out} are kept, and "
              "rerunning the same command completes the rest (the same files)", file=sys.stderr)
        return 130


def cli(argv: Optional[list[str]] = None) -> None:
    """``resdepth-predict``: predict, or ``merge DIR``; exits 1 with one line on a user error."""
    work_list_cli("resdepth-predict", sys.argv[1:] if argv is None else argv, parse_args,
                  main_reporting_interrupt,
                  merge_message, "Write frames.csv and the preview video once every unit has its "
        "outputs; fails listing missing units.", "prediction output directory",
                  user_errors(IncompletePrediction))
