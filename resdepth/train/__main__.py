"""``resdepth-train experiment=NAME [key=value ...] [--print-config] [--dry-run]``."""
from __future__ import annotations

import argparse
import sys

from resdepth.config import ConfigError, load_config, to_yaml
from resdepth.train.checkpoint import CheckpointError
from resdepth.train.config import Config
from resdepth.train.loop import main
from resdepth.train.metrics import NonFiniteError
from resdepth.train.rundir import RunDirError
from resdepth.utils.cli import run_reporting_errors, user_errors


def parse(argv: list[str]) -> tuple[Config, argparse.Namespace]:
    """The config and the flags of a ``resdepth-train`` command line."""
    parser = argparse.ArgumentParser(
        prog="resdepth-train",
        description="Train the regression (stage 1) or residual diffusion (stage 2) depth net.",
        epilog="Example: resdepth-train experiment=baseline_regression data.root=demo/shards "
               "trainer.max_steps=600")
    parser.add_argument("overrides", nargs="*", help="experiment=NAME and key=value settings")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the data streams and the net, report sizes, run one forward "
                             "pass of the loss on a real train (and val) batch; train nothing")
    args = parser.parse_args(argv)
    return load_config(Config, args.overrides), args


def cli(argv: list[str] | None = None) -> None:
    """``resdepth-train``: exits with ``main``'s status (2 for a bad config, 1 for a user error)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, args = parse(argv)
    except ConfigError as e:
        print(f"resdepth-train: {e}", file=sys.stderr)
        sys.exit(2)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    try:
        sys.exit(run_reporting_errors("resdepth-train", lambda: main(cfg, dry_run=args.dry_run),
                                      user_errors(CheckpointError, NonFiniteError, RunDirError)))
    except KeyboardInterrupt:
        print("resdepth-train: aborted by a second Ctrl-C; the newest complete checkpoint in "
              f"{cfg.run.dir}/checkpoints is where a restart resumes", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
