"""``resdepth-train experiment=NAME [key=value ...] [--print-config] [--dry-run]``."""
from __future__ import annotations

import argparse
import logging
import sys

from resdepth.config import ConfigError, load_config, to_yaml
from resdepth.config.schema import Config


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors with messages written for people: printed without a traceback."""
    from resdepth.dist import DistEnvError
    from resdepth.models.build import ArchitectureMismatch
    from resdepth.train.checkpoint import CheckpointError
    from resdepth.train.loop import NonFiniteError

    errors: list = [ConfigError, DistEnvError, ArchitectureMismatch, CheckpointError,
                    NonFiniteError, FileNotFoundError, ValueError]
    try:
        from resdepth.data.format import DataError
        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def parse(argv: list[str]) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="resdepth-train",
        description="Train the regression (stage 1) or residual diffusion (stage 2) depth net.",
        epilog="Example: resdepth-train experiment=baseline_regression data.root=demo/shards "
               "trainer.max_steps=600")
    parser.add_argument("overrides", nargs="*", help="experiment=NAME and key=value settings")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="build data, model and optimiser, report sizes, train nothing")
    args = parser.parse_args(argv)
    return load_config(Config, args.overrides), args


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, args = parse(argv)
    except ConfigError as e:
        print(f"resdepth-train: {e}", file=sys.stderr)
        sys.exit(2)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    from resdepth.train.loop import main

    USER_ERRORS = _user_errors()
    try:
        code = main(cfg, dry_run=args.dry_run)
    except USER_ERRORS as e:
        logging.getLogger("resdepth").debug("error details", exc_info=True)
        print(f"resdepth-train: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    cli()
