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

from resdepth.config.core import ConfigError
from resdepth.eval.__main__ import add_config_flags, parse_config
from resdepth.predict.config import PredictConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resdepth-predict",
        description="Depth from a raw event recording with exported regression (and residual "
                    "diffusion) nets: depth (and ensemble std) per window, colour previews, "
                    "frames.csv and a preview video; `resdepth-predict merge DIR` writes "
                    "frames.csv and the video of a prediction split between array tasks.",
        epilog="Example: torchrun --nproc-per-node 2 -m resdepth.predict --regression runs/reg "
               "--diffusion runs/diff --events outdoor_day1_data.hdf5 --window-ms 50 --out pred")
    return add_config_flags(parser, PredictConfig)


def parse_args(argv: list[str]) -> PredictConfig:
    """Command-line flags (and ``key=value`` settings) to a typed ``PredictConfig``."""
    return parse_config(PredictConfig, build_parser(), argv)


def cli(argv: Optional[list[str]] = None) -> None:
    from resdepth.predict.run import IncompletePrediction
    from resdepth.utils.cli import run_reporting_errors, user_errors

    argv = sys.argv[1:] if argv is None else argv
    errors = user_errors(IncompletePrediction)
    if argv[:1] == ["merge"]:
        p = argparse.ArgumentParser(prog="resdepth-predict merge",
                                    description="Write frames.csv and the preview video once every "
                                                "unit has its outputs; fails listing missing units.")
        p.add_argument("dir", help="prediction output directory")
        args = p.parse_args(argv[1:])
        from resdepth.predict.run import merge
        from resdepth.utils.logging import setup_logging

        setup_logging(None, 0)

        def merge_and_report() -> int:
            print(f"windows listed in {merge(args.dir)}")
            return 0

        sys.exit(run_reporting_errors("resdepth-predict merge", merge_and_report, errors))
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"resdepth-predict: {e}", file=sys.stderr)
        sys.exit(2)
    from resdepth.predict.run import main

    sys.exit(run_reporting_errors("resdepth-predict", lambda: main(cfg), errors))


if __name__ == "__main__":
    cli()
