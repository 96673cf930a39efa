"""Prediction on raw event recordings: ``main(cfg)`` writes depth (and ensemble std) for every window
of one recording, identically on any number of processes.

``parse_args(argv)`` builds the ``PredictConfig`` from ``resdepth-predict`` flags; ``merge(out_dir)``
writes ``frames.csv`` and the preview video of a finished (possibly multi-task) prediction.
"""
from resdepth.predict.config import PredictConfig


def main(cfg: PredictConfig) -> int:
    """Predict as configured (see ``resdepth.predict.run.main``); 0 when this process's work is done."""
    from resdepth.predict.run import main as _main

    return _main(cfg)


def parse_args(argv: list[str]) -> PredictConfig:
    """``resdepth-predict`` flags to a ``PredictConfig`` (see ``resdepth.predict.__main__``)."""
    from resdepth.predict.__main__ import parse_args as _parse

    return _parse(argv)


def merge(out_dir):
    """``frames.csv`` and the preview video of ``out_dir``; raises listing missing units."""
    from resdepth.predict.run import merge as _merge

    return _merge(out_dir)


__all__ = ["PredictConfig", "main", "merge", "parse_args"]
