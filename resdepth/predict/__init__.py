"""Prediction on raw event recordings: ``main(cfg)`` writes depth (and ensemble std) for every window
of one recording, identically on any number of processes.

``parse_args(argv)`` builds the ``PredictConfig`` from ``resdepth-predict`` flags; ``merge(out_dir)``
writes ``frames.csv`` and the preview video of a finished (possibly multi-task) prediction. The
machinery it shares with evaluation is ``resdepth.infer``.
"""
from resdepth.predict.cli import parse_args
from resdepth.predict.config import PredictConfig
from resdepth.predict.run import main, merge

__all__ = ["PredictConfig", "main", "merge", "parse_args"]
