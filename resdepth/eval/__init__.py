"""Evaluation: ``main(cfg)`` scores exported nets on a split, identically on any number of processes.

``parse_args(argv)`` builds the ``EvalConfig`` from ``resdepth-eval`` flags; ``merge(out_dir)``
reduces the per-unit parts of a finished (possibly multi-task) evaluation into ``metrics.json``.
The machinery it shares with prediction (nets, work list, parts, progress, the process frame) is
``resdepth.infer``.
"""
from resdepth.eval.cli import parse_args
from resdepth.eval.config import EvalConfig
from resdepth.eval.merge import merge
from resdepth.eval.run import main

__all__ = ["EvalConfig", "main", "merge", "parse_args"]
