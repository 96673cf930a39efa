"""The nets: U-Nets (PhysicsNeMo-compatible weights) and the two wrapped nets of the CorrDiff recipe
(``precond``: RegressionNet, EDMResidualNet, as PhysicsNeMo keeps its preconditioning beside its models)."""
from resdepth.models.physicsnemo_io import CheckpointMismatch, load_physicsnemo
from resdepth.models.song_unet import SongUNet, SongUNetPosEmbd

__all__ = ["SongUNet", "SongUNetPosEmbd", "load_physicsnemo", "CheckpointMismatch"]
