"""Training: ``main(cfg)`` runs either stage on one process, torchrun, srun or DeepSpeed."""
from resdepth.train.signals import REQUEUE_EXIT_CODE


def main(cfg, dry_run: bool = False) -> int:
    """Train as configured (see ``resdepth.train.loop.main``)."""
    from resdepth.train.loop import main as _main  # torch and the nets load on first use only

    return _main(cfg, dry_run=dry_run)


def parse_args(argv):
    """``experiment=NAME key=value ...`` to a ``Config`` (see ``resdepth.train.__main__``)."""
    from resdepth.train.__main__ import parse

    return parse(argv)[0]


__all__ = ["REQUEUE_EXIT_CODE", "main", "parse_args"]
