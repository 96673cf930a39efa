"""Training: ``main(cfg)`` runs either stage on one process, torchrun, srun or DeepSpeed."""
from resdepth.train.loop import main
from resdepth.train.signals import REQUEUE_EXIT_CODE

__all__ = ["REQUEUE_EXIT_CODE", "main"]
